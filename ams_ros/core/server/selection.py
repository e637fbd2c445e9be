"""Coordinate-selection strategies for partial model updates (paper §3.1.2, Table 3).

Each training phase trains, and ships, only a subset of the flat parameter vector
(``ams_ros.core.models.params``). This module decides which subset. The names are the ones the
trainer's ``TrainerConfig.strategy`` accepts:

- ``gradient_guided`` (paper Algorithm 2): the gamma fraction with the largest ``|u_{n-1}|``,
  the previous phase's last Adam update; uniform random in the first phase.
- ``full``: every parameter (the "full model" baseline of Table 3).
- ``random``: a fresh uniform gamma fraction every phase.
- ``first_layers`` / ``last_layers``: the first / last gamma fraction of the flat vector
  (registration order, i.e. input side first).
- ``first_last``: half of the budget from each end.
- ``gauss_southwell_sgd``: plain SGD, the gamma fraction of largest ``|gradient|`` chosen anew
  at every iteration (the trainer does that; nothing is chosen at phase start).

Ties are broken towards the lower flat index so that a selection is a pure function of the
scores, which makes the trainer reproducible and testable against a reference.
"""

from __future__ import annotations

import numpy as np
import torch

GRADIENT_GUIDED = "gradient_guided"
FULL = "full"
RANDOM = "random"
FIRST_LAYERS = "first_layers"
LAST_LAYERS = "last_layers"
FIRST_LAST = "first_last"
GAUSS_SOUTHWELL_SGD = "gauss_southwell_sgd"

STRATEGIES: tuple[str, ...] = (
    GRADIENT_GUIDED,
    FULL,
    RANDOM,
    FIRST_LAYERS,
    LAST_LAYERS,
    FIRST_LAST,
    GAUSS_SOUTHWELL_SGD,
)

#: Strategies whose optimiser is the flat Adam of Algorithm 2 (mask fixed for the phase).
ADAM_STRATEGIES: frozenset[str] = frozenset(STRATEGIES) - {GAUSS_SOUTHWELL_SGD}


def validate_strategy(name: str) -> str:
    """Return ``name`` if it is a known strategy, else raise ValueError listing the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown selection strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    return name


def num_selected(n: int, gamma: float) -> int:
    """How many of ``n`` coordinates a gamma fraction is: round(gamma * n), at least 1."""
    if n <= 0:
        return 0
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return int(min(n, max(1, round(gamma * n))))


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of the ``k`` largest ``scores`` (1-D), ties to the lower index.

    O(n): one ``topk`` for the k-th largest value, then everything strictly above it plus the
    lowest-index entries equal to it.
    """
    n = scores.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    if k >= n:
        return torch.arange(n, dtype=torch.int64, device=scores.device)
    scores = torch.nan_to_num(scores.reshape(-1), nan=-float("inf"))
    kth = torch.topk(scores, k, largest=True, sorted=False).values.min()
    above = torch.nonzero(scores > kth).reshape(-1)
    equal = torch.nonzero(scores == kth).reshape(-1)[: k - above.numel()]
    return torch.sort(torch.cat([above, equal])).values


def random_indices(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of ``k`` of ``n`` coordinates drawn uniformly without replacement."""
    return np.sort(rng.choice(n, size=k, replace=False).astype(np.int64))


def phase_indices(
    name: str,
    n: int,
    gamma: float,
    rng: np.random.Generator,
    prev_update: torch.Tensor | None = None,
) -> np.ndarray | None:
    """Indices trained in a phase, chosen at its start (sorted int64), for every Adam strategy.

    ``prev_update`` is ``u_{n-1}`` for ``gradient_guided`` (None in the first phase, which then
    draws uniformly). Returns None for ``gauss_southwell_sgd``, which selects per iteration.
    """
    validate_strategy(name)
    k = num_selected(n, gamma)
    if name == FULL:
        return np.arange(n, dtype=np.int64)
    if name == GAUSS_SOUTHWELL_SGD:
        return None
    if name == GRADIENT_GUIDED:
        if prev_update is None:
            return random_indices(n, k, rng)
        if prev_update.numel() != n:
            raise ValueError(f"previous update has {prev_update.numel()} entries, model has {n}")
        return top_k_indices(prev_update.detach().abs().reshape(-1), k).cpu().numpy()
    if name == RANDOM:
        return random_indices(n, k, rng)
    if name == FIRST_LAYERS:
        return np.arange(k, dtype=np.int64)
    if name == LAST_LAYERS:
        return np.arange(n - k, n, dtype=np.int64)
    if name == FIRST_LAST:
        k_first = k // 2
        return np.concatenate(
            [np.arange(k_first, dtype=np.int64), np.arange(n - (k - k_first), n, dtype=np.int64)]
        )
    raise AssertionError(name)  # unreachable: validate_strategy covers every name


def mask_from_indices(n: int, indices: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """The binary mask b_n (float32 0/1 vector of length ``n``) of a set of indices."""
    mask = torch.zeros(n, dtype=torch.float32, device=device)
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    mask[idx.to(device=device, dtype=torch.int64)] = 1.0
    return mask
