"""Sparse model updates on the wire: encodings, integrity (checksum) and verification.

Signatures (Ed25519, issue #13) live in :mod:`ams_ros.core.security.signing`.

An update carries new values for a subset of coordinates of the flat parameter vector
(:mod:`ams_ros.core.models.params`). The edge applies it through its double buffer
(:mod:`ams_ros.core.edge.double_buffer`). Encodings are selectable by name (``ENCODINGS``):

- ``paper_gzip_fp16``: the paper's — a packed bit mask over all parameters (gzip -9) and the
  selected values as float16 (gzip -9).
- ``delta_lzma_fp16``: delta-coded sorted indices as LEB128 varints + float16 values, LZMA.
- ``delta_lzma_q8``: the same indices + values quantised to 8 bits with a scale/offset per
  parameter tensor (max error half a step of that tensor's range / 255), LZMA.
- ``residual_lzma_q6``: as below with 6-bit changes (|error| <= range of the changes / 126),
  packed four to three bytes; the smallest encoding.
- ``residual_zlib_q6``: the same with zlib instead of LZMA: about 8 % larger, but it inflates
  about 6x faster, so decode + apply + swap fits the edge's budget (docs/results.md).
- ``residual_lzma_q8``: the same indices + the *change* of each value from the base version,
  quantised to 8 bits per tensor, LZMA. Changes are small and alike, so they compress far
  better than values; the edge adds them to the base version it runs (which the version
  chain guarantees is the server's base).
- ``residual_zstd_q4`` / ``_q3`` / ``_q2`` (issue #10): changes quantised to 4, 3 or 2 bits per
  tensor, one symbol per byte, and zstd (level 19) over both streams: zstd's entropy stage codes
  the symbols near their entropy (3.7 / 2.6 / 1.6 bits on the bench's update) and inflates in
  well under a millisecond.
- ``residual_zstd_ternary`` (issue #10; sparse ternary compression): every selected change sent
  as its sign, and one scale mu per tensor (the mean magnitude of that tensor's selected
  changes): the model moves by {-mu, 0, +mu}, 0 for the coordinates not selected. One bit per
  value plus the positions: about half a byte per selected parameter at gamma 5 %.

Quantisation error is not lost: the server writes into its own copy exactly what the edge
decodes (:func:`ship_update`), so the next phase trains on from the rounded weights and
corrects what the rounding moved (error feedback for free).

Decoding verifies fingerprint, encoding, checksum, sizes and finiteness and raises
:class:`UpdateError` with a clear reason; it never touches the model.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from torch import nn

from ams_ros.core.models.params import FlatAccessor, fingerprint, param_layout, sorted_cuts, write_flat


class UpdateError(ValueError):
    """An update failed verification; the model was not modified."""


class StaleUpdateError(UpdateError):
    """The update would not move the robot forward: a replayed, forged or out-of-order one."""


class VersionGapError(UpdateError):
    """The update does not apply on top of the version the edge runs."""

    def __init__(self, base: int, current: int) -> None:
        super().__init__(f"update applies on top of v{base} but this model is v{current} (gap in the version chain)")
        self.base = base
        self.current = current


@dataclass
class EncodedUpdate:
    """Mirror of ``ams_msgs/ModelUpdate`` (without header/device)."""

    fingerprint: str
    base_version: int
    new_version: int
    full_snapshot: bool
    encoding: str
    num_params: int
    indices_blob: bytes
    values_blob: bytes
    num_selected: int
    checksum: str = ""
    auth_tag: bytes = b""
    # the server-side version chain this update belongs to (see ModelUpdate.msg); "" = untagged
    chain_tag: str = ""
    # (issue #13) a catch-up update: one sparse update that takes a robot a few versions behind
    # from base_version straight to new_version (the union of the changes in between); the only
    # sparse update allowed to span more than one version (see ModelUpdate.msg)
    catch_up: bool = False
    # (issue #13) id of the Ed25519 key whose signature ``auth_tag`` holds (ams_ros.core.security.signing)
    signer_key_id: str = ""

    def compute_checksum(self) -> str:
        h = hashlib.sha256()
        for part in (self.fingerprint, str(self.base_version), str(self.new_version), str(int(self.full_snapshot)),
                     self.encoding, str(self.num_params), str(self.num_selected)):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(hashlib.sha256(self.indices_blob).digest())
        h.update(hashlib.sha256(self.values_blob).digest())
        if self.catch_up:  # covered only when set, so every other update's checksum is unchanged
            h.update(b"catch_up\x00")
        return h.hexdigest()

    @property
    def wire_bytes(self) -> int:
        return len(self.indices_blob) + len(self.values_blob)


def encoded_size(update: EncodedUpdate) -> int:
    """Bytes on the wire: blobs plus the fixed header fields (fingerprint, versions, checksum)."""
    return update.wire_bytes + 64 + 64 + 8 * 5 + len(update.encoding) + len(update.auth_tag)


# ---------------------------------------------------------------------------- index coders
def _mask_encode(indices: np.ndarray, n: int) -> bytes:
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return gzip.compress(np.packbits(mask).tobytes(), compresslevel=9, mtime=0)


def _mask_decode(blob: bytes, n: int) -> np.ndarray:
    bits = np.frombuffer(_gunzip(blob, (n + 7) // 8), dtype=np.uint8)
    if bits.size != (n + 7) // 8:
        raise UpdateError(f"index mask holds {bits.size * 8} bits, model has {n} parameters")
    unpacked = np.unpackbits(bits)
    if unpacked[n:].any():
        raise UpdateError(f"index mask sets padding bits past the model's {n} parameters")
    mask = unpacked[:n].astype(bool)
    return np.flatnonzero(mask).astype(np.int64)


def _varint_encode(values: np.ndarray) -> bytes:
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


def _varint_decode(blob: bytes, count: int) -> np.ndarray:
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


def _delta_encode(indices: np.ndarray) -> bytes:
    d = np.diff(indices, prepend=0)
    return _varint_encode(d)


def _delta_decode(blob: bytes, count: int, n: int) -> np.ndarray:
    """Delta-coded indices back to absolute ones in ``[0, n)``. Every delta is checked *before*
    summing (the first < n, the others in [1, n)), so the sum of at most n deltas each below n
    cannot wrap int64: a crafted stream can no longer sum past 2**63 back into range."""
    deltas = _varint_decode(blob, count).view(np.uint64)
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


def check_version_step(update: "EncodedUpdate", current_version: int, max_span: int = 1, synced: bool = True) -> None:
    """The one version rule every robot applies before touching its model.

    - a sparse update applies on top of the version the robot runs (``base_version ==
      current_version``, else :class:`VersionGapError`: ask for a snapshot) and moves it forward
      by 1 to ``max_span`` versions (``max_span`` > 1 only for a catch-up update that carries the
      union of several versions' changes);
    - a full snapshot must be newer than the version the robot runs; a robot that has not yet
      applied anything (``synced=False``: its version is a local start value, not a place in the
      server's chain) also takes a snapshot of that same version, so a fresh robot and a fresh
      server (both v0) end up on exactly the weights the server trains.

    Anything else (``new_version <= base_version``, a jump past ``max_span``, an old snapshot
    replayed) raises :class:`StaleUpdateError`, as does a sparse update that ends at or below the
    version the robot runs (a duplicate, a replay of a genuine old update, or one overtaken by a
    catch-up): the robot has it already, so it is not a gap and costs no resync. A catch-up
    (absolute values of every coordinate changed since its base) also applies on a version
    between its base and its end: the robot got one of the versions it covers meanwhile.
    """
    base, new, cur = int(update.base_version), int(update.new_version), int(current_version)
    if max_span < 1:
        raise ValueError(f"max_span must be >= 1, got {max_span}")
    if update.full_snapshot:
        if new < cur or (new == cur and synced):
            raise StaleUpdateError(f"snapshot v{new} is not newer than this model's v{cur} (replayed or out of order)")
        return
    if base != cur:
        if update.catch_up and base < cur < new and new - base <= max_span and not _is_residual(update.encoding):
            return  # a catch-up carries absolute values of every coordinate changed since its base: from a
            # version between its base and its end (an update that came in meanwhile) it lands on the same weights
        if base < new <= cur:
            raise StaleUpdateError(f"update v{base}->v{new} is not newer than this model's v{cur} (a duplicate, a "
                                   f"replayed or a late update: already applied)")
        raise VersionGapError(base, cur)
    if not 1 <= new - base <= max_span:
        allowed = f"v{base + 1}" if max_span == 1 else f"v{base + 1}..v{base + max_span}"
        raise StaleUpdateError(f"update v{base}->v{new} must move the version to {allowed}")


def _bounded(decompressor, blob: bytes, limit: int, kind: str) -> bytes:
    """Decompress at most ``limit`` bytes: the header says how large the payload can be, so a
    small message that inflates to gigabytes (a "zip bomb") is refused instead of exhausting
    the robot's memory."""
    out = decompressor.decompress(blob, limit + 1)
    if len(out) > limit:
        raise UpdateError(f"{kind} payload inflates past the {limit} bytes its header allows")
    if not decompressor.eof:
        raise UpdateError(f"corrupted or truncated {kind} payload: stream does not end")
    if decompressor.unused_data:  # exact lengths: nothing may hide after the stream
        raise UpdateError(f"{kind} payload has {len(decompressor.unused_data)} bytes of trailing data after its stream")
    return out


def _gunzip(blob: bytes, limit: int) -> bytes:
    try:
        return _bounded(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), blob, limit, "gzip")
    except zlib.error as exc:
        raise UpdateError(f"corrupted or truncated gzip payload: {exc}") from exc


def _unzlib(blob: bytes, limit: int) -> bytes:
    try:
        return _bounded(zlib.decompressobj(), blob, limit, "zlib")
    except zlib.error as exc:
        raise UpdateError(f"corrupted or truncated zlib payload: {exc}") from exc


# The encoder's preset 9 uses a 64 MiB dictionary; a stream that declares a larger one (to make
# the robot allocate it) is refused.
_LZMA_MEMLIMIT = 96 << 20


def _unlzma(blob: bytes, limit: int) -> bytes:
    try:
        return _bounded(lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT), blob, limit, "lzma")
    except (lzma.LZMAError, EOFError) as exc:
        raise UpdateError(f"corrupted or truncated lzma payload: {exc}") from exc


