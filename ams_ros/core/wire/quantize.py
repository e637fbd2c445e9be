"""Values on the wire: float16, per-tensor quantisation to 2..8 bits (packed or one symbol per byte),
and ternary signs with one scale per tensor. Each coder has its decoder's checks (stream sizes,
symbols in range, scales of tensors the model has)."""

from __future__ import annotations

import struct

import numpy as np

from ams_ros.core.models.params import sorted_cuts
from ams_ros.core.wire.update import UpdateError


def slot_of(indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The parameter tensor of each *sorted* index: one binary search per tensor, not per index."""
    return np.repeat(np.arange(offsets.size, dtype=np.int64), np.diff(sorted_cuts(indices, offsets)))


def tensor_runs(indices: np.ndarray, offsets: np.ndarray):
    """(tensor slot, start, end) of each tensor's run in *sorted* ``indices``, for the tensors
    that have entries: the per-tensor tables of the quantised and ternary value coders."""
    cuts = sorted_cuts(indices, offsets)
    for s in range(offsets.size):
        a, b = int(cuts[s]), int(cuts[s + 1])
        if b > a:
            yield s, a, b


def per_index(raw: bytes, fields: list[tuple[str, str]], nslots: int, indices: np.ndarray,
               offsets: np.ndarray, kind: str) -> list[np.ndarray]:
    """A value stream's per-tensor table (``<I`` slot, then ``fields``, after the 4-byte count)
    as one array per field, each with the entry of every index's tensor. Refuses slots the
    model does not have and indices whose tensor has no entry."""
    table = np.frombuffer(raw, dtype=np.dtype([("slot", "<u4"), *fields]), count=nslots, offset=4)
    if nslots and int(table["slot"].max()) >= offsets.size:
        raise UpdateError(f"{kind} value stream names a parameter tensor the model does not have")
    slots = slot_of(indices, offsets)
    out = []
    for name, _ in fields:
        per_slot = np.full(offsets.size, np.nan, dtype=np.float32)
        per_slot[table["slot"]] = table[name]
        out.append(per_slot[slots])
    if np.isnan(out[0]).any():
        raise UpdateError(f"{kind} value stream misses the scale of some parameter tensors")
    return out


def pack_bits(q: np.ndarray, bits: int) -> bytes:
    """``bits``-wide values, most significant bit first, back to back, zero-padded to a byte."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q.tobytes()
    if bits == 6:  # 4 values <-> 3 bytes with shifts: ~10x faster than going through bit arrays
        n = q.size
        v = np.zeros(-(-n // 4) * 4, dtype=np.uint8)
        v[:n] = q
        a, b, c, d = v[0::4], v[1::4], v[2::4], v[3::4]
        out = np.empty((a.size, 3), dtype=np.uint8)
        out[:, 0] = (a << 2) | (b >> 4)
        out[:, 1] = ((b & 0x0F) << 4) | (c >> 2)
        out[:, 2] = ((c & 0x03) << 6) | d
        return out.reshape(-1)[: (n * 6 + 7) // 8].tobytes()
    return np.packbits(np.unpackbits(q[:, None], axis=1)[:, 8 - bits:].reshape(-1)).tobytes()


def unpack_bits(raw: bytes, count: int, bits: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(raw, dtype=np.uint8, count=count)
    if bits == 6:
        groups = -(-count // 4)
        r = np.zeros(groups * 3, dtype=np.uint8)
        src = np.frombuffer(raw, dtype=np.uint8)
        r[: src.size] = src[: groups * 3]
        r = r.reshape(groups, 3)
        out = np.empty((groups, 4), dtype=np.uint8)
        out[:, 0] = r[:, 0] >> 2
        out[:, 1] = ((r[:, 0] & 0x03) << 4) | (r[:, 1] >> 4)
        out[:, 2] = ((r[:, 1] & 0x0F) << 2) | (r[:, 2] >> 6)
        out[:, 3] = r[:, 2] & 0x3F
        return out.reshape(-1)[:count]
    b = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return np.packbits(np.pad(b, ((0, 0), (8 - bits, 0))), axis=1).reshape(-1)


def quantized_encode(indices: np.ndarray, values: np.ndarray, offsets: np.ndarray, bits: int = 8,
               packed: bool = True) -> bytes:
    runs = list(tensor_runs(indices, offsets))
    header = [struct.pack("<I", len(runs))]
    q = np.zeros(values.size, dtype=np.uint8)
    for s, a, b in runs:
        v = values[a:b]
        top = (1 << bits) - 1
        lo, hi = float(v.min()), float(v.max())
        scale = (hi - lo) / top if hi > lo else 0.0
        header.append(struct.pack("<Iff", int(s), lo, scale))
        if scale > 0:
            q[a:b] = np.clip(np.rint((v - lo) / scale), 0, top).astype(np.uint8)
    return b"".join(header) + (pack_bits(q, bits) if packed else q.tobytes())


def quantized_decode(raw: bytes, indices: np.ndarray, offsets: np.ndarray, bits: int = 8,
               packed: bool = True) -> np.ndarray:
    if len(raw) < 4:
        raise UpdateError("q8 value stream is truncated")
    (nslots,) = struct.unpack_from("<I", raw, 0)
    head = 4 + 12 * nslots
    body = (indices.size * bits + 7) // 8 if packed else indices.size
    if len(raw) != head + body:
        raise UpdateError(f"q{bits} value stream has {len(raw) - head} bytes, expected {body}")
    if packed:
        q = unpack_bits(raw[head:], indices.size, bits).astype(np.float32)
    else:
        q = np.frombuffer(raw, dtype=np.uint8, offset=head).astype(np.float32)
        if indices.size and int(q.max()) >= 1 << bits:
            raise UpdateError(f"q{bits} value stream holds a symbol past {(1 << bits) - 1}")
    lo, scale = per_index(raw, [("lo", "<f4"), ("scale", "<f4")], nslots, indices, offsets, "q8")
    with np.errstate(over="ignore", invalid="ignore"):  # a forged scale overflows: caught as non-finite
        return lo + q * scale


def ternary_encode(indices: np.ndarray, changes: np.ndarray, offsets: np.ndarray) -> bytes:
    """Signs of the changes (1 bit each, packed) after a table of one scale per tensor:
    ``<I`` count, then ``<If`` (tensor slot, mu = mean |change| of its selected coordinates)."""
    runs = list(tensor_runs(indices, offsets))
    header = [struct.pack("<I", len(runs))]
    for s, a, b in runs:
        header.append(struct.pack("<If", int(s), float(np.mean(np.abs(changes[a:b])))))
    return b"".join(header) + np.packbits(changes > 0).tobytes()


def ternary_limit(count: int, nslots: int) -> int:
    return 4 + 8 * nslots + (count + 7) // 8


def ternary_decode(raw: bytes, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    if len(raw) < 4:
        raise UpdateError("ternary value stream is truncated")
    (nslots,) = struct.unpack_from("<I", raw, 0)
    head = 4 + 8 * nslots
    if len(raw) != head + (indices.size + 7) // 8:
        raise UpdateError(f"ternary value stream has {len(raw) - head} bytes of signs, expected {(indices.size + 7) // 8}")
    (scale,) = per_index(raw, [("mu", "<f4")], nslots, indices, offsets, "ternary")
    signs = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, offset=head))[: indices.size]
    return np.where(signs.astype(bool), scale, -scale).astype(np.float32)


def fp16_encode(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype=np.float16).tobytes()


def fp16_decode(raw: bytes, count: int) -> np.ndarray:
    if len(raw) != 2 * count:
        raise UpdateError(f"value stream holds {len(raw) // 2} float16 values, expected {count}")
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)
