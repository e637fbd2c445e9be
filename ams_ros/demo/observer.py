"""The demo's observer: an rclpy node that watches every robot (issue #16: one or many, each
under its namespace) and scores each.

It scores every n-th label map of each robot's streamed student, and the same frame through a
frozen copy of the initial student, against ground truth (the robot's synthetic world) or the
teacher (real footage); it also counts each robot's uplink/downlink bytes, sampling commands,
label-map gaps (stalls), keeps its ServerStatus (GPU share), and records the first robot's
overlay video.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from ams_msgs.msg import EdgeStatus, FrameBatch, ModelUpdate, SamplingCommand, ServerStatus
from ams_msgs.srv import GetModelSnapshot
from ams_ros.core.common.metrics import ConfusionMatrix, miou
from ams_ros.core.models.student import predict
from ams_ros.core.models.weights import load_student
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.core.models.labels import parse_class_list, resolve_label_space
from ams_ros.core.sources.pixel_formats import image_to_rgb
from ams_ros.nodes.common import topics as T
from ams_ros.nodes.common.conversions import stamp_to_sec
from ams_ros.nodes.common.qos import qos
from ams_ros.core.models.teachers import build_teacher, select_classes
from ams_ros.core.sources.synthetic import SyntheticWorld, world_from_spec


# wall seconds without a new label map from the slowest robot, once streaming, before the demo gives up
STALL_S = 90.0


class Observer:
    def __init__(self, args: argparse.Namespace, weights: str, out: Path,
                 robots: list[tuple[str, str]] | None = None) -> None:
        """``robots``: (device id, source) of each robot watched; default the one robot of ``args``."""
        self.args = args
        self.out = out
        robots = robots or [(args.device_id, args.source)]
        rclpy.init()
        self.node = rclpy.create_node("ams_demo_observer")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        selected = parse_class_list(args.selected_classes)
        self.space = resolve_label_space(args.label_space, selected)
        self.num_classes = len(self.space.class_names)
        # one torch thread: the edge and the server share these cores, and torch's spinning workers
        # slow everyone down once there are more threads than cores (docs/results.md)
        set_torch_threads(1)
        self.frozen = load_student(args.student, num_classes=self.num_classes, weights=weights).eval()
        self.size = (args.width, args.height)
        self._taken = 0
        self.robots: dict[str, RobotWatch] = {}
        for i, (dev, source) in enumerate(robots):
            video = None if args.no_video or i > 0 else _VideoWriter(out / "overlay.mp4", fps=args.fps)
            self.robots[dev] = RobotWatch(self, dev, source, _reference(args, source, self.space, selected), video)
        self._snapshot_clients = [self.node.create_client(GetModelSnapshot, f"/{dev}/{T.SNAPSHOT_SERVICE}")
                                  for dev in self.robots]

    @property
    def latest_stream_t(self) -> float:
        """The stream time every robot has reached (the slowest robot's latest label map)."""
        return min(r.latest_stream_t for r in self.robots.values())

    # ------------------------------------------------------------------ scoring
    def _score_pending(self, budget_s: float) -> None:
        """Score waiting label maps, the robots in turn, one map each, until ``budget_s``."""
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            waiting = [r for r in self.robots.values() if r._pending]
            if not waiting:
                return
            for r in waiting:
                r.score_one()

    # ------------------------------------------------------------------ run
    def wait_for_service(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.service_is_ready() for c in self._snapshot_clients):
                return True
            self.executor.spin_once(timeout_sec=0.1)
        return False

    def run(self, until_stream_t: float, processes: list, rss=None,
            on_tick: Callable[[float], None] | None = None) -> None:
        """Observe until ``until_stream_t`` of stream time; ``rss`` (an :class:`RssLog`) is
        sampled on the way (the soak benchmark); ``on_tick(stream_t)`` runs on every pass (a fault
        benchmark's disturbance, which may replace what is in ``processes``)."""
        last_print = 0.0
        t0 = time.monotonic()
        progress_t, progress_at = 0.0, t0  # the slowest robot's stream time, and when it last moved
        while self.latest_stream_t < until_stream_t:
            self._drain()
            if rss is not None:
                rss.maybe_sample(self.latest_stream_t)
            self._score_pending(budget_s=0.05)
            if on_tick is not None:
                on_tick(self.latest_stream_t)
            dead = [p.name for p in processes if not p.alive()]
            if dead:
                raise RuntimeError(f"process(es) {', '.join(dead)} exited early; see their logs in {self.out}")
            if time.monotonic() - last_print > 10.0:
                last_print = time.monotonic()
                self.print_progress(until_stream_t, time.monotonic() - t0)
            if self.latest_stream_t == 0.0 and time.monotonic() - t0 > 120:
                silent = [d for d, r in self.robots.items() if r.latest_stream_t == 0.0]
                raise RuntimeError(f"no label maps from {', '.join(silent)} after 120 s; see logs in {self.out}")
            if self.latest_stream_t > progress_t:
                progress_t, progress_at = self.latest_stream_t, time.monotonic()
            elif progress_t > 0.0 and time.monotonic() - progress_at > STALL_S:
                stalled = [f"{d} (at {r.latest_stream_t:.1f} s)" for d, r in self.robots.items()
                           if r.latest_stream_t <= progress_t]
                raise RuntimeError(f"no new label map from {', '.join(stalled)} for {STALL_S:g} s of wall time; "
                                   f"the demo stops instead of waiting for ever: see the logs in {self.out}")
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # drain what is in flight
            self.executor.spin_once(timeout_sec=0.02)
        self._score_pending(budget_s=10.0)

    def _drain(self, most: int = 200) -> None:
        """Wait up to 20 ms for a message, then take every one already waiting, before the next
        bit of scoring. One message per scoring slice fell ~10 s behind the robot on 2 busy cores,
        and the oldest label maps were lost from the subscription's queue."""
        self.executor.spin_once(timeout_sec=0.02)
        for _ in range(most):
            before = self._taken
            self.executor.spin_once(timeout_sec=0.0)
            if self._taken == before:
                return

    def print_progress(self, total: float, wall: float) -> None:
        pct = 100.0 * min(1.0, self.latest_stream_t / total)
        many = len(self.robots) > 1
        for dev, r in self.robots.items():
            recent = [s for s in r.scores if s["t"] > r.latest_stream_t - 10.0]
            st = r.edge_status
            ms = f"mIoU streamed {np.nanmean([s['streamed'] for s in recent]):.3f} frozen {np.nanmean([s['frozen'] for s in recent]):.3f}" if recent else "mIoU -"
            v = f"model v{st.model_version} ({st.inference_backend}), {st.inference_rate:.1f} fps, {st.inference_latency_ms:.0f} ms" if st else "edge starting"
            who = f" {dev}:" if many else ""
            print(f"[demo] {pct:5.1f}%{who}  t={r.latest_stream_t:6.1f}/{total:g} s  {v}  {ms}  "
                  f"up {sum(b for _, b in r.uplink) / 1024:.0f} KiB  down {sum(b for _, b in r.downlink) / 1024:.0f} KiB  "
                  f"(wall {wall:.0f} s)", flush=True)

    def close(self) -> None:
        for r in self.robots.values():
            if r._video is not None:
                r._video.close()
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        rclpy.try_shutdown()


class RobotWatch:
    """What the observer measures of one robot: its topics under ``/<device_id>``."""

    def __init__(self, observer: Observer, device_id: str, source: str, reference: _Reference,
                 video: _VideoWriter | None) -> None:
        self.observer = observer
        self.device_id = device_id
        self.source = source
        self.args = observer.args
        self.reference = reference
        n = observer.node
        ns = f"/{device_id}"
        for msg_type, topic, callback, profile in (
            (Image, T.LABELS, self._on_labels, qos("reliable", 50)),
            (Image, T.OVERLAY, self._on_overlay, qos("reliable", 5)),
            (Image, T.IMAGE, self._on_image, qos("best_effort", 5)),
            (FrameBatch, T.FRAME_BATCH, self._on_batch, qos("reliable", 10)),
            (ModelUpdate, T.MODEL_UPDATE, self._on_update, qos("reliable", 10)),
            (SamplingCommand, T.SAMPLING_COMMAND, self._on_command, qos("reliable", 10)),
            (EdgeStatus, T.EDGE_STATUS, self._on_edge_status, qos("reliable", 10)),
            (ServerStatus, T.SERVER_STATUS, self._on_server_status, qos("reliable", 10)),
        ):
            if topic == T.OVERLAY and video is None:
                continue  # decoding overlays nobody records costs the shared CPU
            n.create_subscription(msg_type, f"{ns}/{topic}", self._counted(callback), profile)
        # measurements
        self.label_arrivals: list[float] = []
        self.label_stamps: list[float] = []
        self.scores: list[dict] = []        # per scored frame: t, streamed, frozen, version
        self.uplink: list[tuple[float, int]] = []
        self.downlink: list[tuple[float, int]] = []
        self.commands: list[tuple[float, float, float]] = []
        self.edge_status: EdgeStatus | None = None
        self.edge_gap_windows: list[float] = []  # the robot's longest inference gap, per status period
        self.edge_source_gap_windows: list[float] = []  # the same beyond the source's own stamps (issue #13)
        self.edge_swap_windows: list[bool] = []  # per status period: did the model version change in it
        self.image_stamps: list[float] = []
        self.edge_wait_max_ms = 0.0
        self.server_status: list[ServerStatus] = []
        self.server_status_at: list[float] = []  # when each arrived (monotonic): the base station's cadence
        self.latest_stream_t = 0.0
        self.version_at: list[tuple[float, int]] = []
        self._images: dict[float, np.ndarray] = {}
        self._image_order: deque[float] = deque()
        self._pending: deque[tuple[float, np.ndarray]] = deque(maxlen=20)
        self._label_count = 0
        self._video = video
        self.cm_streamed = ConfusionMatrix(observer.num_classes)
        self.cm_frozen = ConfusionMatrix(observer.num_classes)

    # ------------------------------------------------------------------ callbacks
    def _counted(self, callback):
        """``callback`` that also counts messages taken, so ``_drain`` knows when none is left."""
        def run(msg) -> None:
            self.observer._taken += 1
            callback(msg)
        return run

    def _on_labels(self, msg: Image) -> None:
        t = stamp_to_sec(msg.header.stamp)
        self.label_arrivals.append(time.monotonic())
        self.label_stamps.append(t)
        self.latest_stream_t = max(self.latest_stream_t, t)
        self._label_count += 1
        if self._label_count % max(1, self.args.eval_every) == 0:
            labels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width).copy()
            self._pending.append((t, labels))

    def _on_overlay(self, msg: Image) -> None:
        if self._video is not None:
            self._video.write(image_to_rgb(msg))

    def _on_image(self, msg: Image) -> None:
        t = stamp_to_sec(msg.header.stamp)
        self.image_stamps.append(t)  # the frames the source delivered: what missing maps are judged against
        if self.reference.needs_images:
            self._images[t] = image_to_rgb(msg)
            self._image_order.append(t)
            while len(self._image_order) > 50:
                self._images.pop(self._image_order.popleft(), None)

    def _on_batch(self, msg: FrameBatch) -> None:
        self.uplink.append((stamp_to_sec(msg.header.stamp), len(msg.data)))

    def _on_update(self, msg: ModelUpdate) -> None:
        self.downlink.append((stamp_to_sec(msg.header.stamp), len(msg.indices) + len(msg.values)))

    def _on_command(self, msg: SamplingCommand) -> None:
        self.commands.append((stamp_to_sec(msg.header.stamp), float(msg.sampling_rate), float(msg.update_period)))

    def _on_edge_status(self, msg: EdgeStatus) -> None:
        if self.edge_status is not None and msg.frames_segmented > 0:  # skip the start-up period
            self.edge_gap_windows.append(float(msg.inference_gap_max_ms))
            self.edge_source_gap_windows.append(float(msg.inference_gap_over_source_max_ms))
            self.edge_swap_windows.append(msg.model_version != self.edge_status.model_version)
            self.edge_wait_max_ms = max(self.edge_wait_max_ms, float(msg.inference_wait_max_ms))
        if self.edge_status is None or msg.model_version != self.edge_status.model_version:
            self.version_at.append((self.latest_stream_t, int(msg.model_version)))
        self.edge_status = msg

    def _on_server_status(self, msg: ServerStatus) -> None:
        self.server_status.append(msg)
        self.server_status_at.append(time.monotonic())

    def score_one(self) -> None:
        """Score the oldest waiting label map and the frozen student on the same frame."""
        obs = self.observer
        t, streamed = self._pending.popleft()
        ref = self.reference.labels(t, self._images.get(t))
        if ref is None:
            return
        rgb, gt = ref
        frozen = predict(obs.frozen, [rgb], size=obs.size)[0]
        if streamed.shape != gt.shape:
            return
        version = int(self.edge_status.model_version) if self.edge_status else 0
        s = miou(streamed, gt, obs.num_classes)
        f = miou(frozen, gt, obs.num_classes)
        self.scores.append({"t": t, "streamed": s, "frozen": f, "version": version})
        if t >= self.reference.score_from:
            self.cm_streamed.update(streamed, gt)
            self.cm_frozen.update(frozen, gt)


