"""Stream-time simulation of an edge device, the network and a server.

Time is the video's stream time, never wall time. A scheme replays the scored frames in order;
whatever the server computes from data up to ``t`` becomes usable on the edge only at

    t_arrive = start + server time + queueing + bytes * 8 / link rate + latency,

where ``start`` is when the data reached the server *and* the server was free (it works FIFO),
the server time is the teacher's modelled labelling time plus the training time measured on
this machine divided by ``train_speedup`` (a stated speed-up of the server over this CPU),
and each link is a FIFO queue of the preset's capacity. Frames go up the same way. The edge
applies what reached it before it infers on the next frame, through the same
:class:`~ams_ros.core.edge.double_buffer.DoubleBufferedModel` the edge node uses, so an update is
decoded from its wire bytes exactly as on a robot.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from torch import nn

from ams_ros.core.common.metrics import ConfusionMatrix, WindowedMIoU
from ams_ros.core.models.student import predict
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.wire.update import EncodedUpdate, UpdateError
from ams_ros.eval.presets import Preset
from ams_ros.core.models.teachers import label_frames
from ams_ros.core.sources.synthetic import OracleTeacher, teacher_for_source
from ams_ros.eval.clips import Clip


class Link:
    """One direction of the network: FIFO, ``bps`` capacity, fixed one-way latency.

    ``send`` returns when the last byte arrives; every transfer is logged for the bandwidth
    figures (at the time it was handed to the link).
    """

    def __init__(self, bps: float, latency_s: float = 0.0) -> None:
        if bps <= 0:
            raise ValueError("link rate must be positive")
        self.bps, self.latency_s = float(bps), float(latency_s)
        self.free_at = -np.inf
        self.events: list[tuple[float, int]] = []

    def send(self, t_ready: float, nbytes: int) -> float:
        start = max(float(t_ready), self.free_at)
        self.free_at = start + nbytes * 8.0 / self.bps
        self.events.append((float(t_ready), int(nbytes)))
        return self.free_at + self.latency_s


class ServerClock:
    """The server's GPU: one job at a time, in arrival order."""

    def __init__(self) -> None:
        self.free_at = -np.inf

    def run(self, t_ready: float, duration_s: float) -> tuple[float, float]:
        start = max(float(t_ready), self.free_at)
        self.free_at = start + max(0.0, float(duration_s))
        return start, self.free_at


class TrainTimer:
    """Server training time in stream time.

    Default: the wall time measured on this machine divided by the stated ``speedup`` of the
    server over it. With ``s_per_step > 0`` the time is modelled instead as ``steps x
    s_per_step`` (deterministic, independent of this machine's load).
    """

    def __init__(self, speedup: float, s_per_step: float = 0.0) -> None:
        if speedup <= 0:
            raise ValueError("train_speedup must be positive")
        self.speedup = float(speedup)
        self.s_per_step = float(s_per_step)
        self.measured_s = 0.0

    class _Span:
        steps = 0
        seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator["TrainTimer._Span"]:
        """``with timer.measure() as span:`` ... (set ``span.steps``); then ``span.seconds``."""
        span = TrainTimer._Span()
        t0 = time.perf_counter()
        try:
            yield span
        finally:
            span.seconds = self.modelled(time.perf_counter() - t0, span.steps)

    def modelled(self, wall_s: float, steps: int = 0) -> float:
        self.measured_s += wall_s
        if self.s_per_step > 0:
            return steps * self.s_per_step
        return wall_s / self.speedup


