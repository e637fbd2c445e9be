"""Frame batches on the uplink: one update period of sampled frames as one H.264 clip.

The edge buffers its samples and encodes them with libx264 at a target bitrate (the paper
uses 200 Kbps, two-pass, preset medium). Here x264's ABR with a VBV cap of the same bitrate
plays the role of two-pass rate control so the batch lands near ``bitrate * period`` bytes.
Timestamps travel beside the bytes (in the message), so they are preserved exactly.
A ``jpeg`` codec (length-prefixed full-quality JPEGs) serves the remote+tracking baseline.

``h265`` (libx265) and ``av1`` (SVT-AV1) are selectable the same way (issue #10; ``make bench``
compares their bytes at equal teacher-label agreement). Both need frames of at least 64x64 in
multiples of 8 (x265 corrupts its heap on smaller ones, SVT-AV1 refuses them), so frames are
padded to that and cropped back after decoding. A decoded stream must be of the codec the batch
declares.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import av
import cv2
import numpy as np

from ams_ros.core.common.config import check_choice, knob

VIDEO_CODECS = {  # name on the wire -> (PyAV encoder, decoder names that may report it)
    "h264": ("libx264", ("h264",)),
    "h265": ("libx265", ("hevc",)),
    "av1": ("libsvtav1", ("av1", "libdav1d", "libaom-av1")),
}
CODECS = (*VIDEO_CODECS, "jpeg")
_LABEL = {"h264": "H.264", "h265": "H.265", "av1": "AV1"}


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# the same speed names for SVT-AV1's numbered presets (0 slowest .. 13 fastest)
_SVT_PRESET = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 7, "slow": 5,
               "slower": 4, "veryslow": 2}


class FrameCodecError(ValueError):
    """Bytes that do not decode into the announced frames."""


@dataclass(frozen=True)
class BatchEncoderConfig:
    """How the robot encodes one update period's sampled frames for the uplink (paper: H.264, 200 Kbps)."""

    codec: str = knob("h264", "Frame batch codec", choices=CODECS)
    bitrate_bps: int = knob(200_000, "Target uplink bitrate of video batches (bits per second of stream time)")
    preset: str = knob("medium", "Encoder speed preset for batch encoding (x264/x265 names; mapped to SVT-AV1's "
                                 "numbers for av1)", choices=X264_PRESETS)
    threads: int = knob(1, "libx264 threads for batch encoding (0 = x264's choice, about 1.5 per core). "
                           "A batch is a few frames; 1 leaves the other cores to inference")

    def __post_init__(self) -> None:
        check_choice("codec", self.codec, CODECS)
        check_choice("preset", self.preset, X264_PRESETS)
        if self.bitrate_bps <= 0:
            raise ValueError(f"bitrate_bps must be > 0, got {self.bitrate_bps}")


@dataclass(frozen=True)
class BatchLimits:
    """What the server accepts from a robot, checked on what a batch *declares* before anything is
    decoded (issue #13: a 17 KB H.264 "bomb" decoded to 600 frames of 1280x720, 1.7 GB of RSS)."""

    max_batch_frames: int = knob(600, "Most frames one frame batch may declare (len(frame_stamps)); larger "
                                      "batches are rejected before decoding (the robot's sampler keeps at most 600)")
    max_frame_pixels: int = knob(1920 * 1080, "Most pixels (width x height) a frame batch may declare per frame; "
                                              "larger batches are rejected before decoding")

    def __post_init__(self) -> None:
        if self.max_batch_frames < 1 or self.max_frame_pixels < 1:
            raise ValueError(f"max_batch_frames and max_frame_pixels must be >= 1, got {self.max_batch_frames}, "
                             f"{self.max_frame_pixels}")

    def check(self, frames: int, width: int, height: int) -> None:
        """Raises :class:`FrameCodecError` unless the declared count and size are within the limits."""
        if frames < 1:
            raise FrameCodecError("frame batch declares no frames (frame_stamps is empty)")
        if frames > self.max_batch_frames:
            raise FrameCodecError(f"frame batch declares {frames} frames, more than max_batch_frames="
                                  f"{self.max_batch_frames} (raise the parameter if the robot sends that many)")
        if width < 1 or height < 1:
            raise FrameCodecError(f"frame batch declares an empty frame size {width}x{height}")
        if width * height > self.max_frame_pixels:
            raise FrameCodecError(f"frame batch declares {width}x{height} frames ({width * height} pixels), more than "
                                  f"max_frame_pixels={self.max_frame_pixels}")


@dataclass
class EncodedBatch:
    data: bytes
    codec: str
    width: int
    height: int
    timestamps: list[float] = field(default_factory=list)
    num_frames: int = 0
    bitrate_bps: int = 0


