"""``make fuzz``: a seeded fuzzer over what a robot and a base station take from the network.

Issue #13 found updates that crashed the edge, partial writes into the inactive copy and frame
batches that inflated to gigabytes. This replays that hunt on every run, deterministically from
``--seed``: it mutates valid inputs (every update encoding of ``wire.encodings.ENCODINGS`` and
snapshots, unsigned or signed by each registered signer; H.264 and JPEG frame batches, with a
small "bomb" among the seeds; ``sensor_msgs/Image``-shaped messages in every encoding) and feeds
them to the same code the nodes run: the robot's :class:`~ams_ros.core.edge.receiver.UpdateReceiver`
(signature, chain admission, version rule, the double buffer's write),
:meth:`RobotSession.add_encoded_batch` with :class:`BatchLimits`, and
:func:`~ams_ros.core.sources.pixel_formats.image_to_rgb`. For each kind it counts

- ``rejected``: raised the documented error (UpdateError, FrameCodecError, ImageConversionError),
- ``accepted``: went through (and the output was checked: indices, frame count and size, image shape),
- ``crashes``: any other exception, or an accepted output that is wrong,
- ``hangs``: a case that took longer than ``--hang-s`` (5 s),
- ``changed``: a rejected (or crashing) update after which the running model, the inactive copy
  or the version differ (hashed before and after), or a rejected batch that still added samples;

and prints the peak memory of the process. The exit code is 1 when any crash, hang or change
was found. Signers are pluggable (:func:`register_signer`): unsigned (the robot trusts no key) and
Ed25519 (the base station's signature, the robot trusting its key) are built in; another registers
an object with ``sign(update, device_id)`` and ``trusted`` (the keys a robot would trust).

    make fuzz ARGS="--cases 10000"          # 10,000 updates, 2,000 batches, 2,000 images
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import io
import lzma
import resource
import signal
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Callable, Protocol

import numpy as np
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.receiver import APPLIED, UPDATE, UpdateReceiver
from ams_ros.core.models.params import flatten_params, FlatAccessor
from ams_ros.core.security.signing import SigningKey, TrustedKeys, sign_update
from ams_ros.core.server.session import RobotSession
from ams_ros.core.sources.pixel_formats import _CHANNELS, ImageConversionError, image_to_rgb
from ams_ros.core.sources.synthetic import SyntheticWorld
from ams_ros.core.wire.encodings import ENCODINGS, encode_snapshot, encode_update
from ams_ros.core.wire.frame_codec import BatchLimits, encode_frames, FrameCodecError
from ams_ros.core.wire.index_coding import varint_decode, varint_encode

DEVICE = "robot_fuzz"


class Signer(Protocol):
    """How the server signs an update, and the keys a robot trusts to check it."""

    trusted: Any  # ams_ros.core.security.signing.TrustedKeys

    def sign(self, update, device_id: str) -> None: ...


class Ed25519Signer:
    """The base station's Ed25519 signature (:mod:`ams_ros.core.security.signing`, issue #13)."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.trusted = TrustedKeys.parse([self.key.public_text])

    def sign(self, update, device_id: str) -> None:
        sign_update(update, device_id, self.key)


SIGNERS: dict[str, Signer | None] = {"unsigned": None, "ed25519": Ed25519Signer()}


def register_signer(name: str, signer: Signer) -> None:
    """Fuzz updates signed by ``signer`` too (e.g. the Ed25519 signer of the signing work)."""
    SIGNERS[name] = signer


