"""Figures that follow the source's own timing (issue #13: "the demo's report cries wolf").

A camera folder or a recording plays at its own rate and may have holes (CamVid's 0016E5 frames
play 1 frame/s with a 65 s hole). Judged against the demo's nominal frame rate, such a source
reads as hundreds of missing label maps and a 65 s inference stall, although the robot labelled
every frame it was given as soon as it came. These helpers judge the robot against the frames
the source actually delivered and their stamps:

- :class:`GapTracker`: the longest wait between two label maps *beyond* the time between their
  frames' stamps (a hole in the source is not the robot's gap);
- :func:`missing_label_maps`: delivered frames without a label map;
- :func:`source_period` / :func:`source_holes`: the source's own frame period and its holes.
"""

from __future__ import annotations

import numpy as np


class GapTracker:
    """Per window: the longest time between two inferences minus the time between their
    frames' stamps (clipped at 0), in ms. With stamps on the node's clock this is the extra
    delay inference added; with stream stamps, the delay beyond what the source explains."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # (stamp, done) of the previous inference
        self.window_max_ms = 0.0

    def observe(self, stamp_s: float, done_s: float) -> float:
        """One inference finished at ``done_s`` (monotonic seconds) for a frame stamped ``stamp_s``."""
        excess = 0.0
        if self._last is not None:
            stamp_gap = max(0.0, stamp_s - self._last[0])
            excess = max(0.0, (done_s - self._last[1]) - stamp_gap) * 1000.0
            self.window_max_ms = max(self.window_max_ms, excess)
        self._last = (stamp_s, done_s)
        return excess

    def take(self) -> float:
        """The window's figure, and start a new window."""
        out, self.window_max_ms = self.window_max_ms, 0.0
        return out


def _key(stamps) -> np.ndarray:
    return np.rint(np.asarray(stamps, dtype=np.float64) * 1e6).astype(np.int64)  # microseconds


def source_period(stamps) -> float | None:
    """The source's frame period (s): the median gap between the delivered frames' stamps."""
    s = np.unique(_key(stamps))
    if s.size < 2:
        return None
    return float(np.median(np.diff(s))) / 1e6


def source_holes(stamps, factor: float = 3.0) -> list[dict[str, float]]:
    """Gaps in the source's stamps longer than ``factor`` x its period: ``[{"t", "gap_s"}]``."""
    s = np.unique(_key(stamps))
    period = source_period(stamps)
    if period is None:
        return []
    d = np.diff(s) / 1e6
    return [{"t": round(float(s[i]) / 1e6, 3), "gap_s": round(float(d[i]), 3)}
            for i in np.flatnonzero(d > factor * period)]


def missing_label_maps(delivered_stamps, label_stamps) -> int:
    """Frames the source delivered (between the first and the last label map) with no label map."""
    labels = np.unique(_key(label_stamps))
    if labels.size == 0:
        return 0
    frames = np.unique(_key(delivered_stamps))
    frames = frames[(frames >= labels[0]) & (frames <= labels[-1])]
    return int(np.sum(~np.isin(frames, labels)))