def batch_checksum(codec: str, width: int, height: int, stamps_ns: Sequence[int], data: bytes) -> str:
    """SHA-256 (hex) over what a frame batch carries: codec, frame size, every frame stamp (integer
    nanoseconds, as on the wire) and the encoded bytes. A bit flip that still decodes would
    otherwise put wrong frames, or frames at wrong times, into the training buffer."""
    h = hashlib.sha256()
    h.update(f"{codec}\x00{int(width)}\x00{int(height)}\x00".encode())
    h.update(np.asarray(list(stamps_ns), dtype="<i8").tobytes())
    h.update(hashlib.sha256(bytes(data)).digest())
    return h.hexdigest()


def _even(x: int) -> int:
    return x + (x % 2)


def coded_size(codec: str, width: int, height: int) -> tuple[int, int]:
    """The size frames are padded to for ``codec`` (and that its decoded frames must have)."""
    if codec == "h264":
        return _even(width), _even(height)
    return max(64, -(-width // 8) * 8), max(64, -(-height // 8) * 8)


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    """One RGB frame as a JPEG file at ``quality``."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FrameCodecError("JPEG encoding failed")
    return buf.tobytes()


def encode_frames(frames: list[np.ndarray], timestamps: list[float],
                  bitrate_bps: int = BatchEncoderConfig.bitrate_bps, codec: str = BatchEncoderConfig.codec,
                  preset: str = BatchEncoderConfig.preset, period_s: float | None = None,
                  jpeg_quality: int = 95, threads: int = BatchEncoderConfig.threads) -> EncodedBatch:
    """Encode RGB ``frames`` (all the same size). ``period_s`` is the stream time the batch
    covers (default: the span of the timestamps + one frame interval); the H.264 size target
    is ``bitrate_bps * period_s / 8`` bytes. ``threads`` caps x264's threads (0 = x264's own
    choice, about 1.5 per core): a batch is a few frames, and an encoder on every core next to
    inference more than doubles the robot's inference time while it runs (docs/results.md)."""
    if not frames:
        raise FrameCodecError("no frames to encode")
    if len(frames) != len(timestamps):
        raise FrameCodecError(f"{len(frames)} frames but {len(timestamps)} timestamps")
    h, w = frames[0].shape[:2]
    if any(f.shape[:2] != (h, w) for f in frames):
        raise FrameCodecError("all frames of a batch must have the same size")
    if codec == "jpeg":
        parts = []
        for f in frames:
            jpg = jpeg_bytes(f, jpeg_quality)
            parts.append(struct.pack("<I", len(jpg)) + jpg)
        return EncodedBatch(b"".join(parts), "jpeg", w, h, list(timestamps), len(frames), 0)
    if codec not in VIDEO_CODECS:
        raise FrameCodecError(f"unknown frame codec '{codec}'; use one of {CODECS}")
    n = len(frames)
    if period_s is None:
        span = (timestamps[-1] - timestamps[0]) if n > 1 else 1.0
        period_s = span + (span / max(n - 1, 1) if n > 1 else 0.0)
    # x264 sees the clip at 1 frame per "slot": bitrate per frame = budget / n frames.
    budget_bits = max(1.0, bitrate_bps * float(period_s))
    fps = 1
    kbps = max(1, int(budget_bits / n / 1000))  # kbit per second of the 1-fps clip
    pw, ph = coded_size(codec, w, h)
    padded = [f if (pw, ph) == (w, h) else cv2.copyMakeBorder(f, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
              for f in frames]
    # Two passes at most three: ABR cannot converge within a 10-frame clip, so the rate is
    # corrected from the size of the previous attempt until the batch fits the budget.
    budget_bytes = budget_bits / 8.0
    data = b""
    for _ in range(3):
        data = _encode_video(codec, padded, pw, ph, fps, kbps, n, preset, threads)
        if len(data) <= 1.05 * budget_bytes:
            break
        kbps = max(1, int(kbps * budget_bytes / len(data) * 0.92))
    return EncodedBatch(data, codec, w, h, list(timestamps), n, int(bitrate_bps))


def _encoder_options(codec: str, kbps: int, n: int, preset: str, threads: int) -> dict[str, str]:
    """Average bitrate with a VBV cap of the same rate, one key frame per batch, no scene cuts."""
    rate = f"bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={kbps * n}:keyint={max(n, 1)}:scenecut=0"
    if codec == "h264":
        return {"preset": preset, "x264-params": rate + (f":threads={int(threads)}" if threads > 0 else "")}
    if codec == "h265":
        return {"preset": preset, "x265-params": rate + f":min-keyint={max(n, 1)}:log-level=error"
                + (f":frame-threads=1:pools={int(threads)}" if threads > 0 else "")}
    return {"preset": str(_SVT_PRESET[preset]),
            "svtav1-params": f"rc=1:tbr={kbps}:keyint={max(n, 1)}" + (f":lp={int(threads)}" if threads > 0 else "")}


def _encode_video(codec: str, frames: list[np.ndarray], w: int, h: int, fps: int, kbps: int, n: int, preset: str,
                  threads: int) -> bytes:
    if codec != "av1":
        return _encode_with_pyav(codec, frames, w, h, fps, kbps, n, preset, threads)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner and settings at every open otherwise
    with _scheduling_kept():
        return _encode_with_pyav(codec, frames, w, h, fps, kbps, n, preset, threads)


@contextlib.contextmanager
def _scheduling_kept() -> Iterator[None]:
    """Undo what SVT-AV1 does to the calling thread: run as root, opening its encoder switches the
    thread to real-time scheduling (SCHED_FIFO, priority 99), which every thread and process started
    from it afterwards inherits. On a robot's two cores such a process starves everything else,
    DDS included (a test run that had encoded one AV1 batch took 80 min instead of 25)."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux: SVT-AV1 leaves it alone there
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def _encode_with_pyav(codec: str, frames: list[np.ndarray], w: int, h: int, fps: int, kbps: int, n: int,
                      preset: str, threads: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(VIDEO_CODECS[codec][0], rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = _encoder_options(codec, kbps, n, preset, threads)
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return buf.getvalue()


def decode_frames(data: bytes, codec: str, width: int, height: int, max_frames: int | None = None,
                  expected_frames: int | None = None, limits: BatchLimits | None = None) -> list[np.ndarray]:
    """Decode a batch into RGB frames of ``width`` x ``height``; garbage raises FrameCodecError.

    ``expected_frames`` (the count the batch declares) and the size are checked against
    ``limits`` before decoding; decoding stops as soon as the stream holds more frames than
    declared (or than ``max_frames``), and every frame must have the declared size (H.264:
    padded to even, as the encoder does) *before* it is converted, so a stream that expands to
    many or large frames costs one frame's decode, not its whole size in memory."""
    if expected_frames is not None:  # a batch from the network: its declaration is checked first
        (limits or BatchLimits()).check(int(expected_frames), int(width), int(height))
        cap = int(expected_frames)
    else:  # a batch this process encoded itself (eval, bench)
        if limits is not None:
            limits.check(1, int(width), int(height))
        cap = 10_000
    if max_frames is not None:
        cap = min(cap, int(max_frames))
    if not data:
        raise FrameCodecError("empty frame batch")
    if codec == "jpeg":
        frames, pos = [], 0
        while pos < len(data):
            if len(frames) >= cap:
                raise FrameCodecError(f"JPEG batch holds more than the {cap} frames it declares")
            if pos + 4 > len(data):
                raise FrameCodecError("truncated JPEG batch")
            (size,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if size == 0 or pos + size > len(data):
                raise FrameCodecError("truncated JPEG batch")
            part = np.frombuffer(data, np.uint8, count=size, offset=pos)
            if _jpeg_size(part) not in (None, (width, height)):
                raise FrameCodecError(f"JPEG frame is {_jpeg_size(part)}, the batch declares {width}x{height}")
            img = cv2.imdecode(part, cv2.IMREAD_COLOR)
            if img is None or img.shape[:2] != (height, width):
                raise FrameCodecError("undecodable JPEG frame or unexpected size")
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            pos += size
        return frames
    if codec not in VIDEO_CODECS:
        raise FrameCodecError(f"unknown frame codec '{codec}'; use one of {CODECS}")
    label, coded = _LABEL[codec], coded_size(codec, width, height)
    frames = []
    try:
        with av.open(io.BytesIO(bytes(data)), "r", format="mp4") as container:
            if not container.streams.video:
                raise FrameCodecError("batch holds no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1  # a batch is a few frames; never a thread per core on the server
            found = getattr(stream.codec_context, "name", None)  # None: a stream PyAV has no decoder for
            if found not in VIDEO_CODECS[codec][1]:
                raise FrameCodecError(f"batch declares {label} but holds a '{found or 'undecodable'}' stream")
            for frame in container.decode(stream):
                if (frame.width, frame.height) != coded:  # before converting it
                    raise FrameCodecError(f"decoded frame is {frame.width}x{frame.height}, the batch declares "
                                          f"{width}x{height}")
                if len(frames) >= cap:
                    raise FrameCodecError(f"{label} batch holds more than the {cap} frames it declares")
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(np.ascontiguousarray(rgb[:height, :width]))
    except FrameCodecError:
        raise
    except (av.error.FFmpegError, ValueError, EOFError, OSError, IndexError) as exc:
        raise FrameCodecError(f"corrupted or truncated {label} batch: {exc}") from exc
    if not frames:
        raise FrameCodecError(f"{label} batch decoded to no frames")
    return frames


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first start-of-frame marker, without decoding; None when
    no marker is found (cv2 then decides, and the decoded size is checked)."""
    b = buf.tobytes()
    pos = 2
    while pos + 9 <= len(b):
        if b[pos] != 0xFF:
            return None
        marker = b[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        seg = int.from_bytes(b[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(b[pos + 7:pos + 9], "big"), int.from_bytes(b[pos + 5:pos + 7], "big")
        pos += 2 + seg
    return None