@dataclass
class Tally:
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    crashes: int = 0
    hangs: int = 0
    changed: int = 0
    seconds: float = 0.0
    peak_growth_mib: float = 0.0  # how much this target raised the process's peak RSS
    examples: list[str] = field(default_factory=list)

    def line(self, kind: str) -> str:
        return (f"{kind:8s} cases {self.cases:6d}  rejected {self.rejected:6d}  accepted {self.accepted:6d}  "
                f"crashes {self.crashes}  hangs {self.hangs}  changes after rejection {self.changed}  "
                f"({self.seconds:.1f} s, peak RSS +{self.peak_growth_mib:.0f} MiB)")

    def note(self, what: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(what)


class _Hang(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Hang()


# ---------------------------------------------------------------------------- mutators
def _mutate_bytes(rng: np.random.Generator, data: bytes) -> bytes:
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


def _codec_of(blob: bytes):
    """(decompress, compress) for a stream the encoders make, or None."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress, lambda r: gzip.compress(r, mtime=0)
    if blob[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress, lambda r: lzma.compress(r, preset=0)
    if blob[:1] == b"\x78":
        return zlib.decompress, zlib.compress
    return None


def _mutate_stream(rng: np.random.Generator, blob: bytes) -> bytes:
    """Mutate what is *inside* a compressed stream and compress it again (past the inflater)."""
    codec = _codec_of(blob)
    if codec is None or rng.random() < 0.3:
        return _mutate_bytes(rng, blob)
    try:
        raw = codec[0](blob)
    except Exception:
        return _mutate_bytes(rng, blob)
    out = codec[1](_mutate_bytes(rng, raw))
    if rng.random() < 0.1:
        out += rng.choice([b"\x00", codec[1](b"x"), rng.bytes(3)])  # trailing data after the stream
    return out


def _mutate_deltas(rng: np.random.Generator, blob: bytes, count: int) -> bytes:
    """Valid LEB128 structure, hostile values: deltas of 0 (duplicates), past the model, near 2**63
    (sums that wrap int64), so the index checks after decoding are what stands in the way."""

    codec = _codec_of(blob)
    if codec is None:
        return _mutate_bytes(rng, blob)
    try:
        deltas = varint_decode(codec[0](blob), count).view(np.uint64).copy()
    except Exception:
        return _mutate_bytes(rng, blob)
    if deltas.size == 0:
        return blob
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, deltas.size))
        deltas[i] = np.uint64(rng.choice([0, 1, 10**6, 2**62, 2**63 - 1, 2**62 + 7, int(deltas[i]) + 1]))
    if rng.random() < 0.2:  # a swap: unsorted once summed
        i, j = rng.integers(0, deltas.size, 2)
        deltas[[i, j]] = deltas[[j, i]]
    return codec[1](varint_encode(deltas.astype(np.uint64)))


# ---------------------------------------------------------------------------- updates
def _fuzz_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.Conv2d(5, 4, 1))


def _digest(holder) -> tuple[str, str, int]:
    a, b = holder.copies()
    return (hashlib.sha256(flatten_params(a).numpy().tobytes()).hexdigest(),
            hashlib.sha256(flatten_params(b).numpy().tobytes()).hexdigest(), int(holder.version))


class UpdateTarget:
    """Valid updates of every encoding (and snapshots), each unsigned and signed by every signer,
    mutated and received as the robot receives them (:class:`~ams_ros.core.edge.receiver.UpdateReceiver`:
    signature, chain admission, version rule, write)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.model = _fuzz_net()
        self.version = 7
        n = flatten_params(self.model).numel()
        prep_idx = np.arange(0, n, 5, dtype=np.int64)
        self._prep = encode_update(self.model, prep_idx, flatten_params(self.model).numpy()[prep_idx] + 0.02,
                                   self.version - 1, self.version, "delta_lzma_fp16")
        self._holder_cls = DoubleBufferedModel
        self.robot = self.fresh_robot()
        self.seeds = []
        base_reader = FlatAccessor(self.robot.active).read
        for enc in ENCODINGS:
            for frac in (0.05, 0.5):
                idx = np.sort(rng.choice(n, max(1, int(n * frac)), replace=False)).astype(np.int64)
                base = base_reader(idx)
                vals = base + rng.normal(0, 0.05, idx.size).astype(np.float32)
                self.seeds.append(encode_update(self.model, idx, vals, self.version, self.version + 1, enc,
                                                base_values=base if ENCODINGS[enc].residual else None))
        for enc in ("paper_gzip_fp16", "delta_lzma_q8", "delta_lzma_fp16"):
            self.seeds.append(encode_snapshot(self.model, self.version + 3, enc))

    def fresh_robot(self):
        """The robot at v7 with one applied update, so a catch-up into the inactive copy is pending."""
        robot = self._holder_cls(copy.deepcopy(self.model), version=self.version - 1)
        robot.apply_update(self._prep)
        return robot

    def case(self, rng: np.random.Generator, tally: Tally) -> None:
        signer_name = list(SIGNERS)[int(rng.integers(0, len(SIGNERS)))]
        signer = SIGNERS[signer_name]
        u = replace(self.seeds[int(rng.integers(0, len(self.seeds)))])
        for _ in range(int(rng.integers(1, 4))):
            # mostly inside the streams (past the inflater: the decoders' own checks), sometimes the header
            op = int(rng.integers(0, 7)) if rng.random() < 0.8 else int(rng.integers(7, 12))
            if op <= 1 and not u.encoding.startswith("paper"):
                u.indices_blob = _mutate_deltas(rng, u.indices_blob, u.num_selected)
            elif op <= 3:
                u.indices_blob = _mutate_stream(rng, u.indices_blob)
            elif op <= 6:
                u.values_blob = _mutate_stream(rng, u.values_blob)
            elif op == 7:
                u.num_selected = int(rng.choice([0, 1, u.num_selected - 1, u.num_selected + 1, u.num_params,
                                                 u.num_params + 1, 2**31]))
            elif op == 8:
                u.base_version, u.new_version = (int(v) for v in rng.choice(
                    [(self.version, self.version), (self.version, self.version - 1), (self.version, self.version + 2),
                     (self.version - 1, self.version), (self.version + 5, self.version + 6), (0, 0),
                     (self.version + 2, self.version + 2), (self.version - 3, self.version - 3)]))
            elif op == 9:
                u.encoding = str(rng.choice([*ENCODINGS, "bogus", ""]))
            elif op == 10:
                u.full_snapshot = not u.full_snapshot
            else:
                u.num_params = int(rng.choice([0, u.num_params - 1, u.num_params + 1]))
        if rng.random() < 0.9:
            u.checksum = u.compute_checksum()  # a forger recomputes it: the decoders must hold on their own
        if signer is not None and rng.random() < 0.9:
            signer.sign(u, DEVICE)
        robot = self.robot  # unchanged by every rejection (checked), rebuilt after an acceptance
        trusted = signer.trusted if signer is not None else None
        receiver = UpdateReceiver(robot, DEVICE, trusted)
        before = _digest(robot)
        verdict = receiver.receive(u, UPDATE)
        if verdict.kind != APPLIED:
            if verdict.unexpected:  # not a documented rejection: a crash the receiver contained
                tally.crashes += 1
                tally.note(f"update raised an undocumented error: {verdict.reason}")
            else:
                tally.rejected += 1
            if _digest(robot) != before:
                tally.changed += 1
                tally.note(f"update changed the model after rejection: {u.encoding} {u.base_version}->{u.new_version}")
                self.robot = self.fresh_robot()
            return
        tally.accepted += 1
        if robot.version != int(u.new_version):
            tally.crashes += 1
            tally.note(f"accepted update left version {robot.version}, update says {u.new_version}")
        self.robot = self.fresh_robot()


# ---------------------------------------------------------------------------- frame batches
def solid_h264(n: int, w: int, h: int, value: int = 77) -> bytes:
    """``n`` frames of one solid colour, w x h, in H.264: a few bytes per frame once x264 has the
    first, so a tiny batch that decodes to many large frames (a decode bomb)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "51", "x264-params": "threads=1"}
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), value, np.uint8), format="rgb24")
        for _ in range(n):
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return buf.getvalue()


class BatchTarget:
    """Valid H.264 and JPEG batches and two bombs, with mutated bytes, declared counts and sizes,
    through ``RobotSession.add_encoded_batch`` with the server's default limits."""

    def __init__(self, rng: np.random.Generator) -> None:
        world = SyntheticWorld(seed=3, width=64, height=32)
        stamps = [0.0, 1.0, 2.0, 3.0]
        frames = [world.frame_at(t)[0] for t in stamps]
        self.seeds = [
            ("h264", 64, 32, stamps, encode_frames(frames, stamps, bitrate_bps=100_000, preset="ultrafast").data),
            ("jpeg", 64, 32, stamps, encode_frames(frames, stamps, codec="jpeg").data),
            ("h264", 64, 32, [float(t) for t in range(10)], solid_h264(200, 640, 360)),   # other size
            ("h264", 64, 32, [float(t) for t in range(10)], solid_h264(300, 64, 32)),     # more frames than declared
        ]
        self.limits = BatchLimits()
        self._new_session = lambda: RobotSession("fuzz", _fuzz_net())
        self.session = self._new_session()
        self.labelled = 0

    def _label(self, frames, stamps):
        self.labelled += len(frames)
        return [np.zeros(f.shape[:2], np.uint8) for f in frames]

    def case(self, rng: np.random.Generator, tally: Tally) -> None:
        codec, w, h, stamps, data = self.seeds[int(rng.integers(0, len(self.seeds)))]
        stamps = list(stamps)
        for _ in range(int(rng.integers(1, 3))):
            op = int(rng.integers(0, 6))
            if op <= 2:
                data = _mutate_bytes(rng, data)
            elif op == 3:
                stamps = [float(t) for t in range(int(rng.choice([0, 1, len(stamps) - 1, len(stamps) + 1, 601, 5000])))]
            elif op == 4:
                w, h = (int(v) for v in rng.choice([(0, 32), (63, 32), (32, 64), (65, 33), (4000, 3000), (-1, 5),
                                                     (64, 32), (1 << 20, 1 << 20)]))
            else:
                codec = str(rng.choice(["h264", "jpeg", "vp9", ""]))
        before = (self.session.new_samples, self.labelled)
        try:
            n = self.session.add_encoded_batch(data, codec, w, h, stamps, self._label, limits=self.limits)
        except FrameCodecError:
            tally.rejected += 1
            if (self.session.new_samples, self.labelled) != before:
                tally.changed += 1
                tally.note(f"rejected batch ({codec} {w}x{h}, {len(stamps)} stamps) still added samples")
            return
        tally.accepted += 1
        if n != len(stamps) or self.session.new_samples - before[0] != n:
            tally.crashes += 1
            tally.note(f"accepted batch added {n} frames for {len(stamps)} stamps")
        self.session = self._new_session()  # no training phase evicts here: start each batch afresh


# ---------------------------------------------------------------------------- images
class ImageTarget:
    """``sensor_msgs/Image``-shaped messages of every encoding with random sizes, steps, lengths."""

    def case(self, rng: np.random.Generator, tally: Tally) -> None:
        enc = str(rng.choice([*_CHANNELS, "bayer_rggb8", "32FC1", "", "RGB8"]))
        w = int(rng.choice([0, 1, 2, 3, 5, 8, 17, 64, int(rng.integers(1, 300))]))
        h = int(rng.choice([0, 1, 2, 3, 7, 16, int(rng.integers(1, 200))]))
        ch = _CHANNELS.get(enc, 3) * (2 if enc == "mono16" else 1)
        row = w * ch
        step = int(rng.choice([0, row, row + int(rng.integers(1, 9)), max(0, row - 1), int(rng.integers(0, 4 * row + 2))]))
        size = int(rng.choice([(step or row) * h, (step or row) * h - 1, (step or row) * h + 7, 0,
                               int(rng.integers(0, max(1, 3 * row * h)))]))
        msg = SimpleNamespace(encoding=enc, width=w, height=h, step=step, is_bigendian=int(rng.integers(0, 2)),
                              data=rng.bytes(max(0, size)))
        if rng.random() < 0.05:
            msg.width, msg.height = int(rng.choice([-1, 2**31, 2**40])), h
        try:
            rgb = image_to_rgb(msg)
        except ImageConversionError:
            tally.rejected += 1
            return
        tally.accepted += 1
        if rgb.dtype != np.uint8 or rgb.shape != (h, w, 3):
            tally.crashes += 1
            tally.note(f"accepted {enc} {w}x{h} step {step}: output {rgb.shape} {rgb.dtype}")


# ---------------------------------------------------------------------------- driver
def run_target(name: str, target, cases: int, rng: np.random.Generator, hang_s: float,
               expected: tuple[type[BaseException], ...] = ()) -> Tally:
    tally = Tally()
    t_start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            tally.cases += 1
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                target.case(rng, tally)
            except _Hang:
                tally.hangs += 1
                tally.note(f"case {i}: no answer within {hang_s:g} s")
            except Exception as exc:
                tally.crashes += 1
                tally.note(f"case {i}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if time.perf_counter() - t0 > hang_s and tally.hangs == 0:
                tally.hangs += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    tally.seconds = time.perf_counter() - t_start
    return tally


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fuzz(updates: int, batches: int, images: int, seed: int = 0, hang_s: float = 5.0,
         out: Callable[[str], None] = print) -> dict[str, Tally]:
    """Run the three targets; returns their tallies (``make fuzz`` prints them)."""
    import torch

    torch.set_num_threads(1)
    results: dict[str, Tally] = {}
    plan = [("updates", UpdateTarget, updates), ("batches", BatchTarget, batches), ("images", ImageTarget, images)]
    for k, (name, cls, n) in enumerate(plan):
        if n <= 0:
            continue
        rng = np.random.default_rng([seed, k])
        target = cls(rng) if cls is not ImageTarget else cls()
        peak0 = peak_rss_mib()
        results[name] = run_target(name, target, n, rng, hang_s)
        results[name].peak_growth_mib = peak_rss_mib() - peak0
        out(results[name].line(name))
        for ex in results[name].examples:
            out(f"  {ex}")
    out(f"peak memory (max RSS of this process) {peak_rss_mib():.0f} MiB; signers: {', '.join(SIGNERS)}; seed {seed}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ams-fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000,
                    help="update cases; batches and images get a fifth of it each unless given (default 1000)")
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--batches", type=int, default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=5.0, help="a case slower than this counts as a hang")
    a = ap.parse_args(argv)
    upd = a.cases if a.updates is None else a.updates
    bat = a.cases // 5 if a.batches is None else a.batches
    img = a.cases // 5 if a.images is None else a.images
    cmd = f"--updates {upd} --batches {bat} --images {img} --seed {a.seed}"
    print(f"ams fuzz {cmd}")
    res = fuzz(upd, bat, img, a.seed, a.hang_s)
    bad = sum(t.crashes + t.hangs + t.changed for t in res.values())
    print("OK: 0 crashes, 0 hangs, 0 changes after rejection" if not bad else f"FAILED: {bad} findings")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
