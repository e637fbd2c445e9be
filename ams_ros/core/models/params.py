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
    return flatten_tensors(model.parameters())


def flatten_tensors(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A detached float32 copy of ``tensors`` (e.g. a subset of a model's parameters) as one 1-D tensor."""
    return torch.cat([p.detach().reshape(-1).float() for p in tensors])


@torch.no_grad()
def load_flat(tensors: Iterable[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy the 1-D ``flat`` (laid out as :func:`flatten_tensors` of ``tensors``) back into them."""
    offset = 0
    for p in tensors:
        n = p.numel()
        p.copy_(flat[offset:offset + n].view_as(p).to(p.dtype))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector holds {flat.numel()} values, the tensors {offset}")


def read_flat(model: nn.Module, indices: np.ndarray) -> np.ndarray:
    """Values of the parameters at flat ``indices`` (float32)."""
    return flatten_params(model).cpu().numpy()[np.asarray(indices, dtype=np.int64)]


def write_flat(model: nn.Module, indices: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` into the parameters at flat ``indices`` (sorted or not, unique)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    val = np.asarray(values, dtype=np.float32).reshape(-1)
    if idx.size != val.size:
        raise ValueError(f"{idx.size} indices but {val.size} values")
    layout = param_layout(model)
    offsets = np.array([slot.offset for slot in layout], dtype=np.int64)
    n = layout[-1].offset + layout[-1].numel if layout else 0
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"flat indices must lie in [0, {n})")
    if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
        order = np.argsort(idx, kind="stable")
        idx, val = idx[order], val[order]
    scatter_sorted(list(model.parameters()), offsets, idx, val)


@dataclass(frozen=True)
class SortedWrite:
    """A sorted sparse write made ready for one set of tensors: indices and values already on
    their device (copied there once, and reused for both copies of a double buffer), and where
    each tensor's run of indices starts and ends."""

    cuts: np.ndarray          # cuts[k]:cuts[k + 1] are tensor k's entries
    local: torch.Tensor       # int64 indices relative to their tensor's first element, on the device
    values: torch.Tensor      # float32 values, on the device
    flat: torch.Tensor | None = None  # the flat indices themselves, on the device (flat storage)


def sorted_cuts(idx: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where each tensor's run starts in *sorted* flat ``idx``: ``cuts[k]:cuts[k + 1]`` are the
    entries of the tensor starting at ``offsets[k]`` (one binary search per tensor)."""
    return np.append(np.searchsorted(idx, offsets), idx.size)


def prepare_sorted(offsets: np.ndarray, idx: np.ndarray, vals: np.ndarray, device: torch.device | str = "cpu") -> SortedWrite:
    """Indices (sorted) and values as a :class:`SortedWrite` for tensors starting at ``offsets``.

    The per-tensor offset is subtracted on the host, so the device receives exactly two
    buffers (one host-to-device copy each) and each tensor then takes one ``index_copy_``;
    a model in flat storage takes the flat indices in one ``index_copy_``."""
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    cuts = sorted_cuts(idx, offsets)
    # each index minus its tensor's offset, in one pass (repeat each tensor's offset over its run)
    local = idx - np.repeat(np.asarray(offsets, dtype=np.int64), np.diff(cuts))
    tv = torch.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))
    return SortedWrite(cuts, torch.from_numpy(local).to(device), tv.to(device), torch.from_numpy(idx).to(device))


def flat_storage(params: list[torch.Tensor]) -> torch.Tensor | None:
    """Move ``params`` into one contiguous 1-D buffer, in order, each parameter a view of its
    slice, and return the buffer; None (nothing changed) when they differ in dtype or device or
    one is not contiguous (channels-last weights keep their own layout).

    A sparse write or read of a model in flat storage is one ``index_copy_`` /
    ``index_select`` instead of one per tensor: the edge's 5 % update touches ~160 tensors,
    and the per-tensor calls were most of its decode + apply + swap time (issue #10)."""
    if not params or any(not p.is_contiguous() for p in params):
        return None
    if len({(p.dtype, p.device) for p in params}) != 1:
        return None
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for p in params:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            offset += n
    return flat


def _existing_flat_storage(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The one buffer ``params`` already are consecutive views of (see :func:`flat_storage`),
    else None."""
    if not params or any(not p.is_contiguous() for p in params):
        return None
    first = params[0]
    storage, start = first.untyped_storage(), first.storage_offset()
    expected = start
    for p in params:
        if (p.dtype != first.dtype or p.untyped_storage().data_ptr() != storage.data_ptr()
                or p.storage_offset() != expected):
            return None
        expected += p.numel()
    with torch.no_grad():
        return first.new_empty(0).set_(storage, start, (expected - start,))


def apply_sorted(params: list[torch.Tensor], write: SortedWrite) -> None:
    """Apply a prepared write: one ``index_copy_`` per tensor that has entries, on its device."""
    with torch.no_grad():
        for k, p in enumerate(params):
            a, b = int(write.cuts[k]), int(write.cuts[k + 1])
            if b > a:
                flat = p.view(-1)
                flat.index_copy_(0, write.local[a:b], write.values[a:b].to(p.dtype))


def scatter_sorted(params: list[torch.Tensor], offsets: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:
    """Write ``vals`` at *sorted* flat ``idx``: one indexed assignment per tensor, found by
    binary search (a mask per tensor over every index made a 5 % update take ~100 ms)."""
    device = params[0].device if params else torch.device("cpu")
    apply_sorted(params, prepare_sorted(offsets, idx, vals, device))


def iter_trainable(model: nn.Module) -> Iterable[torch.nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)


class FlatAccessor:
    """Reads and writes a model's parameters at *sorted* flat indices, one slice per tensor
    (what a sparse update needs on the edge: the base values of a residual update, then the write).
    Works wherever the model lives: on CUDA the gather and the scatter run on the device and only
    the gathered values (reads) or the update (writes) cross the bus, once."""

    def __init__(self, model: nn.Module, flatten: bool = False) -> None:
        """``flatten``: move the model's parameters into one flat buffer (:func:`flat_storage`)
        so reads and writes are one call each; for models only read and patched, as the edge's
        double buffer (a training model keeps its own tensors)."""
        self.params = [p for p in model.parameters()]
        self.offsets = np.array([s.offset for s in param_layout(model)], dtype=np.int64)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._flat = _existing_flat_storage(self.params)
        if self._flat is None and flatten:
            self._flat = flat_storage(self.params)
        self._ptrs = [p.data_ptr() for p in self.params] if self._flat is not None else []

    def _flat_intact(self) -> torch.Tensor | None:
        """The flat buffer, while every parameter is still its view (``model.to(...)`` or a
        reassigned ``.data`` would make new tensors; then the per-tensor path serves)."""
        if self._flat is None:
            return None
        if [p.data_ptr() for p in self.params] != self._ptrs:
            self._flat = None
            return None
        return self._flat

    @torch.no_grad()
    def read(self, idx: np.ndarray) -> np.ndarray:
        """Values at sorted flat ``idx`` (float32)."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if idx.size == 0:
            return np.empty(0, dtype=np.float32)
        flat = self._flat_intact()
        if flat is not None:
            return flat.index_select(0, torch.from_numpy(idx).to(self.device)).float().cpu().numpy()
        prepared = prepare_sorted(self.offsets, idx, np.zeros(0, dtype=np.float32), self.device)
        pieces = []
        for k, p in enumerate(self.params):
            a, b = int(prepared.cuts[k]), int(prepared.cuts[k + 1])
            if b > a:
                pieces.append(p.detach().reshape(-1).index_select(0, prepared.local[a:b]).float())
        return torch.cat(pieces).cpu().numpy()

    def prepare(self, idx: np.ndarray, vals: np.ndarray) -> SortedWrite:
        """The write made ready for this model's device (reusable on a copy on the same device)."""
        return prepare_sorted(self.offsets, idx, vals, self.device)

    def write(self, idx: np.ndarray | SortedWrite, vals: np.ndarray | None = None) -> None:
        """Write at sorted ``idx`` (or apply a :meth:`prepare` d write)."""
        write = idx if isinstance(idx, SortedWrite) else self.prepare(idx, vals)
        flat = self._flat_intact()
        if flat is not None and write.flat is not None:
            with torch.no_grad():
                flat.index_copy_(0, write.flat, write.values.to(flat.dtype))
            return
        apply_sorted(self.params, write)
