"""How the fuzzer damages valid inputs: bytes flipped, cut or grown, compressed streams mutated inside (past the inflater), index deltas forged."""

from __future__ import annotations

import gzip
import lzma
import zlib

import numpy as np
from ams_ros.core.wire.index_coding import varint_decode, varint_encode


def mutate_bytes(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    op = int(rng.integers(0, 9))
    if op == 0 and b:  # flip bits
        for _ in range(int(rng.integers(1, 8))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
    elif op == 1:  # truncate
        b = b[: int(rng.integers(0, len(b) + 1))]
    elif op == 2:  # append garbage
        b += rng.bytes(int(rng.integers(1, 64)))
    elif op == 3 and b:  # duplicate a chunk
        a = int(rng.integers(0, len(b)))
        c = min(len(b), a + int(rng.integers(1, 64)))
        b[a:a] = b[a:c]
    elif op == 4 and b:  # overwrite with interesting bytes
        a = int(rng.integers(0, len(b)))
        b[a:a + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x80" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\x7f"])
    elif op == 5:  # random
        b = bytearray(rng.bytes(int(rng.integers(0, 256))))
    elif op == 6 and b:  # delete a chunk
        a = int(rng.integers(0, len(b)))
        del b[a:a + int(rng.integers(1, 32))]
    elif op == 7:  # empty
        b = bytearray()
    elif b:  # a huge LEB128 varint (delta-coded indices that wrap)
        a = int(rng.integers(0, len(b)))
        b[a:a] = b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
    return bytes(b)


def codec_of(blob: bytes):
    """(decompress, compress) for a stream the encoders make, or None."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress, lambda r: gzip.compress(r, mtime=0)
    if blob[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress, lambda r: lzma.compress(r, preset=0)
    if blob[:1] == b"\x78":
        return zlib.decompress, zlib.compress
    return None


def mutate_stream(rng: np.random.Generator, blob: bytes) -> bytes:
    """Mutate what is *inside* a compressed stream and compress it again (past the inflater)."""
    codec = codec_of(blob)
    if codec is None or rng.random() < 0.3:
        return mutate_bytes(rng, blob)
    try:
        raw = codec[0](blob)
    except Exception:
        return mutate_bytes(rng, blob)
    out = codec[1](mutate_bytes(rng, raw))
    if rng.random() < 0.1:
        out += rng.choice([b"\x00", codec[1](b"x"), rng.bytes(3)])  # trailing data after the stream
    return out


def mutate_deltas(rng: np.random.Generator, blob: bytes, count: int) -> bytes:
    """Valid LEB128 structure, hostile values: deltas of 0 (duplicates), past the model, near 2**63
    (sums that wrap int64), so the index checks after decoding are what stands in the way."""

    codec = codec_of(blob)
    if codec is None:
        return mutate_bytes(rng, blob)
    try:
        deltas = varint_decode(codec[0](blob), count).view(np.uint64).copy()
    except Exception:
        return mutate_bytes(rng, blob)
    if deltas.size == 0:
        return blob
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, deltas.size))
        deltas[i] = np.uint64(rng.choice([0, 1, 10**6, 2**62, 2**63 - 1, 2**62 + 7, int(deltas[i]) + 1]))
    if rng.random() < 0.2:  # a swap: unsorted once summed
        i, j = rng.integers(0, deltas.size, 2)
        deltas[[i, j]] = deltas[[j, i]]
    return codec[1](varint_encode(deltas.astype(np.uint64)))
