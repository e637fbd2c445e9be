"""Fuzzing what a base station receives: H.264 and JPEG frame batches (a small "bomb" among the seeds), mutated and decoded as the server decodes them."""

from __future__ import annotations

import io

import numpy as np
from ams_ros.core.server.session import RobotSession
from ams_ros.core.sources.synthetic import SyntheticWorld
from ams_ros.core.wire.frame_codec import BatchLimits, encode_frames, FrameCodecError

from ams_ros.fuzz.mutations import mutate_bytes
from ams_ros.fuzz.tally import Tally
from ams_ros.fuzz.updates import fuzz_net

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
        self._new_session = lambda: RobotSession("fuzz", fuzz_net())
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
                data = mutate_bytes(rng, data)
            elif op == 3:
                stamps = [float(t) for t in range(int(rng.choice([0, 1, len(stamps) - 1, len(stamps) + 1, 601, 5000])))]
            elif op == 4:
                w, h = (int(v) for v in rng.choice([(0, 32), (63, 32), (32, 64), (65, 33), (4000, 3000), (-1, 5),
                                                     (64, 32), (1 << 20, 1 << 20)]))
            else:
                codec = str(rng.choice(["h264", "jpeg", "vp9", ""]))
        before = (self.session.new_samples, self.labelled)
        refused_before = self.session.refused_frames
        try:
            n = self.session.add_encoded_batch(data, codec, w, h, stamps, self._label, limits=self.limits)
        except FrameCodecError:
            tally.rejected += 1
            if (self.session.new_samples, self.labelled) != before:
                tally.changed += 1
                tally.note(f"rejected batch ({codec} {w}x{h}, {len(stamps)} stamps) still added samples")
            return
        tally.accepted += 1
        left_out = self.session.refused_frames - refused_before  # (issue #29) frames the label checks kept out
        if n + left_out != len(stamps) or self.session.new_samples - before[0] != n:
            tally.crashes += 1
            tally.note(f"accepted batch added {n} frames (and left out {left_out}) for {len(stamps)} stamps")
        self.session = self._new_session()  # no training phase evicts here: start each batch afresh