class EdgeDevice:
    """The edge: the student it runs (double-buffered, patched from wire bytes) and an event queue.

    ``schedule(t, fn)`` runs ``fn`` when stream time reaches ``t``; ``advance(t)`` runs every
    event due by ``t`` in time order. ``deliver(t, update)`` schedules an encoded update; one
    that fails the edge's verification is logged in ``rejected`` and the edge keeps its model,
    as the edge node does (a robot never stops on a bad update).
    """

    def __init__(self, model: nn.Module, size: tuple[int, int], inference_dtype: str = "float32") -> None:
        self.model = DoubleBufferedModel(copy.deepcopy(model).eval())  # on the student's device
        self.size = size
        self.inference_dtype = inference_dtype
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.applied: list[tuple[float, int]] = []  # (stream time applied, version)
        self.rejected: list[tuple[float, str]] = []  # (stream time, why)
        self.now = -np.inf

    def schedule(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (float(t), next(self._seq), fn))

    def deliver(self, t_arrive: float, update: EncodedUpdate) -> None:
        def apply() -> None:
            try:
                self.applied.append((t_arrive, self.model.apply_update(update)))
            except UpdateError as exc:
                self.rejected.append((t_arrive, str(exc)))

        self.schedule(t_arrive, apply)

    def advance(self, t: float) -> None:
        self.now = float(t)
        while self._events and self._events[0][0] <= t:
            _, _, fn = heapq.heappop(self._events)
            fn()

    @property
    def version(self) -> int:
        return self.model.version

    def infer(self, frame: np.ndarray) -> np.ndarray:
        with self.model.use() as m:
            return predict(m, [frame], size=self.size, dtype=self.inference_dtype)[0]


@dataclass
class UpdateRecord:
    """One model update (or label map) on its way to the edge, in stream time."""

    t_data: float      # newest data it was computed from
    t_start: float     # the server started on it
    t_ready: float     # the server finished it
    t_arrive: float    # it reached the edge (usable from then on)
    nbytes: int
    steps: int = 0


@dataclass
class SchemeResult:
    """Everything a scheme produced, frame by frame (enough to recompute any figure)."""

    name: str
    scheme: str
    params: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    frame_miou: list[float] = field(default_factory=list)      # per frame vs teacher (Figure 5)
    window_miou: list[float] = field(default_factory=list)     # vs teacher over the last window_s
    gt_times: list[float] = field(default_factory=list)
    gt_window_miou: list[float] = field(default_factory=list)  # vs human labels over the last window_s
    cm_teacher: ConfusionMatrix | None = None
    cm_gt: ConfusionMatrix | None = None
    uplink: list[tuple[float, int]] = field(default_factory=list)
    downlink: list[tuple[float, int]] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
    rates: list[tuple[float, float]] = field(default_factory=list)   # (t, commanded frames/s) when it changes
    sent_times: list[float] = field(default_factory=list)            # capture times of the frames sent up
    train_wall_s: float = 0.0
    wall_s: float = 0.0
    frames_total: int = 0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def frames_done(self) -> int:
        return len(self.frame_miou)


class Scorer:
    """Scores the edge's labels of each frame against the teacher and (if any) human labels."""

    def __init__(self, clip: Clip, result: SchemeResult, window_s: float) -> None:
        self.clip, self.res = clip, result
        n = clip.num_classes
        result.cm_teacher = ConfusionMatrix(n)
        result.cm_gt = ConfusionMatrix(n)
        self.win = WindowedMIoU(n, window_s)
        self.win_gt = WindowedMIoU(n, window_s)

    def score(self, i: int, t: float, pred: np.ndarray) -> None:
        ref = np.asarray(self.clip.teacher[i])
        cm = ConfusionMatrix(self.clip.num_classes).update(pred, ref)
        self.res.cm_teacher += cm
        self.res.times.append(t)
        self.res.frame_miou.append(cm.miou())
        self.win.add(t, pred, ref)
        self.res.window_miou.append(self.win.value(t))
        if self.clip.gt is not None and bool(self.clip.has_gt[i]):
            g = np.asarray(self.clip.gt[i])
            self.res.cm_gt.update(pred, g)
            self.win_gt.add(t, pred, g)
            self.res.gt_times.append(t)
            self.res.gt_window_miou.append(self.win_gt.value(t))


