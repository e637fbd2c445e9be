"""A flat view of a model's trainable parameters.

AMS selects, trains and ships coordinates of one flat parameter vector (paper Algorithm 2).
Trainer, update codec and patcher must agree on that vector's layout, so it is defined once
here: the concatenation of ``model.named_parameters()`` in registration order, each tensor
flattened row-major. BatchNorm running statistics are buffers, not parameters: they stay
frozen during online training and are never part of an update.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ParamSlot:
    """Where one named parameter lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


def param_layout(model: nn.Module) -> list[ParamSlot]:
    """Layout of the flat parameter vector of ``model``."""
    slots: list[ParamSlot] = []
    offset = 0
    for name, p in model.named_parameters():
        n = p.numel()
        slots.append(ParamSlot(name, tuple(p.shape), offset, n))
        offset += n
    return slots


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fingerprint(model: nn.Module) -> str:
    """Hex SHA-256 of the architecture's parameter layout (names, shapes, dtypes).

    Two models with the same fingerprint can exchange flat-vector updates.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    return h.hexdigest()


def flatten_params(model: nn.Module) -> torch.Tensor:
    """A detached float32 copy of all parameters as one 1-D tensor."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def read_flat(model: nn.Module, indices: np.ndarray) -> np.ndarray:
    """Values of the parameters at flat ``indices`` (float32)."""
    return flatten_params(model).numpy()[np.asarray(indices, dtype=np.int64)]


@torch.no_grad()
def write_flat(model: nn.Module, indices: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` into the parameters at flat ``indices`` (sorted or not)."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    val = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if idx.numel() != val.numel():
        raise ValueError(f"{idx.numel()} indices but {val.numel()} values")
    for slot, p in zip(param_layout(model), model.parameters()):
        sel = (idx >= slot.offset) & (idx < slot.offset + slot.numel)
        if bool(sel.any()):
            p.view(-1)[idx[sel] - slot.offset] = val[sel].to(p.dtype)


def iter_trainable(model: nn.Module) -> Iterable[torch.nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
