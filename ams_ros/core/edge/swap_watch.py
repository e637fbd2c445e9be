"""The robot's own check of each new model, on the frames right after the swap (issue #29).

An update that passed every check of delivery (signature, chain, checksum, finite values) can still
make the robot worse: a bad training phase, a teacher that went wrong. The robot cannot score itself
without labels, but a few signals cost nothing and catch the failures that matter most, on the
label maps it computes anyway:

- **collapse**: the new model labels (nearly) every pixel with one class on several frames in a
  row, where the previous model's label maps were varied on the frames before the swap (non-finite
  logits end here too: their argmax is one class everywhere); confirmed, where the previous weights
  can still run (the double buffer's other copy right after a swap), by the previous model on the
  very frame: if it too sees one class there, the scene is one class (a wall, the sky), not the model;
- **a slower model**: the inference time of the new model's first frames jumps well past the
  previous model's (a runtime that rebuilt badly).

On a failure the segmenter steps back to the previous weights (:meth:`~ams_ros.core.edge.double_buffer.DoubleBufferedModel.step_back`:
one assignment, within the frame), reports it (EdgeStatus, /diagnostics) and refuses that version
again, taking the next one the server makes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ams_ros.core.common.config import knob


@dataclass(frozen=True)
class SwapWatchConfig:
    swap_watch_frames: int = knob(10, "Frames after each model swap on which the robot checks the new model "
                                      "(0 = no check, never step back)")
    collapse_share: float = knob(0.98, "A label map with one class on at least this share of its pixels is "
                                       "collapsed (when the previous model's were not)")
    collapse_frames: int = knob(3, "Collapsed label maps in a row, after a swap, that make the robot step back")
    latency_jump: float = knob(4.0, "Step back when the new model's median inference time over the checked "
                                    "frames exceeds the previous model's by this factor")

    def __post_init__(self) -> None:
        if self.swap_watch_frames < 0:
            raise ValueError(f"swap_watch_frames must be >= 0, got {self.swap_watch_frames}")
        if not 0.5 < self.collapse_share <= 1.0:
            raise ValueError(f"collapse_share must lie in (0.5, 1], got {self.collapse_share}")
        if self.collapse_frames < 1:
            raise ValueError(f"collapse_frames must be >= 1, got {self.collapse_frames}")
        if self.latency_jump <= 1.0:
            raise ValueError(f"latency_jump must be > 1, got {self.latency_jump}")


def dominant_share(labels: np.ndarray, ignore: int = 255) -> float:
    """Share of the pixels (``ignore`` left out) that carry the most frequent class."""
    flat = np.asarray(labels).reshape(-1)
    counts = np.bincount(flat, minlength=256)
    counts[ignore] = 0
    total = int(counts.sum())
    return float(counts.max()) / total if total else 0.0


class SwapWatch:
    """Fed every frame's label map, inference time and model version; says when to step back."""

    def __init__(self, config: SwapWatchConfig | None = None, history: int = 20) -> None:
        self.config = config or SwapWatchConfig()
        self._shares: deque[float] = deque(maxlen=history)  # of the running model, before any swap
        self._latencies: deque[float] = deque(maxlen=history)
        self._version: int | None = None
        self._baseline: tuple[float, float] | None = None  # last checked model: (median share, median latency)
        self._before: tuple[float, float] | None = None  # the baseline while a new model is being checked
        self._seen = 0
        self._collapsed_run = 0
        self._watched_latencies: list[float] = []
        self.scene_confirmations = 0  # suspected collapses the previous model's labels showed were the scene

    @property
    def watching(self) -> bool:
        return self._before is not None and self._seen < self.config.swap_watch_frames

    def observe(self, version: int, labels: np.ndarray, latency_ms: float,
                previous_labels: Optional[Callable[[], Optional[np.ndarray]]] = None) -> str:
        """The reason to step back from ``version`` ("" when none). ``labels``: the frame's label map
        by the model of ``version``; ``latency_ms``: its inference time; ``previous_labels``: the
        previous model's label map of the same frame, asked for only to confirm a collapse (None,
        or a call that gives None: not available, the collapse stands on the frames before the swap)."""
        share = dominant_share(labels)
        if version != self._version:
            self._swapped(version)
        if not self.watching:
            self._shares.append(share)
            self._latencies.append(float(latency_ms))
            return ""
        self._seen += 1
        cfg = self.config
        before_share, before_latency = self._before  # type: ignore[misc]
        self._collapsed_run = self._collapsed_run + 1 if share >= cfg.collapse_share else 0
        if self._collapsed_run >= cfg.collapse_frames and before_share < cfg.collapse_share:
            previous = previous_labels() if previous_labels is not None else None
            if previous is not None and dominant_share(previous) >= cfg.collapse_share:
                self._collapsed_run = 0  # the previous model sees one class on this frame too: the scene
                self.scene_confirmations += 1
                return ""
            return (f"v{version} labels {share:.1%} of the pixels with one class on {self._collapsed_run} frames in a "
                    f"row after the swap, where the previous model's median was {before_share:.1%} "
                    f"(collapse_share {cfg.collapse_share:g})")
        self._watched_latencies.append(float(latency_ms))
        if len(self._watched_latencies) >= min(5, cfg.swap_watch_frames) and before_latency > 0:
            now = float(np.median(self._watched_latencies))
            if now > cfg.latency_jump * before_latency:
                return (f"v{version} infers in {now:.0f} ms (median of {len(self._watched_latencies)} frames) where the "
                        f"previous model took {before_latency:.0f} ms (latency_jump {cfg.latency_jump:g})")
        if not self.watching:  # checked: from now on its frames are the baseline of the next swap
            self._before = None
        return ""

    def _check_from_start(self, version: int) -> None:
        """``version`` runs from now on: its checked frames and their counts start at zero."""
        self._version = version
        self._seen = 0
        self._collapsed_run = 0
        self._watched_latencies = []

    def _swapped(self, version: int) -> None:
        first = self._version is None
        self._check_from_start(version)
        if first or self.config.swap_watch_frames == 0:
            self._before = self._baseline = None
            return
        if self._shares:  # the model before this swap ran long enough to be the baseline
            self._baseline = (float(np.median(self._shares)), float(np.median(self._latencies)))
            self._shares.clear()
            self._latencies.clear()
        # else a swap while the last one was still being checked: judged against the same baseline
        self._before = self._baseline

    def stepped_back(self, version: int) -> None:
        """The segmenter went back to ``version``: it runs the baseline's model again."""
        self._check_from_start(version)
        self._before = None
