"""Server-side online distillation of the student (paper Algorithms 1 and 2).

``AMSTrainer`` owns the server's copy of the student and trains it, one *phase* per call of
``train_phase(now)``, on mini-batches drawn uniformly from the frames of the last
``T_horizon`` seconds (``SampleBuffer``). Only a gamma fraction of the flat parameter vector
(``ams_ros.core.models.params``) is trained per phase; the phase returns those coordinates' indices
and new values (``PhaseResult``), which the update codec ships to the edge.

Adam is implemented by hand on the flat vector rather than with ``torch.optim.Adam`` because
Algorithm 2 needs what torch's optimiser hides: the moments ``m``, ``v`` are updated for *all*
parameters every iteration while only the masked coordinates move, and the last update vector
``u_{n-1}`` of every parameter picks the next phase's mask.

Adam step (Algorithm 2, line 12), in the bias-correction-folded form of Kingma & Ba §2 and of
TensorFlow 1's ``AdamOptimizer`` that the authors used::

    u = lr * sqrt(1 - beta2^i) / (1 - beta1^i) * m / (sqrt(v) + eps)

The paper typesets ``sqrt(v + eps)``; TensorFlow (and so the authors' code) adds eps outside
the root, which this module does by default. ``TrainerConfig.eps_inside_sqrt=True`` gives the
literal typeset form. Either way eps is the "eps-hat" of the folded form, not torch Adam's eps
(which is applied after bias-correcting v).

The training period is not decided here: the caller (``rate_control.AdaptiveTrainingPeriod``
or a fixed ``update_period_s`` timer) calls ``train_phase`` when it is time.

Device and precision. The trainer trains wherever the model lives (``model.to(device)`` before
it is handed over; the Adam state follows). ``train_precision`` = float16 | bfloat16 runs the
forward and backward passes under ``torch.autocast``; the weights, the gradients handed to
Adam, the moments ``m``, ``v`` and the update ``u`` that picks the next mask stay float32, so
Algorithm 2's selection and its masked step are the same computation as in float32 (only the
gradient values carry the lower-precision rounding). float16 gradients are loss-scaled; an
iteration whose scaled gradient overflows is recomputed at half the scale (never skipped,
which would change the phase's iteration count and Adam's step).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.common.devices import resolve_dtype
from ams_ros.core.models.losses import logits_of, segmentation_loss
from ams_ros.core.models.student import train_mode_frozen_bn
from ams_ros.core.models.params import fingerprint, flatten_params, load_flat, param_layout
from ams_ros.core.models.samples import BufferEntry, batch_to_tensors
from ams_ros.core.server.sample_buffer import SampleBuffer
from ams_ros.core.server.stop_hooks import PhaseInterrupted, stop_hooks
from ams_ros.core.server.trainer_config import BatchSampler, PhaseResult, TrainerCheckpoint, TrainerConfig
from ams_ros.core.server.selection import (
    FULL,
    GAUSS_SOUTHWELL_SGD,
    GRADIENT_GUIDED,
    mask_from_indices,
    num_selected,
    phase_indices,
    top_k_indices,
    validate_strategy,
)

__all__ = ["AMSTrainer"]



@contextmanager
def phase_rng(seed: int, phase: int, device: torch.device) -> Iterator[None]:
    """Torch randomness of one phase (the student's dropout) drawn from the robot's own stream,
    seeded by ``(seed, phase)``; the process's generators are restored afterwards.

    Why: dropout drew from the process-global generator, so a robot's phase depended on what else
    the process had trained before it: the same robot trained differently alone and among others
    (a fleet study's "loss" held that noise, and a test of it failed in one process out of two),
    and a base station's robots perturbed each other's training."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + int(phase)) % (2**63))
        yield


class AMSTrainer:
    """The AMS server's trainer for one edge device (Algorithm 1 training phase + Algorithm 2)."""

    STATE_VERSION = 1

    def __init__(
        self,
        model: nn.Module,
        config: Optional[TrainerConfig] = None,
        buffer: Optional[SampleBuffer] = None,
        batch_sampler: Optional[BatchSampler] = None,
    ) -> None:
        self.model = model
        self.config = config if config is not None else TrainerConfig()
        self.buffer = (
            buffer
            if buffer is not None
            else SampleBuffer(self.config.input_size, horizon_s=self.config.horizon_s)
        )
        self._batch_sampler: BatchSampler = batch_sampler or (
            lambda buf, now, bs, rng: buf.sample(now, self.config.horizon_s, bs, rng)
        )
        self.slots = param_layout(model)
        self.params = list(model.parameters())
        self._fingerprint = fingerprint(model)
        self.num_params = sum(s.numel for s in self.slots)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        n = self.num_params
        # Adam state of Algorithm 2: moments for every parameter, global step, last update.
        self.m = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.v = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.step = 0
        self.u: Optional[torch.Tensor] = None
        self.phase = 0
        self._loss_scale, self._good_steps = 2.0**16, 0  # float16 training only
        # Polled before every iteration and inside it (stop_hooks): True ends the phase with
        # PhaseInterrupted (issues #13, #27: a server stopped mid-phase does not wait for it).
        self.stop_requested: Optional[Callable[[], bool]] = None
        # Separate streams so that the batches do not depend on the selection strategy.
        self._sample_rng = np.random.default_rng([self.config.seed, 0])
        self.select_rng = np.random.default_rng([self.config.seed, 1])
        # Pretrained weights: the authors' variant restarts every phase from them.
        self._w0 = flatten_params(model).to(self.device) if self.config.authors_variant else None

    # Settings that shape the state a phase builds on: changing them means a new trainer.
    FIXED_AT_START = ("input_size", "seed", "authors_variant", "ignore_index")

    def reconfigure(self, **changes: Any) -> TrainerConfig:
        """Change settings between phases (lr, gamma, iterations, batch_size, horizon_s, strategy,
        update_period_s, ...); validated as a new :class:`TrainerConfig` (ValueError, nothing
        changed, when invalid). The sample buffer follows a new horizon at once."""
        fixed = [k for k in changes if k in self.FIXED_AT_START]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change while training: start a new trainer")
        config = replace(self.config, **changes)
        self.config = config
        if self.buffer.horizon_s is not None:
            self.buffer.horizon_s = config.horizon_s
        return config

    # ---------------------------------------------------------------- public conveniences
    def add_sample(self, t: float, frame: np.ndarray, label: np.ndarray) -> None:
        self.buffer.add(t, frame, label)

    def last_update(self) -> Optional[np.ndarray]:
        """u_{n-1}: the last Adam update of every parameter (None before the first phase)."""
        return None if self.u is None else self.u.detach().cpu().numpy().copy()

    def full_snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(all indices, all values): a full-model update, e.g. for a newly joined edge device."""
        return np.arange(self.num_params, dtype=np.int64), flatten_params(self.model).cpu().numpy()

    def compute_loss(self, entries: Sequence[BufferEntry]) -> torch.Tensor:
        """Mean pixel cross-entropy of the student on ``entries`` against the teacher labels.

        Pixels labelled ``ignore_index`` (and class ids the student does not have) do not
        contribute; a batch with no valid pixel gives a zero loss with zero gradient.
        """
        return self._loss(entries)[0]

    def _loss(self, entries: Sequence[BufferEntry]) -> tuple[torch.Tensor, bool]:
        x, y = batch_to_tensors(entries, self.device)
        dtype = resolve_dtype(self.config.train_precision)
        if dtype == torch.float32:
            logits = logits_of(self.model, x, tuple(y.shape[-2:]))
        else:
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                logits = logits_of(self.model, x, tuple(y.shape[-2:]))
            logits = logits.float()  # the loss (log-softmax over classes) in float32
        return segmentation_loss(logits, y, self.config.ignore_index, self.config.class_weights)

    # ---------------------------------------------------------------- flat-vector plumbing
    def _flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [
                p.grad.detach().reshape(-1).float()
                if p.grad is not None
                else torch.zeros(p.numel(), device=self.device)
                for p in self.params
            ]
        )

    @torch.no_grad()
    def _subtract(self, delta: torch.Tensor) -> None:
        """w <- w - delta on the flat vector (delta is zero outside the selected coordinates)."""
        for slot, p in zip(self.slots, self.params):
            d = delta[slot.offset : slot.offset + slot.numel].view_as(p)
            p.sub_(d.to(p.dtype))

    def _write_all(self, flat: torch.Tensor) -> None:
        load_flat(self.params, flat)

    def _loss_and_grad(self, batch: Sequence[BufferEntry]) -> tuple[float, torch.Tensor]:
        """Loss (nan when the batch has no valid pixel) and flat float32 gradient at the current
        weights. float16 scales the loss (gradients below float16's range would flush to zero)
        and recomputes at half the scale when the scaled gradient overflows."""
        fp16 = resolve_dtype(self.config.train_precision) == torch.float16
        for _ in range(32):
            self.model.zero_grad(set_to_none=True)
            loss, valid = self._loss(batch)
            scale = self._loss_scale if fp16 else 1.0
            (loss * scale if fp16 else loss).backward()
            g = self._flat_grad()
            self.model.zero_grad(set_to_none=True)
            if not fp16:
                break
            if bool(torch.isfinite(g).all()):
                g = g / scale
                self._good_steps += 1
                if self._good_steps >= 200:  # grow back slowly, as torch's GradScaler does
                    self._loss_scale, self._good_steps = min(self._loss_scale * 2.0, 2.0**24), 0
                break
            self._loss_scale, self._good_steps = max(self._loss_scale / 2.0, 1.0), 0
            if scale <= 1.0:
                break  # unscaled and still not finite: the loss itself diverged; Adam sees it as is
        return (float(loss.detach()) if valid else float("nan")), g

    def adam_update(self, g: torch.Tensor) -> torch.Tensor:
        """Lines 9-12 of Algorithm 2 for all parameters; returns u_{n,k}."""
        b1, b2 = self.config.betas
        self.m.mul_(b1).add_(g * (1.0 - b1))
        self.v.mul_(b2).add_(g * g * (1.0 - b2))
        self.step += 1
        i = self.step
        step_size = self.config.lr * math.sqrt(1.0 - b2**i) / (1.0 - b1**i)
        if self.config.eps_inside_sqrt:
            denom = (self.v + self.config.eps).sqrt()
        else:
            denom = self.v.sqrt() + self.config.eps
        return self.m / denom * step_size

    # ---------------------------------------------------------------- the training phase
    def train_phase(self, now: float) -> Optional[PhaseResult]:
        """One training phase at stream time ``now``; None if the horizon holds no sample."""
        cfg = self.config
        strategy = validate_strategy(cfg.strategy)
        self.buffer.evict(now - cfg.horizon_s)
        num_samples = len(self.buffer.window(now, cfg.horizon_s))
        if num_samples == 0:
            return None
        t0 = time.perf_counter()
        self.phase += 1
        n = self.num_params
        k = num_selected(n, cfg.gamma)
        w_before = flatten_params(self.model).to(self.device)
        if cfg.authors_variant:
            self._write_all(self._w0)

        train_mode_frozen_bn(self.model)
        losses: list[float] = []
        try:
            with self._interruptible(), phase_rng(cfg.seed, self.phase, self.device):
                if strategy == GAUSS_SOUTHWELL_SGD:
                    selected = self._run_gauss_southwell(now, k, losses)
                else:
                    selected = self._run_adam(now, strategy, k, losses)
        finally:
            self.model.eval()  # the server's copy rests in inference mode between phases

        w_after = flatten_params(self.model).to(self.device)
        changed = w_after != w_before
        # Coordinates that moved are always shipped; in the authors' variant that includes
        # last phase's coordinates reset to their pretrained values, so the edge copy ends up
        # equal to the server's model (which is what the authors' emulator evaluates).
        ship = selected | changed
        indices = torch.nonzero(ship).reshape(-1)
        values = w_after[indices]
        finite = [l for l in losses if math.isfinite(l)]
        return PhaseResult(
            indices=indices.cpu().numpy().astype(np.int64),
            values=values.cpu().numpy().astype(np.float32),
            phase=self.phase,
            loss=float(np.mean(finite)) if finite else float("nan"),
            duration_s=time.perf_counter() - t0,
            num_samples=num_samples,
            strategy=strategy,
            changed_fraction=float(changed.float().mean()) if n else 0.0,
            num_params=n,
            iterations=cfg.iterations,
            now=float(now),
        )

    def next_batch(self, now: float) -> list[BufferEntry]:
        batch = self._batch_sampler(self.buffer, now, self.config.batch_size, self._sample_rng)
        if not batch:
            raise RuntimeError("batch sampler returned no samples for a non-empty horizon")
        return batch

    def _run_adam(self, now: float, strategy: str, k: int, losses: list[float]) -> torch.Tensor:
        """Algorithm 2 (or the authors' variant); returns the boolean selection of the phase."""
        cfg = self.config
        n = self.num_params
        authors_gg = cfg.authors_variant and strategy == GRADIENT_GUIDED
        mask: Optional[torch.Tensor] = None
        if not authors_gg:
            idx = phase_indices(strategy, n, cfg.gamma, self.select_rng, self.u)
            mask = None if strategy == FULL else mask_from_indices(n, idx, self.device)
        u = None
        for it in range(cfg.iterations):
            self.check_stop(it)
            loss, g = self._loss_and_grad(self.next_batch(now))
            losses.append(loss)
            u = self.adam_update(g)
            if authors_gg and it == 0:
                mask = mask_from_indices(n, top_k_indices(u.abs(), k), self.device)
            self._subtract(u if mask is None else u * mask)
        self.u = u  # u_n <- u_{n,K}
        if mask is None:
            return torch.ones(n, dtype=torch.bool, device=self.device)
        return mask.bool()

    def _run_gauss_southwell(self, now: float, k: int, losses: list[float]) -> torch.Tensor:
        """Plain SGD on the top-k |gradient| coordinates of each iteration; returns their union."""
        n = self.num_params
        union = torch.zeros(n, dtype=torch.bool, device=self.device)
        for it in range(self.config.iterations):
            self.check_stop(it)
            loss, g = self._loss_and_grad(self.next_batch(now))
            losses.append(loss)
            mask = mask_from_indices(n, top_k_indices(g.abs(), k), self.device)
            self._subtract(g * self.config.sgd_lr * mask)
            union |= mask.bool()
        return union

    def check_stop(self, iteration: int) -> None:
        if self.stop_requested is not None and self.stop_requested():
            raise PhaseInterrupted(f"phase {self.phase} stopped before iteration {iteration + 1} of "
                                   f"{self.config.iterations}")

    def _interruptible(self):
        """While a phase runs, a stop request also ends it inside an iteration (:func:`stop_hooks`)."""
        return stop_hooks(self.model, self.stop_requested, f"phase {self.phase}")

    # ---------------------------------------------------------------- undo
    def checkpoint(self) -> "TrainerCheckpoint":
        """Weights, Adam state and selection guide before a phase (BN statistics are frozen,
        so that is all a phase changes), for :meth:`rollback` when the phase diverges."""
        return TrainerCheckpoint(flatten_params(self.model).to(self.device).clone(), self.m.clone(), self.v.clone(),
                                 self.step, None if self.u is None else self.u.clone())

    def rollback(self, ckpt: "TrainerCheckpoint") -> None:
        """Undo a phase: back to what :meth:`checkpoint` saved. The phase counter and the
        random streams keep going, so the next phase is not a replay of the failed one."""
        self._write_all(ckpt.weights)
        self.m, self.v, self.step = ckpt.m.clone(), ckpt.v.clone(), int(ckpt.step)
        self.u = None if ckpt.u is None else ckpt.u.clone()

    def reset_optimizer(self) -> None:
        """Adam's moments, step and the last update (the next phase's selection guide) back to
        their start, as for a new trainer: (issue #29) after an operator's rollback they belong to
        the path rolled back from. The weights are the caller's to set."""
        self.m.zero_()
        self.v.zero_()
        self.step = 0
        self.u = None

    # ---------------------------------------------------------------- persistence
    def state_dict(self, include_model: bool = True) -> dict[str, Any]:
        """Adam state, last update, phase count, RNG states as CPU tensors.

        With ``include_model`` the model's full ``state_dict`` (weights and BN running stats)
        is stored too, so one file restores the server's copy of the student.
        """
        state: dict[str, Any] = {
            "version": self.STATE_VERSION,
            "fingerprint": self._fingerprint,
            "num_params": self.num_params,
            "phase": self.phase,
            "step": self.step,
            "m": self.m.detach().cpu().clone(),
            "v": self.v.detach().cpu().clone(),
            "u": None if self.u is None else self.u.detach().cpu().clone(),
            "pretrained": None if self._w0 is None else self._w0.detach().cpu().clone(),
            "sample_rng": self._sample_rng.bit_generator.state,
            "select_rng": self.select_rng.bit_generator.state,
            "config": self.config.to_dict(),
        }
        if include_model:
            state["model"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; the model layout must match (ValueError if not)."""
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"unsupported trainer state version {state.get('version')!r}")
        if state["fingerprint"] != self._fingerprint or state["num_params"] != self.num_params:
            raise ValueError("trainer state was saved for a different model layout")
        self.phase = int(state["phase"])
        self.step = int(state["step"])
        self.m = state["m"].to(self.device, torch.float32).clone()
        self.v = state["v"].to(self.device, torch.float32).clone()
        self.u = None if state["u"] is None else state["u"].to(self.device, torch.float32).clone()
        if state.get("pretrained") is not None:
            self._w0 = state["pretrained"].to(self.device, torch.float32).clone()
        self._sample_rng.bit_generator.state = state["sample_rng"]
        self.select_rng.bit_generator.state = state["select_rng"]
        if state.get("model") is not None:
            self.model.load_state_dict(state["model"])
