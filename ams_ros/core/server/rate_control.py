"""Adaptive sampling rate (paper Section 3.2, Eq. 1) and adaptive training period (Appendix D).

The phi-score measures how fast the teacher's labels change between consecutive sampled
frames. Two forms:
- ``loss`` (the paper): the task loss of T(I_k) against T(I_{k-1}); for hard label maps this
  is the pixel error rate over pixels valid in both. Eq. (1): r <- clip(r + eta (phi - target)).
- ``iou`` (the authors' code): phi = mIoU of consecutive label maps;
  r <- clip(r - 0.2 tanh(20 (phi - 0.6)), r_min, r_max).
Both raise the rate while the scene changes and lower it while it is static.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ams_ros.core.common.config import check_choice, knob
from ams_ros.core.common.stream_defaults import StreamDefaults
from ams_ros.core.common.metrics import ConfusionMatrix


def phi_loss(prev_label: np.ndarray, label: np.ndarray, ignore_index: int = 255) -> float:
    """Pixel error rate of ``label`` w.r.t. ``prev_label`` over pixels valid in both (0 = static)."""
    if prev_label.shape != label.shape:
        raise ValueError(f"label maps differ in shape: {prev_label.shape} vs {label.shape}")
    valid = (prev_label != ignore_index) & (label != ignore_index)
    if not valid.any():
        return float("nan")
    return float(np.mean(prev_label[valid] != label[valid]))


def phi_iou(prev_label: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU of ``label`` against ``prev_label`` (1 = static), the authors' phi."""
    return ConfusionMatrix(num_classes, ignore_index).update(label, prev_label).miou()


PHI_FORMS = ("loss", "iou")


@dataclass(frozen=True)
class RateControlConfig:
    """The server's sampling-rate rule (paper Eq. 1); defaults are the paper's (§4.1)."""

    r_min: float = knob(0.1, "Minimum sampling rate (frames/s)")
    r_max: float = knob(1.0, "Maximum sampling rate (frames/s)")
    r_init: float = knob(StreamDefaults.sampling_rate, "Initial sampling rate (frames/s)")
    phi_form: str = knob("loss", "phi-score: loss (paper Eq. 1) | iou (authors' code)", choices=PHI_FORMS)
    eta_r: float = knob(2.0, "Step size of Eq. 1")
    phi_target: float = knob(0.1, "Target phi-score of Eq. 1")
    period_s: float = knob(10.0, "Seconds of stream time between rate updates (delta t)")

    def __post_init__(self) -> None:
        check_choice("phi_form", self.phi_form, PHI_FORMS)
        if not 0 < self.r_min <= self.r_max:
            raise ValueError(f"need 0 < r_min <= r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")


@dataclass(frozen=True)
class AdaptivePeriodConfig:
    """Lengthening T_update on static scenes (paper appendix D)."""

    enabled: bool = knob(True, "Lengthen T_update on static scenes (paper appendix D)")
    low: float = knob(0.25, "Mean sampling rate below which the update period grows")
    high: float = knob(0.35, "Mean sampling rate above which it returns to T_update")
    step_s: float = knob(2.0, "Seconds added to the update period per update while static")
    max_factor: float = knob(6.0, "Largest update period as a multiple of T_update")

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"need low <= high, got low={self.low}, high={self.high}")
        if self.max_factor < 1 or self.step_s < 0:
            raise ValueError(f"need max_factor >= 1 and step_s >= 0, got {self.max_factor}, {self.step_s}")


