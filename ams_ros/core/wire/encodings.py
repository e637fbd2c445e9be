"""The update encodings: selectable by name, each an index coder and a value coder over one compressor.

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
decodes (:func:`~ams_ros.core.server.shipping.ship_update`), so the next phase trains on from the rounded weights and
corrects what the rounding moved (error feedback for free).

Decoding verifies fingerprint, encoding, checksum, sizes and finiteness and raises
:class:`UpdateError` with a clear reason; it never touches the model.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ams_ros.core.models.params import FlatAccessor, fingerprint
from ams_ros.core.wire.index_coding import check_indices, delta_decode, delta_encode, mask_decode, mask_encode
from ams_ros.core.wire.inflate import COMPRESSORS, DECOMPRESSORS, gunzip
from ams_ros.core.wire.quantize import (fp16_decode, fp16_encode, quantized_decode, quantized_encode, ternary_decode,
                                        ternary_encode, ternary_limit)
from ams_ros.core.wire.update import EncodedUpdate, ModelLayout, UpdateError, tensor_offsets


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
            return ternary_limit(count, nslots)
        return 4 + 12 * nslots + ((count * self.bits + 7) // 8 if self.packed else count)

    def encode_values(self, indices: np.ndarray, values: np.ndarray, offsets: np.ndarray) -> bytes:
        if self.values == "fp16":
            return fp16_encode(values)
        if self.values == "ternary":
            return ternary_encode(indices, values, offsets)
        return quantized_encode(indices, values, offsets, self.bits, self.packed)

    def decode_values(self, raw: bytes, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        if self.values == "fp16":
            return fp16_decode(raw, indices.size)
        if self.values == "ternary":
            return ternary_decode(raw, indices, offsets)
        return quantized_decode(raw, indices, offsets, self.bits, self.packed)


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


def check_encoding(name: str) -> None:
    if name not in ENCODINGS:
        raise UpdateError(f"unknown update encoding '{name}'; known: {', '.join(ENCODINGS)}")


def _encode_blobs(encoding: str, indices: np.ndarray, values: np.ndarray, n: int, offsets: np.ndarray) -> tuple[bytes, bytes]:
    if encoding == "paper_gzip_fp16":
        return mask_encode(indices, n), gzip.compress(fp16_encode(values), compresslevel=9, mtime=0)
    enc = ENCODINGS[encoding]
    pack = COMPRESSORS[enc.compressor]
    return pack(delta_encode(indices)), pack(enc.encode_values(indices, values, offsets))


def is_residual(encoding: str) -> bool:
    return ENCODINGS[encoding].residual


def _decode_blobs(u: EncodedUpdate, offsets: np.ndarray, base_reader=None) -> tuple[np.ndarray, np.ndarray]:
    n, k = u.num_params, u.num_selected
    if u.encoding == "paper_gzip_fp16":
        idx = mask_decode(u.indices_blob, n)
        if idx.size != k:
            raise UpdateError(f"index mask selects {idx.size} parameters, header says {k}")
        vals = fp16_decode(gunzip(u.values_blob, 2 * k), k)
    else:
        enc = ENCODINGS[u.encoding]
        unpack = DECOMPRESSORS[enc.compressor]
        idx = check_indices(delta_decode(unpack(u.indices_blob, 10 * k), k, n), n, k)  # a LEB128 int64: <= 10 bytes
        raw = unpack(u.values_blob, enc.values_limit(k, len(offsets)))  # scale table + values
        vals = enc.decode_values(raw, idx, offsets)
        if is_residual(u.encoding):
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
    check_encoding(encoding)
    if is_residual(encoding):
        if full_snapshot:
            raise ValueError(f"'{encoding}' codes changes from a base version; snapshots need a value encoding")
        if base_values is None:
            raise ValueError(f"'{encoding}' needs base_values (the base version's values at indices)")
        order = np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")
        values = np.asarray(values, np.float32).reshape(-1) - np.asarray(base_values, np.float32).reshape(-1)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)[order]
        values = values[order]
    if isinstance(model_or_layout, nn.Module):
        fp, offsets = fingerprint(model_or_layout), tensor_offsets(model_or_layout)
        n = sum(p.numel() for p in model_or_layout.parameters())
    else:
        raise TypeError("encode_update needs the model (for its fingerprint and layout)")
    idx, val = _sorted(indices, values, n)
    ib, vb = _encode_blobs(encoding, idx, val, n, offsets)
    u = EncodedUpdate(fp, int(base_version), int(new_version), bool(full_snapshot), encoding, n, ib, vb, int(idx.size))
    u.checksum = u.compute_checksum()
    return u


def encode_snapshot(model: nn.Module, version: int, encoding: str = "paper_gzip_fp16") -> EncodedUpdate:
    if is_residual(encoding):  # a snapshot has no base to be relative to: send float16 values
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
    if is_residual(encoding):
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
    check_encoding(encoding)
    n = sum(p.numel() for p in model.parameters())
    base = None
    if is_residual(encoding):
        if base_values is None:
            raise ValueError(f"'{encoding}' needs base_values")
        base = np.asarray(base_values, np.float32).reshape(-1)
        values = np.asarray(values, np.float32).reshape(-1) - base
    idx, val = _sorted(indices, values, n)
    enc, offsets = ENCODINGS[encoding], tensor_offsets(model)
    dec = enc.decode_values(enc.encode_values(idx, val, offsets), idx, offsets)
    if base is not None:
        dec = dec + base[np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")]
    # back to the caller's order
    out = np.empty_like(dec)
    order = np.argsort(np.asarray(indices, dtype=np.int64).reshape(-1), kind="stable")
    out[order] = dec
    return out


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
    check_encoding(update.encoding)
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