class _Reference:
    needs_images = False
    score_from = 0.0

    def labels(self, t: float, image: np.ndarray | None):
        raise NotImplementedError


class _SyntheticReference(_Reference):
    """Ground truth regenerated from the deterministic synthetic world at the frame's stamp."""

    def __init__(self, spec: str, size: tuple[int, int], duration: float) -> None:
        self.world: SyntheticWorld = world_from_spec(spec, width=size[0], height=size[1])
        shifts = [s.t for s in self.world.shifts]
        self.score_from = min(shifts) if shifts else 0.0

    def labels(self, t: float, image):
        return self.world.frame_at(t)


class _TeacherReference(_Reference):
    """Teacher labels of the frames seen on the image topic (real footage has no ground truth),
    in the student's classes, as the server's teacher labeler makes them."""

    needs_images = True

    def __init__(self, spec: str, selected: list[str]) -> None:
        self.teacher = select_classes(build_teacher(spec), selected)

    def labels(self, t: float, image):
        if image is None:
            return None
        return image, self.teacher.label([image])[0]


def _reference(args, source: str, space, selected) -> _Reference:
    if source.startswith("synthetic"):
        return _SyntheticReference(source, (args.width, args.height), args.duration)
    return _TeacherReference(args.teacher, selected)


class _VideoWriter:
    """Overlay frames to H.264 mp4 with PyAV (falls back to nothing if encoding fails)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = max(1, int(round(fps)))
        self._c = None
        self._s = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if self._c is None:
            self._c = av.open(str(self.path), "w")
            self._s = self._c.add_stream("libx264", rate=self.fps)
            self._s.width, self._s.height = w - w % 2, h - h % 2
            self._s.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self._s.height, : self._s.width]), format="rgb24")
        for pkt in self._s.encode(frame):
            self._c.mux(pkt)
        self.frames += 1

    def close(self) -> None:
        if self._c is not None:
            for pkt in self._s.encode():
                self._c.mux(pkt)
            self._c.close()