class SamplingRateController:
    """Turns the phi-score of consecutive teacher labels into a sampling rate every ``period_s``.

    Defaults for the loss form: a pixel error rate of 0.1 between samples one second apart is
    the target (about an mIoU-phi of 0.6, the authors' set point); ``eta_r`` 2.0 moves the rate
    by 0.2 frames/s for a 0.1 deviation, the size of the authors' tanh step.
    """

    def __init__(self, r_min: float = 0.1, r_max: float = 1.0, r_init: float = 1.0, eta_r: float = 2.0,
                 phi_target: float = 0.1, form: str = "loss", period_s: float = 10.0, window: int = 10,
                 num_classes: int = 256) -> None:
        if form not in ("loss", "iou"):
            raise ValueError(f"phi form must be 'loss' or 'iou', got '{form}'")
        if not 0 < r_min <= r_max:
            raise ValueError(f"need 0 < r_min <= r_max, got {r_min}, {r_max}")
        self.r_min, self.r_max = float(r_min), float(r_max)
        self.rate = float(min(max(r_init, r_min), r_max))
        self.eta_r, self.phi_target = float(eta_r), float(phi_target)
        self.form, self.period_s = form, float(period_s)
        self.num_classes = num_classes
        self._phis: deque[float] = deque(maxlen=window)
        self._prev: np.ndarray | None = None
        self._last_update_t: float | None = None
        self.last_phi = float("nan")
        self.history: list[tuple[float, float, float]] = []  # (t, phi_bar, new rate)

    @classmethod
    def from_config(cls, config: RateControlConfig) -> "SamplingRateController":
        return cls(r_min=config.r_min, r_max=config.r_max, r_init=config.r_init, eta_r=config.eta_r,
                   phi_target=config.phi_target, form=config.phi_form, period_s=config.period_s)

    def reconfigure(self, config: RateControlConfig) -> None:
        """New settings at run time; the current rate and the phi history carry over (the rate
        clipped into the new bounds), so a parameter change does not restart the controller."""
        self.r_min, self.r_max = float(config.r_min), float(config.r_max)
        self.rate = float(min(max(self.rate, self.r_min), self.r_max))
        self.eta_r, self.phi_target = float(config.eta_r), float(config.phi_target)
        self.form, self.period_s = config.phi_form, float(config.period_s)

    def add_label(self, t: float, label: np.ndarray) -> None:
        """A teacher label of the next sampled frame, in stream order."""
        if self._last_update_t is None:
            self._last_update_t = t
        if self._prev is not None and self._prev.shape == label.shape:
            phi = phi_loss(self._prev, label) if self.form == "loss" else phi_iou(
                self._prev, label, int(max(self._prev.max(initial=0), label.max(initial=0)) + 1))
            if math.isfinite(phi):
                self._phis.append(phi)
        self._prev = label

    def step(self, phi_bar: float) -> float:
        """One application of the update rule with mean phi ``phi_bar``."""
        if self.form == "loss":
            r = self.rate + self.eta_r * (phi_bar - self.phi_target)
        else:
            r = self.rate - 0.2 * math.tanh(20.0 * (phi_bar - 0.6))
        self.rate = float(min(max(r, self.r_min), self.r_max))
        return self.rate

    def maybe_update(self, now: float) -> float | None:
        """Every ``period_s`` of stream time: the new rate (None when not due or no phi yet)."""
        if self._last_update_t is None or now - self._last_update_t < self.period_s - 1e-9 or not self._phis:
            return None
        self._last_update_t = now
        self.last_phi = float(np.mean(self._phis))
        rate = self.step(self.last_phi)
        self.history.append((now, self.last_phi, rate))
        return rate


class AdaptiveTrainingPeriod:
    """Lengthen T_update while the scene is static (low sampling rates), return when it moves.

    As the authors describe: when the mean of the last ``window`` sampling rates is below
    ``low``, add ``step_s`` per update up to ``max_factor`` x the base; above ``high``, go back
    to the base period. (Their released code computes the mean but never lets it trigger.)
    """

    def __init__(self, base_period_s: float = 10.0, low: float = 0.25, high: float = 0.35, step_s: float = 2.0,
                 max_factor: float = 6.0, window: int = 5) -> None:
        self.base_period_s = float(base_period_s)
        self.low, self.high, self.step_s, self.max_factor = float(low), float(high), float(step_s), float(max_factor)
        self._rates: deque[float] = deque(maxlen=window)
        self.period_s = self.base_period_s

    @classmethod
    def from_config(cls, config: AdaptivePeriodConfig, base_period_s: float) -> "AdaptiveTrainingPeriod":
        return cls(base_period_s=base_period_s, low=config.low, high=config.high, step_s=config.step_s,
                   max_factor=config.max_factor)

    def reconfigure(self, config: AdaptivePeriodConfig, base_period_s: float) -> None:
        """New settings at run time; the current period is kept within the new bounds."""
        self.base_period_s = float(base_period_s)
        self.low, self.high = float(config.low), float(config.high)
        self.step_s, self.max_factor = float(config.step_s), float(config.max_factor)
        self.period_s = min(max(self.period_s, self.base_period_s), self.max_factor * self.base_period_s)

    def observe_rate(self, r: float) -> float:
        self._rates.append(float(r))
        mean = float(np.mean(self._rates))
        if mean < self.low:
            self.period_s = min(self.period_s + self.step_s, self.max_factor * self.base_period_s)
        elif mean > self.high:
            self.period_s = self.base_period_s
        return self.period_s
