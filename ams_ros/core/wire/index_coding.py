"""Positions of the selected parameters on the wire: a gzip'd bit mask (the paper's) or sorted indices
as delta-coded LEB128 varints, and the check every decoder's output passes (count, range, strictly
increasing) before anything is written."""

from __future__ import annotations

import gzip

import numpy as np

from ams_ros.core.wire.inflate import gunzip
from ams_ros.core.wire.update import UpdateError


def mask_encode(indices: np.ndarray, n: int) -> bytes:
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return gzip.compress(np.packbits(mask).tobytes(), compresslevel=9, mtime=0)


def mask_decode(blob: bytes, n: int) -> np.ndarray:
    bits = np.frombuffer(gunzip(blob, (n + 7) // 8), dtype=np.uint8)
    if bits.size != (n + 7) // 8:
        raise UpdateError(f"index mask holds {bits.size * 8} bits, model has {n} parameters")
    unpacked = np.unpackbits(bits)
    if unpacked[n:].any():
        raise UpdateError(f"index mask sets padding bits past the model's {n} parameters")
    mask = unpacked[:n].astype(bool)
    return np.flatnonzero(mask).astype(np.int64)


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative int64s, vectorised over 7-bit groups."""
    v = values.astype(np.uint64)
    out = []
    groups = np.ones(v.size, dtype=np.int64)
    tmp = v >> np.uint64(7)
    while np.any(tmp):
        groups += (tmp > 0)
        tmp >>= np.uint64(7)
    maxg = int(groups.max()) if v.size else 0
    byte_rows = np.zeros((v.size, maxg), dtype=np.uint8)
    tmp = v.copy()
    for g in range(maxg):
        byte_rows[:, g] = (tmp & np.uint64(0x7F)).astype(np.uint8) | np.where(g < groups - 1, 0x80, 0).astype(np.uint8)
        tmp >>= np.uint64(7)
    keep = np.arange(maxg)[None, :] < groups[:, None]
    out = byte_rows[keep]
    return out.tobytes()


def varint_decode(blob: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero((b & 0x80) == 0)
    if ends.size != count or (b.size and ends[-1] != b.size - 1):
        raise UpdateError(f"index stream holds {ends.size} indices, header says {count}")
    if ends.size == b.size:  # every value below 128: one byte each
        return b.astype(np.int64)
    starts = np.empty(count, dtype=np.int64)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 9:
        raise UpdateError("index stream has an over-long varint")
    out = (b[starts] & 0x7F).astype(np.uint64)
    longer = np.flatnonzero(lengths > 1)  # at 5 % density most gaps fit one byte: touch only the others
    for g in range(1, int(lengths.max())):
        longer = longer[lengths[longer] > g]
        out[longer] |= (b[starts[longer] + g] & 0x7F).astype(np.uint64) << np.uint64(7 * g)
    return out.astype(np.int64)


def delta_encode(indices: np.ndarray) -> bytes:
    d = np.diff(indices, prepend=0)
    return varint_encode(d)


def delta_decode(blob: bytes, count: int, n: int) -> np.ndarray:
    """Delta-coded indices back to absolute ones in ``[0, n)``. Every delta is checked *before*
    summing (the first < n, the others in [1, n)), so the sum of at most n deltas each below n
    cannot wrap int64: a crafted stream can no longer sum past 2**63 back into range."""
    deltas = varint_decode(blob, count).view(np.uint64)
    if count:
        if int(deltas[0]) >= n:
            raise UpdateError(f"first index {int(deltas[0])} is out of range [0, {n})")
        rest = deltas[1:]
        if rest.size and (int(rest.min()) == 0 or int(rest.max()) >= n):
            raise UpdateError(f"index deltas must lie in [1, {n}): indices repeat or leave the model")
    return np.cumsum(deltas.astype(np.int64)).astype(np.int64)


def check_indices(idx: np.ndarray, n: int, count: int) -> np.ndarray:
    """Decoded indices must be exactly ``count`` int64s, strictly increasing, within ``[0, n)``.

    Every decoder's output goes through here before anything is written, so no encoding can
    hand the double buffer a negative, duplicate, unsorted or out-of-range index."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype != np.int64:
        raise UpdateError(f"decoded indices have shape {idx.shape} and dtype {idx.dtype}, expected int64[{count}]")
    if idx.size != count:
        raise UpdateError(f"update decodes to {idx.size} indices but its header says num_selected={count}")
    if count and (idx[0] < 0 or idx[-1] >= n):
        raise UpdateError(f"indices [{int(idx[0])}, {int(idx[-1])}] leave the model's range [0, {n})")
    if count > 1 and np.any(idx[1:] <= idx[:-1]):
        raise UpdateError("indices are not strictly increasing (duplicate or unsorted entries)")
    return idx