# zstd level 19 on these streams (<= a few MB) uses a window of at most the input's size; a
# frame that asks for more than this (to make the robot allocate it) is refused.
_ZSTD_MAX_WINDOW = 1 << 25


def _zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(raw)


def _unzstd(blob: bytes, limit: int) -> bytes:
    """One zstd frame of at most ``limit`` bytes, nothing after it. The frame's declared content
    size is checked before anything is inflated (zstd would otherwise trust it over
    ``max_output_size``); a frame without one is refused."""
    try:
        size = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise UpdateError(f"corrupted or truncated zstd payload: {exc}") from exc
    if size < 0:
        raise UpdateError("zstd payload does not declare its content size (the encoder always writes it)")
    if size > limit:
        raise UpdateError(f"zstd payload inflates past the {limit} bytes its header allows (declares {size})")
    try:
        out = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW).decompress(
            blob, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise UpdateError(f"corrupted or truncated zstd payload: {exc}") from exc
    if len(out) != size:
        raise UpdateError(f"zstd payload inflates to {len(out)} bytes but declares {size}")
    return out


_COMPRESS = {"lzma": lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME),
             "zlib": lambda raw: zlib.compress(raw, 9), "zstd": _zstd}
_DECOMPRESS = {"lzma": _unlzma, "zlib": _unzlib, "zstd": _unzstd}


