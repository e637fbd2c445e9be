"""Bounded decompression: a payload may inflate only to the size its header allows.

A small message that inflates to gigabytes (a "zip bomb"), a stream that does not end, trailing
bytes after it, or a dictionary/window larger than the encoder ever uses are refused with an
:class:`~ams_ros.core.wire.update.UpdateError` before the robot allocates anything for them.
"""

from __future__ import annotations

import lzma
import zlib

import zstandard

from ams_ros.core.wire.update import UpdateError


def bounded(decompressor, blob: bytes, limit: int, kind: str) -> bytes:
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


def gunzip(blob: bytes, limit: int) -> bytes:
    try:
        return bounded(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), blob, limit, "gzip")
    except zlib.error as exc:
        raise UpdateError(f"corrupted or truncated gzip payload: {exc}") from exc


def unzlib(blob: bytes, limit: int) -> bytes:
    try:
        return bounded(zlib.decompressobj(), blob, limit, "zlib")
    except zlib.error as exc:
        raise UpdateError(f"corrupted or truncated zlib payload: {exc}") from exc


# The encoder's preset 9 uses a 64 MiB dictionary; a stream that declares a larger one (to make
# the robot allocate it) is refused.
LZMA_MEMLIMIT = 96 << 20


def unlzma(blob: bytes, limit: int) -> bytes:
    try:
        return bounded(lzma.LZMADecompressor(memlimit=LZMA_MEMLIMIT), blob, limit, "lzma")
    except (lzma.LZMAError, EOFError) as exc:
        raise UpdateError(f"corrupted or truncated lzma payload: {exc}") from exc


# zstd level 19 on these streams (<= a few MB) uses a window of at most the input's size; a
# frame that asks for more than this (to make the robot allocate it) is refused.
ZSTD_MAX_WINDOW = 1 << 25


def zstd_compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(raw)


def unzstd(blob: bytes, limit: int) -> bytes:
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
        out = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompress(
            blob, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise UpdateError(f"corrupted or truncated zstd payload: {exc}") from exc
    if len(out) != size:
        raise UpdateError(f"zstd payload inflates to {len(out)} bytes but declares {size}")
    return out


COMPRESSORS = {"lzma": lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME),
             "zlib": lambda raw: zlib.compress(raw, 9), "zstd": zstd_compress}
DECOMPRESSORS = {"lzma": unlzma, "zlib": unzlib, "zstd": unzstd}
