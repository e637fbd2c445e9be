"""Edge-side sampling and buffering of training frames (paper Section 3.2).

The edge samples frames at the rate the server commands and buffers one update period of
samples before encoding them as a single batch. Sampling is decided on the frames' own stamps
(stream time), so a replayed bag or video behaves like a live camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class SampledBatch:
    """One update period of sampled frames, ready for the frame codec."""

    frames: list[np.ndarray]
    timestamps: list[float]
    sampling_rate: float
    update_period: float
    seq: int


@dataclass
class FrameSampler:
    """Keeps a frame whenever ``1 / sampling_rate`` seconds of stream time have passed.

    ``offer`` returns a :class:`SampledBatch` once the buffer spans ``update_period`` seconds.
    ``size`` (W, H) resizes kept frames, so the uplink carries the training resolution.
    ``first_period`` (seconds, optional) closes the first batch that much after the first frame
    instead of a whole period: robots sharing a base station then send their batches at
    staggered times instead of all at once
    (:func:`~ams_ros.core.fleet.stagger.stagger_offset`); :meth:`shift_period` moves the batch being
    buffered later or earlier once, as the base station commands (``SamplingCommand.period_shift``).
    """

    sampling_rate: float = 1.0
    update_period: float = 10.0
    size: tuple[int, int] | None = None
    max_frames: int = 600
    first_period: float | None = None
    _next_sample_t: float | None = None
    _period_start: float | None = None
    _frames: list[np.ndarray] = field(default_factory=list)
    _stamps: list[float] = field(default_factory=list)
    _seq: int = 0
    sampled: int = 0

    def command(self, sampling_rate: float | None = None, update_period: float | None = None) -> None:
        """Apply a sampling command from the server (takes effect from the next frame)."""
        if sampling_rate is not None:
            if not np.isfinite(sampling_rate) or sampling_rate <= 0:
                raise ValueError(f"sampling rate must be a positive number of frames/s, got {sampling_rate}")
            self.sampling_rate = float(sampling_rate)
            if self._stamps:
                self._next_sample_t = self._stamps[-1] + 1.0 / self.sampling_rate
        if update_period is not None:
            if not np.isfinite(update_period) or update_period <= 0:
                raise ValueError(f"update period must be positive seconds, got {update_period}")
            self.update_period = float(update_period)

    def shift_period(self, seconds: float) -> None:
        """Close the batch being buffered ``seconds`` later (> 0) or earlier (< 0; at the next
        frame when that is already past); the periods after it keep their length."""
        if not np.isfinite(seconds):
            raise ValueError(f"period shift must be a finite number of seconds, got {seconds}")
        if self._period_start is not None:
            self._period_start += float(seconds)

    def offer(self, t: float, frame: np.ndarray) -> SampledBatch | None:
        """Consider the frame captured at stream time ``t``; maybe close a batch."""
        if self._period_start is None:
            self._period_start = t
        batch = None
        period = self.first_period if self._seq == 0 and self.first_period else self.update_period
        if t - self._period_start >= period - 1e-6:
            batch = self.flush(t)  # this frame already belongs to the next period
            self._period_start = t
        if self._next_sample_t is None or t >= self._next_sample_t - 1e-6:
            keep = frame if self.size is None or (frame.shape[1], frame.shape[0]) == tuple(self.size) else (
                cv2.resize(frame, tuple(self.size), interpolation=cv2.INTER_AREA)
            )
            self._frames.append(np.ascontiguousarray(keep))
            self._stamps.append(float(t))
            self.sampled += 1
            self._next_sample_t = t + 1.0 / self.sampling_rate
            if len(self._frames) > self.max_frames:  # bounded: drop the oldest sample
                self._frames.pop(0)
                self._stamps.pop(0)
        return batch

    def flush(self, t: float | None = None) -> SampledBatch | None:
        """Close the current batch now (e.g. at shutdown); None when it is empty."""
        if not self._frames:
            return None
        batch = SampledBatch(self._frames, self._stamps, self.sampling_rate, self.update_period, self._seq)
        self._seq += 1
        self._frames, self._stamps = [], []
        self._period_start = t
        return batch
