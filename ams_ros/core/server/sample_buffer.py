"""The server's time-stamped store of (frame, teacher label) samples (paper Algorithm 1).

Kept apart from the trainer: the ROS labeler thread fills it while the training thread draws
mini-batches from it, the evaluation harness and offline pretraining use its entries and
tensor conversion too, and a persisted robot session will store exactly these entries.
"""

from __future__ import annotations

import bisect
import threading
from typing import Optional

import cv2
import numpy as np

from ams_ros.core.models.samples import BufferEntry

class SampleBuffer:
    """Time-stamped (frame, teacher label) store of Algorithm 1, kept in time order.

    Frames and labels are resized to the training size on ``add`` (frames bilinear, labels
    nearest) so that memory is bounded by the training resolution, not the camera's. Entries
    older than the horizon are evicted by ``sample`` and, when the buffer was given a
    ``horizon_s``, also by ``add`` (relative to the newest timestamp), so a server that
    receives frames but never trains does not grow without bound. A lock makes ``add`` from a
    subscriber thread safe against ``sample`` from the training thread.
    """

    def __init__(
        self,
        input_size: Optional[tuple[int, int]] = None,
        horizon_s: Optional[float] = None,
        max_entries: Optional[int] = None,
    ) -> None:
        """``input_size`` is (W, H) or None to keep sizes; ``max_entries`` is a hard cap."""
        self.input_size = tuple(input_size) if input_size is not None else None
        self.horizon_s = horizon_s
        self.max_entries = max_entries
        self._times: list[float] = []
        self._entries: list[BufferEntry] = []
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def latest_time(self) -> Optional[float]:
        with self._lock:
            return self._times[-1] if self._times else None

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._entries.clear()

    def add(self, t: float, frame: np.ndarray, label: np.ndarray) -> None:
        """Store one sample (resized to ``input_size``); out-of-order timestamps are allowed."""
        frame = np.asarray(frame)
        label = np.asarray(label)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 HxWx3, got {frame.dtype} {frame.shape}")
        if label.ndim != 2:
            raise ValueError(f"label must be HxW, got shape {label.shape}")
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError("label values must fit in uint8 (255 = ignore)")
            label = label.astype(np.uint8)
        if self.input_size is not None:
            w, h = self.input_size
            if frame.shape[:2] != (h, w):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            if label.shape != (h, w):
                label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        elif label.shape != frame.shape[:2]:
            raise ValueError(f"label {label.shape} and frame {frame.shape[:2]} sizes differ")
        entry = BufferEntry(float(t), np.ascontiguousarray(frame), np.ascontiguousarray(label))
        with self._lock:
            pos = bisect.bisect_right(self._times, entry.t)
            self._times.insert(pos, entry.t)
            self._entries.insert(pos, entry)
            if self.horizon_s is not None:
                self.evict(self._times[-1] - self.horizon_s)
            if self.max_entries is not None and len(self._entries) > self.max_entries:
                drop = len(self._entries) - self.max_entries
                del self._times[:drop]
                del self._entries[:drop]

    def evict(self, before: float) -> int:
        """Drop entries with ``t < before``; returns how many were dropped."""
        with self._lock:
            n = bisect.bisect_left(self._times, before)
            if n:
                del self._times[:n]
                del self._entries[:n]
            return n

    def _window_bounds(self, now: float, horizon: float) -> tuple[int, int]:
        lo = bisect.bisect_left(self._times, now - horizon)
        hi = bisect.bisect_right(self._times, now)
        return lo, hi

    def window(self, now: float, horizon: float) -> list[BufferEntry]:
        """Entries with ``now - horizon <= t <= now`` (later ones are not yet "received")."""
        with self._lock:
            lo, hi = self._window_bounds(now, horizon)
            return self._entries[lo:hi]

    def sample(
        self, now: float, horizon: float, batch_size: int, rng: np.random.Generator
    ) -> list[BufferEntry]:
        """Uniform draw with replacement of ``batch_size`` entries from the window.

        Evicts entries older than ``now - horizon`` first. Returns [] when the window is empty.
        """
        with self._lock:
            self.evict(now - horizon)
            lo, hi = self._window_bounds(now, horizon)
            if hi <= lo:
                return []
            picks = rng.integers(lo, hi, size=batch_size)
            return [self._entries[int(i)] for i in picks]
