"""Segmentation accuracy and bandwidth accounting (paper Section 4 protocol).

mIoU comes from a confusion matrix over the selected classes; classes whose union is zero
(absent from both prediction and reference) are excluded, pixels labelled 255 are ignored.
Windowed mIoU accumulates the matrices of the frames of the last ``window_s`` seconds of
stream time, as the authors' code does.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ConfusionMatrix:
    """``matrix[ref, pred]`` pixel counts over ``num_classes`` classes."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # reference pixels predicted as an id outside the classes (e.g. 255): always wrong
        self.unmatched = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, ref: np.ndarray) -> "ConfusionMatrix":
        if pred.shape != ref.shape:
            raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
        p = pred.reshape(-1).astype(np.int64)
        r = ref.reshape(-1).astype(np.int64)
        valid = (r != self.ignore_index) & (r < self.num_classes) & (r >= 0)
        p, r = p[valid], r[valid]
        p = np.where((p >= 0) & (p < self.num_classes), p, self.num_classes)  # unknown predictions: always wrong
        counts = np.bincount(r * (self.num_classes + 1) + p, minlength=self.num_classes * (self.num_classes + 1))
        counts = counts.reshape(self.num_classes, self.num_classes + 1)
        self.matrix += counts[:, : self.num_classes]
        self.unmatched += counts[:, self.num_classes]
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix
        self.unmatched += other.unmatched
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out += self
        out += other
        return out

    def iou_per_class(self) -> np.ndarray:
        """IoU of each class; NaN where the class is in neither prediction nor reference."""
        tp = np.diag(self.matrix).astype(np.float64)
        ref_total = self.matrix.sum(axis=1) + self.unmatched
        union = ref_total + self.matrix.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with non-zero union; NaN when no pixel was valid."""
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.unmatched.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def miou(pred: np.ndarray, ref: np.ndarray, num_classes: int, ignore_index: int = 255) -> float:
    """One-shot mIoU of one prediction against one reference."""
    return ConfusionMatrix(num_classes, ignore_index).update(pred, ref).miou()


class WindowedMIoU:
    """mIoU over the frames of the last ``window_s`` seconds of stream time."""

    def __init__(self, num_classes: int, window_s: float = 10.0, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.window_s = window_s
        self.ignore_index = ignore_index
        self._frames: deque[tuple[float, ConfusionMatrix]] = deque()

    def add(self, t: float, pred: np.ndarray, ref: np.ndarray) -> None:
        self._frames.append((t, ConfusionMatrix(self.num_classes, self.ignore_index).update(pred, ref)))

    def value(self, now: float) -> float:
        while self._frames and self._frames[0][0] < now - self.window_s:
            self._frames.popleft()
        total = ConfusionMatrix(self.num_classes, self.ignore_index)
        for t, cm in self._frames:
            if t <= now:
                total += cm
        return total.miou()


class BandwidthMeter:
    """Bytes sent at stream times; rates in Kbps of stream time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int]] = []

    def add(self, t: float, nbytes: int) -> None:
        self.events.append((float(t), int(nbytes)))

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.events)

    def kbps(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            raise ValueError("kbps needs t1 > t0")
        b = sum(n for t, n in self.events if t0 <= t < t1)
        return b * 8 / (t1 - t0) / 1000.0

    def series(self, bin_s: float, t_end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bin start times, Kbps per bin)."""
        end = t_end if t_end is not None else (max((t for t, _ in self.events), default=0.0) + bin_s)
        edges = np.arange(0.0, end + bin_s, bin_s)
        if not self.events:
            return edges[:-1], np.zeros(edges.size - 1)
        t = np.array([e[0] for e in self.events])
        b = np.array([e[1] for e in self.events], dtype=float)
        h, _ = np.histogram(t, bins=edges, weights=b)
        return edges[:-1], h * 8 / bin_s / 1000.0
