"""What a trainer is told and what a phase gives back: :class:`TrainerConfig` (the paper's settings
are the defaults), :class:`PhaseResult`, the :class:`TrainerCheckpoint` a diverged phase is rolled
back to, and the batch sampler's signature."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ams_ros.core.common.config import knob
from ams_ros.core.common.devices import DTYPE_CHOICES, resolve_dtype
from ams_ros.core.common.stream_defaults import StreamDefaults
from ams_ros.core.models.samples import BufferEntry
from ams_ros.core.server.sample_buffer import SampleBuffer
from ams_ros.core.server.selection import GRADIENT_GUIDED, STRATEGIES, validate_strategy


@dataclass
class TrainerConfig:
    """Hyper-parameters of the server's training phase; defaults are the paper's (§4.1).

    ``update_period_s`` is carried for the caller that schedules phases; the trainer itself
    trains whenever ``train_phase`` is called. ``sgd_lr`` is only used by
    ``gauss_southwell_sgd``: 0.01, the plain-SGD rate the Just-In-Time ports use for the same
    student, since the paper gives none for its Gauss-Southwell baseline.

    ``authors_variant`` reproduces the authors' released code instead of Algorithm 2: each
    phase restarts from the pretrained weights (Adam moments and step count carry over), and
    the gradient-guided mask is the top gamma fraction of ``|step|`` of a first full Adam step
    taken in the phase (the other coordinates are reverted; the step counts as iteration 1).
    The authors cut at the (1 - gamma) percentile; here it is an exact top-k, which differs
    only by ties and percentile interpolation.
    """

    iterations: int = knob(20, "K: Adam iterations per training phase")
    batch_size: int = knob(8, "Mini-batch size")
    horizon_s: float = knob(240.0, "T_horizon: train on samples from the last this many seconds")
    update_period_s: float = knob(StreamDefaults.update_period_s, "T_update: requested seconds between updates")
    lr: float = knob(1e-3, "Adam learning rate")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_inside_sqrt: bool = False
    gamma: float = knob(0.05, "Fraction of parameters trained and sent per update")
    strategy: str = knob(GRADIENT_GUIDED, "Coordinate selection", choices=STRATEGIES)
    input_size: tuple[int, int] = knob(StreamDefaults.input_size, "Training input (width, height)")
    seed: int = knob(0, "Seed of coordinate selection and batch sampling")
    ignore_index: int = 255
    class_weights: Optional[Sequence[float]] = None
    sgd_lr: float = 0.01
    authors_variant: bool = knob(False, "Authors' code variant: mask from a first full step, restart from w0 each phase")
    train_precision: str = knob("float32", "Forward/backward precision: float16 | bfloat16 use autocast (weights, Adam "
                                "state and selection scores stay float32)", choices=DTYPE_CHOICES)

    def __post_init__(self) -> None:
        validate_strategy(self.strategy)
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {self.iterations} and {self.batch_size}")
        if self.horizon_s <= 0:
            raise ValueError(f"horizon_s must be > 0, got {self.horizon_s}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        self.betas = (float(b1), float(b2))
        resolve_dtype(self.train_precision)  # ValueError naming the choices
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["class_weights"] is not None:
            d["class_weights"] = list(d["class_weights"])
        return d


@dataclass
class PhaseResult:
    """What one training phase produced: the coordinates to ship and their new values.

    ``indices`` are sorted int64 flat indices (params.py layout); ``values`` the float32 values
    of the trained model at them (absolute weights, written onto the receiver's copy).
    ``changed_fraction`` is the fraction of all coordinates whose value differs from the model
    before the phase (coordinates selected but not moved are in ``indices``, not in it).
    """

    indices: np.ndarray
    values: np.ndarray
    phase: int = 0
    loss: float = float("nan")
    duration_s: float = 0.0
    num_samples: int = 0
    strategy: str = ""
    changed_fraction: float = 0.0
    num_params: int = 0
    iterations: int = 0
    now: float = float("nan")


BatchSampler = Callable[[SampleBuffer, float, int, np.random.Generator], list[BufferEntry]]
"""(buffer, now, batch_size, rng) -> mini-batch; lets tests and emulators control the batches."""


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class TrainerCheckpoint(NamedTuple):
    """What :meth:`AMSTrainer.rollback` restores."""

    weights: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    step: int
    u: Optional[torch.Tensor]