@dataclass
class RunContext:
    """What every scheme runner gets: the clip, the initial student, the settings and the teacher."""

    clip: Clip
    student: nn.Module
    preset: Preset
    teacher: object | None = None   # for server-side labels of received frames
    lut: np.ndarray | None = None
    progress: Callable[[int], None] = lambda n: None
    started: list["SchemeRun"] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, OracleTeacher):
            return
        if "#v" not in self.clip.spec:  # an oracle labels the world this clip shows
            self.teacher = teacher_for_source(self.teacher, self.clip.spec)
        elif self.preset.server_labels == "received":
            raise ValueError(
                f"clip {self.clip.spec!r} is a shifted or mirrored copy of a synthetic source, which an oracle "
                "teacher cannot label from stream times: use server_labels=reference (--set server_labels=reference) "
                "or a source per robot")

    @property
    def size(self) -> tuple[int, int]:
        return self.clip.size

    @property
    def _uploads_at_teacher_resolution(self) -> bool:
        return self.preset.keyframe_upload == "teacher" and self.clip.upload_bytes is not None

    def keyframe_upload_bytes(self, i: int, sent_bytes: int) -> int:
        """What key frame ``i`` costs on the uplink (issue #11): the clip's JPEG of the source
        frame at the teacher's resolution, or ``sent_bytes`` (the evaluation-size JPEG) with
        ``keyframe_upload=eval`` or a clip without upload sizes."""
        return int(self.clip.upload_bytes[i]) if self._uploads_at_teacher_resolution else int(sent_bytes)

    @property
    def keyframe_upload_resolution(self) -> str:
        if self._uploads_at_teacher_resolution:
            return self.clip.upload_resolution
        return f"{self.clip.size[0]}x{self.clip.size[1]}"

    def server_labels(self, indices: list[int], frames: list[np.ndarray], stamps: list[float]) -> list[np.ndarray]:
        """Teacher labels of frames the server received (decoded), or the clip's reference labels."""
        if self.preset.server_labels == "reference" or self.teacher is None:
            return [np.asarray(self.clip.teacher[i]) for i in indices]
        if self.preset.server_labels != "received":
            raise ValueError(f"server_labels must be 'received' or 'reference', got '{self.preset.server_labels}'")
        labs = label_frames(self.teacher, frames, stamps)
        return [self.lut[lab] if self.lut is not None else lab for lab in labs]


class SchemeRun:
    """One scheme's run: its result, scorer, links, server clock and training timer.

    Registered in ``ctx.started`` as soon as it exists, so an interrupted run still hands back
    every frame scored so far (``finish(interrupted=True)``).
    """

    def __init__(self, ctx: RunContext, name: str, scheme: str, params: dict | None = None) -> None:
        p = ctx.preset
        self.ctx = ctx
        self.res = SchemeResult(name, scheme, dict(params or {}), frames_total=len(ctx.clip))
        self.scorer = Scorer(ctx.clip, self.res, p.window_s)
        self.up = Link(p.uplink_bps, p.link_latency_s)
        self.down = Link(p.downlink_bps, p.link_latency_s)
        self.res.uplink = self.up.events      # shared lists: partial results see every transfer
        self.res.downlink = self.down.events
        self.timer = TrainTimer(p.train_speedup, p.train_s_per_step)
        self.server = ServerClock()
        self.t0 = time.perf_counter()
        self.edges: list[EdgeDevice] = []
        ctx.started.append(self)

    def new_edge(self) -> EdgeDevice:
        """The edge of this run, starting from the initial student (its rejections are reported)."""
        edge = EdgeDevice(self.ctx.student, self.ctx.size, self.ctx.preset.inference_dtype)
        self.edges.append(edge)
        return edge

    def score(self, i: int, t: float, pred: np.ndarray) -> None:
        self.scorer.score(i, t, pred)
        self.ctx.progress(1)

    def finish(self, interrupted: bool = False) -> SchemeResult:
        self.res.train_wall_s = self.timer.measured_s
        self.res.wall_s = time.perf_counter() - self.t0
        self.res.interrupted = interrupted
        rejected = [r for e in self.edges for r in e.rejected]
        if rejected:
            self.res.params["updates_rejected"] = len(rejected)
            t, why = rejected[0]
            note = f"the edge rejected {len(rejected)} update(s), the first at t={t:.1f} s: {why}"
            if note not in self.res.notes:
                self.res.notes.append(note)
        return self.res