# ---------------------------------------------------------------------------- value coders
def _slot_of(indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The parameter tensor of each *sorted* index: one binary search per tensor, not per index."""
    return np.repeat(np.arange(offsets.size, dtype=np.int64), np.diff(sorted_cuts(indices, offsets)))


def _tensor_runs(indices: np.ndarray, offsets: np.ndarray):
    """(tensor slot, start, end) of each tensor's run in *sorted* ``indices``, for the tensors
    that have entries: the per-tensor tables of the quantised and ternary value coders."""
    cuts = sorted_cuts(indices, offsets)
    for s in range(offsets.size):
        a, b = int(cuts[s]), int(cuts[s + 1])
        if b > a:
            yield s, a, b


def _per_index(raw: bytes, fields: list[tuple[str, str]], nslots: int, indices: np.ndarray,
               offsets: np.ndarray, kind: str) -> list[np.ndarray]:
    """A value stream's per-tensor table (``<I`` slot, then ``fields``, after the 4-byte count)
    as one array per field, each with the entry of every index's tensor. Refuses slots the
    model does not have and indices whose tensor has no entry."""
    table = np.frombuffer(raw, dtype=np.dtype([("slot", "<u4"), *fields]), count=nslots, offset=4)
    if nslots and int(table["slot"].max()) >= offsets.size:
        raise UpdateError(f"{kind} value stream names a parameter tensor the model does not have")
    slots = _slot_of(indices, offsets)
    out = []
    for name, _ in fields:
        per_slot = np.full(offsets.size, np.nan, dtype=np.float32)
        per_slot[table["slot"]] = table[name]
        out.append(per_slot[slots])
    if np.isnan(out[0]).any():
        raise UpdateError(f"{kind} value stream misses the scale of some parameter tensors")
    return out


def _pack_bits(q: np.ndarray, bits: int) -> bytes:
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


def _unpack_bits(raw: bytes, count: int, bits: int) -> np.ndarray:
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


def _q8_encode(indices: np.ndarray, values: np.ndarray, offsets: np.ndarray, bits: int = 8,
               packed: bool = True) -> bytes:
    runs = list(_tensor_runs(indices, offsets))
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
    return b"".join(header) + (_pack_bits(q, bits) if packed else q.tobytes())


def _q8_decode(raw: bytes, indices: np.ndarray, offsets: np.ndarray, bits: int = 8,
               packed: bool = True) -> np.ndarray:
    if len(raw) < 4:
        raise UpdateError("q8 value stream is truncated")
    (nslots,) = struct.unpack_from("<I", raw, 0)
    head = 4 + 12 * nslots
    body = (indices.size * bits + 7) // 8 if packed else indices.size
    if len(raw) != head + body:
        raise UpdateError(f"q{bits} value stream has {len(raw) - head} bytes, expected {body}")
    if packed:
        q = _unpack_bits(raw[head:], indices.size, bits).astype(np.float32)
    else:
        q = np.frombuffer(raw, dtype=np.uint8, offset=head).astype(np.float32)
        if indices.size and int(q.max()) >= 1 << bits:
            raise UpdateError(f"q{bits} value stream holds a symbol past {(1 << bits) - 1}")
    lo, scale = _per_index(raw, [("lo", "<f4"), ("scale", "<f4")], nslots, indices, offsets, "q8")
    with np.errstate(over="ignore", invalid="ignore"):  # a forged scale overflows: caught as non-finite
        return lo + q * scale


def _ternary_encode(indices: np.ndarray, changes: np.ndarray, offsets: np.ndarray) -> bytes:
    """Signs of the changes (1 bit each, packed) after a table of one scale per tensor:
    ``<I`` count, then ``<If`` (tensor slot, mu = mean |change| of its selected coordinates)."""
    runs = list(_tensor_runs(indices, offsets))
    header = [struct.pack("<I", len(runs))]
    for s, a, b in runs:
        header.append(struct.pack("<If", int(s), float(np.mean(np.abs(changes[a:b])))))
    return b"".join(header) + np.packbits(changes > 0).tobytes()


def _ternary_limit(count: int, nslots: int) -> int:
    return 4 + 8 * nslots + (count + 7) // 8


def _ternary_decode(raw: bytes, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    if len(raw) < 4:
        raise UpdateError("ternary value stream is truncated")
    (nslots,) = struct.unpack_from("<I", raw, 0)
    head = 4 + 8 * nslots
    if len(raw) != head + (indices.size + 7) // 8:
        raise UpdateError(f"ternary value stream has {len(raw) - head} bytes of signs, expected {(indices.size + 7) // 8}")
    (scale,) = _per_index(raw, [("mu", "<f4")], nslots, indices, offsets, "ternary")
    signs = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, offset=head))[: indices.size]
    return np.where(signs.astype(bool), scale, -scale).astype(np.float32)


def _fp16(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype=np.float16).tobytes()


def _from_fp16(raw: bytes, count: int) -> np.ndarray:
    if len(raw) != 2 * count:
        raise UpdateError(f"value stream holds {len(raw) // 2} float16 values, expected {count}")
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)


@dataclass(frozen=True)
class Encoding:
    name: str
    lossy_values: bool  # values are rounded: the server must keep what the edge decodes
    residual: bool = False  # values are coded relative to the base version's values
    bits: int = 8  # width of quantised values (q encodings)
    compressor: str = "lzma"  # of both streams, for the delta/residual encodings: lzma | zlib | zstd
    values: str = "quantised"  # fp16 | quantised (per-tensor range, `bits` wide) | ternary (sign + scale)
    packed: bool = True  # quantised symbols packed `bits` wide (lzma/zlib), else one per byte (zstd)

    def values_limit(self, count: int, nslots: int) -> int:
        """The most bytes the value stream of ``count`` values can inflate to."""
        if self.values == "fp16":
            return 2 * count
        if self.values == "ternary":
            return _ternary_limit(count, nslots)
        return 4 + 12 * nslots + ((count * self.bits + 7) // 8 if self.packed else count)

    def encode_values(self, indices: np.ndarray, values: np.ndarray, offsets: np.ndarray) -> bytes:
        if self.values == "fp16":
            return _fp16(values)
        if self.values == "ternary":
            return _ternary_encode(indices, values, offsets)
        return _q8_encode(indices, values, offsets, self.bits, self.packed)

    def decode_values(self, raw: bytes, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        if self.values == "fp16":
            return _from_fp16(raw, indices.size)
        if self.values == "ternary":
            return _ternary_decode(raw, indices, offsets)
        return _q8_decode(raw, indices, offsets, self.bits, self.packed)


ENCODINGS: dict[str, Encoding] = {
    "paper_gzip_fp16": Encoding("paper_gzip_fp16", True, values="fp16", compressor="gzip"),
    "delta_lzma_fp16": Encoding("delta_lzma_fp16", True, values="fp16"),
    "delta_lzma_q8": Encoding("delta_lzma_q8", True),
    "residual_lzma_q8": Encoding("residual_lzma_q8", True, residual=True),
    "residual_lzma_q6": Encoding("residual_lzma_q6", True, residual=True, bits=6),
    # ~8 % larger than residual_lzma_q6, but zlib inflates ~6x faster than LZMA decodes: the one
    # compact encoding whose decode + apply fits the edge's 10 ms (docs/results.md, make bench).
    "residual_zlib_q6": Encoding("residual_zlib_q6", True, residual=True, bits=6, compressor="zlib"),
    # issue #10: fewer value bits, zstd's entropy coder over one symbol per byte
    "residual_zstd_q4": Encoding("residual_zstd_q4", True, residual=True, bits=4, compressor="zstd", packed=False),
    "residual_zstd_q3": Encoding("residual_zstd_q3", True, residual=True, bits=3, compressor="zstd", packed=False),
    "residual_zstd_q2": Encoding("residual_zstd_q2", True, residual=True, bits=2, compressor="zstd", packed=False),
    "residual_zstd_ternary": Encoding("residual_zstd_ternary", True, residual=True, bits=1, compressor="zstd",
                                      values="ternary"),
}

DEFAULT_UPDATE_ENCODING = "residual_zstd_q4"
"""The update encoding of the nodes, the demo and ams-eval (SessionConfig.update_encoding)."""


def _check_encoding(name: str) -> None:
    if name not in ENCODINGS:
        raise UpdateError(f"unknown update encoding '{name}'; known: {', '.join(ENCODINGS)}")


def _offsets(model_or_layout) -> np.ndarray:
    layout = param_layout(model_or_layout) if isinstance(model_or_layout, nn.Module) else model_or_layout
    return np.array([s.offset for s in layout], dtype=np.int64)


def _encode_blobs(encoding: str, indices: np.ndarray, values: np.ndarray, n: int, offsets: np.ndarray) -> tuple[bytes, bytes]:
    if encoding == "paper_gzip_fp16":
        return _mask_encode(indices, n), gzip.compress(_fp16(values), compresslevel=9, mtime=0)
    enc = ENCODINGS[encoding]
    pack = _COMPRESS[enc.compressor]
    return pack(_delta_encode(indices)), pack(enc.encode_values(indices, values, offsets))


def _is_residual(encoding: str) -> bool:
    return ENCODINGS[encoding].residual


def _decode_blobs(u: EncodedUpdate, offsets: np.ndarray, base_reader=None) -> tuple[np.ndarray, np.ndarray]:
    n, k = u.num_params, u.num_selected
    if u.encoding == "paper_gzip_fp16":
        idx = _mask_decode(u.indices_blob, n)
        if idx.size != k:
            raise UpdateError(f"index mask selects {idx.size} parameters, header says {k}")
        vals = _from_fp16(_gunzip(u.values_blob, 2 * k), k)
    else:
        enc = ENCODINGS[u.encoding]
        unpack = _DECOMPRESS[enc.compressor]
        idx = check_indices(_delta_decode(unpack(u.indices_blob, 10 * k), k, n), n, k)  # a LEB128 int64: <= 10 bytes
        raw = unpack(u.values_blob, enc.values_limit(k, len(offsets)))  # scale table + values
        vals = enc.decode_values(raw, idx, offsets)
        if _is_residual(u.encoding):
            if base_reader is None:
                raise UpdateError(f"'{u.encoding}' needs the base model's values to decode")
            vals = base_reader(idx) + vals
    return idx, vals


def _sorted(indices: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    val = np.asarray(values, dtype=np.float32).reshape(-1)
    if idx.size != val.size:
        raise ValueError(f"{idx.size} indices but {val.size} values")
    order = np.argsort(idx, kind="stable")
    idx, val = idx[order], val[order]
    if idx.size and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) == 0)):
        raise ValueError(f"indices must be unique and within [0, {n})")
    return idx, val


def encode_update(model_or_layout, indices, values, base_version: int, new_version: int,
                  encoding: str = "paper_gzip_fp16", full_snapshot: bool = False,
                  base_values=None) -> EncodedUpdate:
    """Encode new ``values`` at flat ``indices`` as an update from ``base_version``.

    Residual encodings also need ``base_values``: the values at ``indices`` in the base version.
    """
    _check_encoding(encoding)
    if _is_residual(encoding):
        if full_snapshot:
            raise ValueError(f"'{encoding}' codes changes from a base version; snapshots need a value encoding")
        if base_values is None:
            raise ValueError(f"'{encoding}' needs base_values (the base version's values at indices)")
        order = np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")
        values = np.asarray(values, np.float32).reshape(-1) - np.asarray(base_values, np.float32).reshape(-1)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)[order]
        values = values[order]
    if isinstance(model_or_layout, nn.Module):
        fp, offsets = fingerprint(model_or_layout), _offsets(model_or_layout)
        n = sum(p.numel() for p in model_or_layout.parameters())
    else:
        raise TypeError("encode_update needs the model (for its fingerprint and layout)")
    idx, val = _sorted(indices, values, n)
    ib, vb = _encode_blobs(encoding, idx, val, n, offsets)
    u = EncodedUpdate(fp, int(base_version), int(new_version), bool(full_snapshot), encoding, n, ib, vb, int(idx.size))
    u.checksum = u.compute_checksum()
    return u


def encode_snapshot(model: nn.Module, version: int, encoding: str = "paper_gzip_fp16") -> EncodedUpdate:
    if _is_residual(encoding):  # a snapshot has no base to be relative to: send float16 values
        encoding = "paper_gzip_fp16"
    return _encode_snapshot(model, version, encoding)


def _encode_snapshot(model: nn.Module, version: int, encoding: str) -> EncodedUpdate:
    """Every parameter, as a full snapshot that applies on top of any version.

    Snapshots use float16 values (or q8) like updates; the server keeps its own copy equal
    to what the edge decodes by applying :func:`quantize_roundtrip` before encoding updates.
    """
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()]).cpu().numpy()
    return encode_update(model, np.arange(flat.size), flat, base_version=version, new_version=version,
                         encoding=encoding, full_snapshot=True)


def encode_catch_up(model: nn.Module, indices, base_version: int, new_version: int,
                    encoding: str = "paper_gzip_fp16") -> EncodedUpdate:
    """One sparse update from ``base_version`` straight to ``new_version``: the model's current
    values at ``indices`` (the union of the coordinates the versions in between changed), in a
    value encoding (a residual one would need the robot's base values, which the server no
    longer has). Marked ``catch_up`` so the version-step rule lets it span several versions."""
    if _is_residual(encoding):
        encoding = "paper_gzip_fp16"
    if new_version <= base_version:
        raise ValueError(f"a catch-up goes forward: base v{base_version}, new v{new_version}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()]).cpu().numpy()
    u = encode_update(model, idx, flat[idx], base_version=base_version, new_version=new_version, encoding=encoding)
    u.catch_up = True
    u.checksum = u.compute_checksum()
    return u


def quantize_roundtrip(encoding: str, model: nn.Module, indices, values, base_values=None) -> np.ndarray:
    """The values exactly as the edge will decode them (so server and edge stay identical)."""
    _check_encoding(encoding)
    n = sum(p.numel() for p in model.parameters())
    base = None
    if _is_residual(encoding):
        if base_values is None:
            raise ValueError(f"'{encoding}' needs base_values")
        base = np.asarray(base_values, np.float32).reshape(-1)
        values = np.asarray(values, np.float32).reshape(-1) - base
    idx, val = _sorted(indices, values, n)
    enc, offsets = ENCODINGS[encoding], _offsets(model)
    dec = enc.decode_values(enc.encode_values(idx, val, offsets), idx, offsets)
    if base is not None:
        dec = dec + base[np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")]
    # back to the caller's order
    out = np.empty_like(dec)
    order = np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")
    out[order] = dec
    return out


class UnencodableValues(ValueError):
    """New values the update encoding cannot carry (NaN/Inf, or past float16's range)."""

    def __init__(self, bad: int, total: int, encoding: str) -> None:
        super().__init__(f"{bad} of {total} updated parameters are not finite in '{encoding}'")
        self.bad, self.total, self.encoding = bad, total, encoding


def ship_update(model: nn.Module, indices, values, base_version: int, encoding: str,
                base_values=None) -> EncodedUpdate:
    """The server's side of a sparse update, ``base_version`` -> ``base_version + 1``.

    Writes into ``model`` (the server's copy) exactly the values the edge will decode, so both
    copies stay identical and the next update applies on top of the same weights, then encodes
    the raw ``values`` (the edge's decoder runs the same rounding). Residual encodings need
    ``base_values``, the model's values at ``indices`` before training. Raises
    :class:`UnencodableValues`, with ``model`` untouched, when the encoding cannot carry them.
    """
    raw = np.asarray(values, dtype=np.float32).reshape(-1)
    bad = int(np.sum(~np.isfinite(raw)))  # a quantised coder's per-tensor range would be NaN: refuse here
    if bad:
        raise UnencodableValues(bad, raw.size, encoding)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        try:
            decoded = quantize_roundtrip(encoding, model, indices, values, base_values=base_values)
        except UpdateError as exc:  # e.g. a change range past float32: the edge could not decode it either
            raise UnencodableValues(raw.size, raw.size, encoding) from exc
    bad = int(np.sum(~np.isfinite(decoded)))
    if bad:
        raise UnencodableValues(bad, len(decoded), encoding)
    write_flat(model, indices, decoded)
    return encode_update(model, indices, values, base_version=base_version, new_version=base_version + 1,
                         encoding=encoding, base_values=base_values)


@dataclass(frozen=True)
class ModelLayout:
    """What verification needs to know about a model, computed once per model."""

    fingerprint: str
    num_params: int
    offsets: np.ndarray

    @classmethod
    def of(cls, model: nn.Module) -> "ModelLayout":
        return cls(fingerprint(model), sum(p.numel() for p in model.parameters()), _offsets(model))


def decode_update(update: EncodedUpdate, model: nn.Module | ModelLayout,
                  base_model: nn.Module | None = None, base_reader=None) -> tuple[np.ndarray, np.ndarray]:
    """Verify and decode; raises :class:`UpdateError` with the reason. Never modifies ``model``.

    Residual encodings add the decoded changes to ``base_model`` (default: ``model``), which
    must hold the update's base version.
    """
    layout = model if isinstance(model, ModelLayout) else ModelLayout.of(model)
    fp, n = layout.fingerprint, layout.num_params
    if update.fingerprint != fp:
        raise UpdateError(f"update is for architecture {update.fingerprint[:12]}..., this model is {fp[:12]}...")
    _check_encoding(update.encoding)
    if update.checksum != update.compute_checksum():
        raise UpdateError("checksum mismatch: the update was corrupted in transit")
    if update.num_params != n:
        raise UpdateError(f"update is for a model of {update.num_params} parameters, this one has {n}")
    if not 0 <= update.num_selected <= n:
        raise UpdateError(f"update selects {update.num_selected} of {n} parameters")
    if update.full_snapshot and update.num_selected != n:
        raise UpdateError(f"full snapshot carries {update.num_selected} of {n} parameters")
    base = base_model if base_model is not None else (model if isinstance(model, nn.Module) else None)
    reader = base_reader or (FlatAccessor(base).read if base is not None else None)
    idx, vals = _decode_blobs(update, layout.offsets, reader)
    idx = check_indices(idx, n, update.num_selected)
    vals = np.asarray(vals, dtype=np.float32).reshape(-1)
    if vals.size != idx.size:
        raise UpdateError(f"update decodes to {vals.size} values for {idx.size} indices")
    if not np.all(np.isfinite(vals)):
        raise UpdateError(f"update carries {int(np.sum(~np.isfinite(vals)))} non-finite values (NaN/Inf)")
    return idx, vals
