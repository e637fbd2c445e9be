"""Server-side state of AMS for one edge device (paper Algorithm 1), free of ROS.

One base station serves many robots; each has its own buffer, trainer state, version chain,
sampling-rate controller and update period. The ROS server nodes, the demo and the
evaluation harness drive this class; they differ only in how bytes travel.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from torch import nn

from ams_ros.core.rate_control import AdaptiveTrainingPeriod, SamplingRateController
from ams_ros.core.trainer import AMSTrainer, PhaseResult, TrainerConfig
from ams_ros.core.params import write_flat
from ams_ros.core.update_codec import (
    ENCODINGS,
    EncodedUpdate,
    decode_update,
    encode_snapshot,
    encode_update,
    quantize_roundtrip,
)


@dataclass
class SessionConfig:
    """Per-device server settings; trainer settings live in ``trainer``."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    update_encoding: str = "paper_gzip_fp16"
    snapshot_encoding: str = "paper_gzip_fp16"
    auth_key: bytes | None = None
    min_samples: int = 1
    r_min: float = 0.1
    r_max: float = 1.0
    r_init: float = 1.0
    phi_form: str = "loss"
    eta_r: float = 2.0
    phi_target: float = 0.1
    rate_period_s: float = 10.0
    adaptive_update_period: bool = True
    atp_low: float = 0.25
    atp_high: float = 0.35
    atp_step_s: float = 2.0
    atp_max_factor: float = 6.0


class TrainingDiverged(RuntimeError):
    """A phase produced weights the update encoding cannot carry (NaN/Inf, or past float16).
    The phase was undone: the server's copy, Adam state and version are as before it."""


@dataclass
class PhaseOutcome:
    """A trained phase and the update that carries it to the edge."""

    update: EncodedUpdate
    result: PhaseResult
    wall_s: float


class DeviceSession:
    """Buffer, trainer, version chain and rate control for one device."""

    def __init__(self, device_id: str, model: nn.Module, config: SessionConfig | None = None) -> None:
        self.device_id = device_id
        self.config = config or SessionConfig()
        self.trainer = AMSTrainer(model, self.config.trainer)
        self.version = 0
        self.lock = threading.RLock()  # guards model + version: a snapshot never sees half a phase
        self.reset_rate_control()
        self.new_samples = 0
        self.diverged_phases = 0
        self.last_phase_wall_s = 0.0
        self.latest_t: Optional[float] = None

    def reset_rate_control(self) -> None:
        """(Re)build the sampling-rate and update-period controllers from ``config``."""
        c = self.config
        self.rate = SamplingRateController(
            r_min=c.r_min, r_max=c.r_max, r_init=c.r_init, eta_r=c.eta_r, phi_target=c.phi_target,
            form=c.phi_form, period_s=c.rate_period_s,
        )
        self.period = AdaptiveTrainingPeriod(
            base_period_s=c.trainer.update_period_s, low=c.atp_low, high=c.atp_high,
            step_s=c.atp_step_s, max_factor=c.atp_max_factor,
        )

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    def add_labeled(self, t: float, frame: np.ndarray, label: np.ndarray) -> None:
        """Algorithm 1 lines 6-8: a teacher-labelled sample enters the buffer (and phi)."""
        self.trainer.add_sample(t, frame, label)
        self.rate.add_label(t, label)
        self.new_samples += 1
        self.latest_t = t if self.latest_t is None else max(self.latest_t, t)

    def ready(self) -> bool:
        return self.new_samples >= max(1, self.config.min_samples)

    def run_phase(self, now: float | None = None) -> PhaseOutcome | None:
        """Algorithm 1 lines 10-17: train a phase and encode the update for the edge."""
        now = self.latest_t if now is None else now
        if now is None:
            return None
        t0 = time.perf_counter()
        with self.lock:
            ckpt = self.trainer.checkpoint()
            before = ckpt.weights.cpu().numpy() if ENCODINGS[self.config.update_encoding].residual else None
            result = self.trainer.train_phase(now)
            if result is None:
                return None
            self.new_samples = 0  # a diverged phase waits for new samples too, instead of retrying at once
            enc = self.config.update_encoding
            # Lossy encodings: the server keeps exactly what the edge will decode, so both
            # copies stay identical and the next update applies on top of the same weights.
            base = before[result.indices] if before is not None else None
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
                values = quantize_roundtrip(enc, self.model, result.indices, result.values, base_values=base)
            bad = int(np.sum(~np.isfinite(values)))
            if bad:
                # Shipping it would make the edge reject this update and every later one (they
                # build on it), and poison the snapshots too: undo the phase instead.
                self.trainer.rollback(ckpt)
                self.diverged_phases += 1
                raise TrainingDiverged(
                    f"phase {result.phase} diverged: {bad} of {len(values)} updated parameters are not finite "
                    f"in '{enc}' (loss {result.loss:.3g}); the phase was undone and the model stays at "
                    f"v{self.version}. Lower the learning rate (lr={self.trainer.config.lr:g})."
                )
            write_flat(self.model, result.indices, values)
            # encode the raw values: the edge's decoder runs the same rounding as quantize_roundtrip
            update = encode_update(self.model, result.indices, result.values, base_version=self.version,
                                   new_version=self.version + 1, encoding=enc, base_values=base)
            if self.config.auth_key:
                update.sign(self.config.auth_key, self.device_id)
            self.version += 1
        self.last_phase_wall_s = time.perf_counter() - t0
        return PhaseOutcome(update, result, self.last_phase_wall_s)

    def snapshot(self, encoding: str | None = None) -> EncodedUpdate:
        """A full snapshot of the current version (for a late or out-of-sync edge)."""
        with self.lock:
            update = encode_snapshot(self.model, self.version, encoding or self.config.snapshot_encoding)
            # Keep exactly what the edge decodes (e.g. float16), or the copies would differ at
            # every coordinate no later sparse update touches.
            idx, vals = decode_update(update, self.model)
            write_flat(self.model, idx, vals)
            if self.config.auth_key:
                update.sign(self.config.auth_key, self.device_id)
            return update

    def sampling_command(self, now: float) -> tuple[float, float, float] | None:
        """Every rate period: (sampling rate, update period, mean phi) or None when not due."""
        r = self.rate.maybe_update(now)
        if r is None:
            return None
        if self.config.adaptive_update_period:
            self.period.observe_rate(r)
            period = self.period.period_s
        else:
            period = self.config.trainer.update_period_s
        return r, period, float(self.rate.last_phi)
