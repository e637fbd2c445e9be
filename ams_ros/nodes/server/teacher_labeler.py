"""teacher_labeler: verifies and decodes the robots' frame batches, labels them with the teacher.

Batches wait in a bounded queue per robot (the oldest is dropped, and counted, beyond
``max_pending_batches``); a worker thread labels the robot with the longest queue first and
hands the labelled frames to its session. A bad batch is rejected with its reason in
ServerStatus and never stops the server. With ``robot_public_keys`` set (issue #13) a batch must
carry a valid Ed25519 signature of its robot's key: an unsigned or forged one is dropped (counted,
logged) on arrival, before it can push a genuine batch out of the queue. ``device_teachers``
(issue #16) gives a robot its own teacher: robots playing different synthetic worlds each need
their world's oracle (``make demo ARGS="--robots N"``).

Where the teachers run and label is the backend's business (:mod:`~ams_ros.core.fleet.backend`:
in this process, or with ``backend: ray`` on each robot's pool actor, built there from the same
specs); this node keeps the subscriptions, the checks on arrival and the queues, with one worker
thread per backend lane (a robot's batches still go one at a time, in order).
"""

from __future__ import annotations

import time
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import FrameBatch
from ams_ros.core import sources as _sources  # noqa: F401 (registers the synthetic world's oracle teacher)
from ams_ros.core.common.devices import DeviceConfig, resolve_device
from ams_ros.core.fleet.backend import LocalBackend
from ams_ros.core.fleet.base_station import MAX_PENDING_BATCHES
from ams_ros.core.fleet.worker import TeacherSpec
from ams_ros.core.security.signing import SeenSignatures, SignatureError
from ams_ros.core.wire.frame_codec import BatchLimits, FrameCodecError
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import frame_batch_checksum, frame_batch_signing_input, stamp_to_sec
from ams_ros.nodes.common.parameters import NodeParameters, Param, from_field, string_list
from ams_ros.nodes.common.qos import qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.common.shared_params import (DEVICE_IDS, LABEL_SPACE, ROBOT_PUBLIC_KEYS, SELECTED_CLASSES, device_ids,
                                                robot_public_keys)
from ams_ros.nodes.common.spinning import worker_thread
from ams_ros.nodes.server.state import ServerState

PARAMS = (
    DEVICE_IDS,
    Param("teacher", "oracle", "Teacher spec: tflite:PATH | torchvision:NAME | checkpoint:PATH | espnetv2:PATH | oracle[:seed] "
                               "(the synthetic world's)"),
    LABEL_SPACE, SELECTED_CLASSES,
    from_field(DeviceConfig, "device", description="Torch device of the teacher: auto (first CUDA device, else the "
               "CPU) | cpu | cuda | cuda:N; CUDA where torch sees none is a start-up error (TFLite and oracle "
               "teachers run on the CPU)"),
    Param("device_teachers", [""], "Per-robot teachers as DEVICE_ID=SPEC entries overriding `teacher` for that robot "
                                   "(e.g. robot2=oracle:1 for a robot playing synthetic:1; empty = `teacher` for all)"),
    Param("teacher_max_batch", 0, "Frames per teacher forward pass (0 = a robot's whole batch in one call)"),
    from_field(TeacherSpec, "min_confidence", name="teacher_min_confidence"),
    Param("max_pending_batches", MAX_PENDING_BATCHES, "Per device: batches waiting for the teacher beyond this are dropped (counted)",
          dynamic=True),
    Param("batch_qos_depth", 10, "Frame batch QoS depth (reliable)"),
    from_field(BatchLimits, "max_batch_frames"),
    from_field(BatchLimits, "max_frame_pixels"),
    ROBOT_PUBLIC_KEYS,
    Param("fault_teacher_one_class", -1, "Test-only (fault benchmarks, issue #29): the teacher labels every pixel this "
                                         "class, as a teacher gone wrong would (-1 = off; the local backend only)",
          dynamic=True),
)


def parse_device_teachers(entries: list[str], device_ids: list[str]) -> dict[str, str]:
    """``["robot2=oracle:1", ...]`` -> ``{"robot2": "oracle:1"}``, each robot one this server serves."""
    out: dict[str, str] = {}
    for entry in entries:
        dev, sep, spec = entry.partition("=")
        dev, spec = dev.strip(), spec.strip()
        if not sep or not dev or not spec:
            raise ValueError(f"device_teachers entry '{entry}' is not DEVICE_ID=SPEC (e.g. robot2=oracle:1)")
        if dev not in device_ids:
            raise ValueError(f"device_teachers names '{dev}', which this server does not serve (device_ids: "
                             f"{device_ids}): add it to device_ids or drop the entry")
        if dev in out:
            raise ValueError(f"device_teachers names '{dev}' twice ({out[dev]}, {spec}): keep one")
        out[dev] = spec
    return out


class TeacherLabeler(Node):
    """Checks frame batches on arrival, queues them; its threads have them labelled by the backend."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("teacher_labeler", **kwargs)
        self.state = state
        self.p = NodeParameters(self, PARAMS, on_change=self._check_change)
        state.bind(device_ids(self.p), self.get_name())
        backend = state.backend
        if backend is None:
            raise RuntimeError("teacher_labeler needs the robots' sessions: build the ams_trainer of this process first")
        self.limits = BatchLimits(int(self.p["max_batch_frames"]), int(self.p["max_frame_pixels"]))
        self._reject = RejectLog(self, counter=state.rejections)
        selected = string_list(self.p["selected_classes"])
        specs = {dev: self.p["teacher"] for dev in state.robots}
        specs.update(parse_device_teachers(string_list(self.p["device_teachers"]), state.robots))
        # DeviceError naming what torch sees (a pool's actors resolve it: this process may have no GPU)
        device = resolve_device(self.p["device"]) if isinstance(backend, LocalBackend) else None
        where = backend.set_teachers(TeacherSpec(
            specs=specs, selected_classes=tuple(selected), label_space=self.p["label_space"], device=self.p["device"],
            max_batch=int(self.p["teacher_max_batch"]),
            min_confidence=float(self.p["teacher_min_confidence"]), limits=self.limits), device)
        backend.set_teacher_fault(int(self.p["fault_teacher_one_class"]))
        self.robot_keys = robot_public_keys(self.p)
        self._seen_batches = SeenSignatures()  # a replayed signed batch is refused (issue #13)
        group = MutuallyExclusiveCallbackGroup()
        for dev in state.robots:
            self.create_subscription(FrameBatch, topics.for_device(dev, topics.FRAME_BATCH),
                                     self._reject.guard(f"{dev} frame batch", self._make_cb(dev)),
                                     qos("reliable", int(self.p["batch_qos_depth"])), callback_group=group)
        self._unchecked_warned: set[str] = set()
        self._threads = [worker_thread(self._work, f"teacher_labeler{i or ''}", self.get_logger())
                         for i in range(backend.lanes)]
        self._thread = self._threads[0]
        for t in self._threads:
            t.start()
        self.get_logger().info(f"teacher on {where} labelling batches of "
                               f"{', '.join(f'{d} ({specs[d]})' for d in state.robots)}")

    def _check_change(self, changes: dict[str, Any]) -> None:
        depth = changes.get("max_pending_batches")
        if depth is not None and depth < 1:
            raise ValueError(f"max_pending_batches must be >= 1, got {depth}")
        if "fault_teacher_one_class" in changes:
            self.state.backend.set_teacher_fault(int(changes["fault_teacher_one_class"]))
            self.get_logger().warning(f"fault injection: fault_teacher_one_class {changes['fault_teacher_one_class']}")

    def _make_cb(self, dev: str):
        def cb(msg: FrameBatch) -> None:
            st = self.state
            st.count_received(dev)
            try:  # before queueing or decoding anything: what the batch declares must be within the limits
                self.limits.check(len(msg.frame_stamps), int(msg.width), int(msg.height))
            except FrameCodecError as exc:
                st.count_error(dev, f"batch {msg.batch_seq}: {exc}", dropped=True)
                self._reject(f"batch {msg.batch_seq}", f"{exc} (from {dev})")
                return
            if self.robot_keys:
                try:
                    self.robot_keys[dev].verify(frame_batch_signing_input(msg, dev), bytes(msg.signature),
                                                msg.signer_key_id, f"batch {msg.batch_seq} of {dev}")
                    self._seen_batches.check(dev, bytes(msg.signature), f"batch {msg.batch_seq} of {dev}")
                except SignatureError as exc:
                    st.count_error(dev, f"batch {msg.batch_seq}: {exc}", dropped=True)
                    self._reject(f"batch {msg.batch_seq}", str(exc))
                    return
            st.note_arrival(dev, float(msg.update_period))  # (issue #31) for staggering the robots' batches
            for old in st.enqueue(dev, msg, int(self.p["max_pending_batches"])):
                self.get_logger().warning(f"{dev}: teacher busy, dropped batch {old.batch_seq}")
        return cb

    def _check_integrity(self, dev: str, msg: FrameBatch) -> None:
        """Raises FrameCodecError on a checksum mismatch; warns once per device when there is none."""
        if not msg.checksum:
            if dev not in self._unchecked_warned:
                self._unchecked_warned.add(dev)
                self.get_logger().warning(f"{dev}: frame batches carry no checksum; corruption in transit goes unnoticed")
            return
        if msg.checksum != frame_batch_checksum(msg):
            raise FrameCodecError("checksum mismatch: the batch was corrupted in transit (frames or stamps)")

    def _work(self) -> None:
        while True:
            dev, msg = self.state.next_batch()
            if dev is None:
                return
            t0 = time.monotonic()
            try:
                self._check_integrity(dev, msg)
                n = self.state.backend.label(dev, bytes(msg.data), msg.codec, int(msg.width), int(msg.height),
                                             [stamp_to_sec(s) for s in msg.frame_stamps])
                if n < len(msg.frame_stamps):  # (issue #29) the label checks kept frames from training
                    self.get_logger().warning(f"{dev}: labelled batch {msg.batch_seq}, {n} of "
                                              f"{len(msg.frame_stamps)} frames kept: "
                                              f"{self.state.sessions[dev].last_refusal}")
                else:
                    self.get_logger().info(f"{dev}: labelled batch {msg.batch_seq} ({n} frames)")
            except Exception as exc:  # a bad batch must never stop the server
                self.state.count_error(dev, f"batch {msg.batch_seq}: {exc}", dropped=True)
                reason = str(exc) if isinstance(exc, FrameCodecError) else f"{type(exc).__name__}: {exc}"
                self._reject(f"batch {msg.batch_seq}", f"{reason} (from {dev})")
            finally:  # issue 16: teacher time is this robot's share of the GPU
                self.state.labelled(dev, t0)

    def destroy_node(self) -> None:
        """Stop and join the labelling threads (a batch in hand is finished first)."""
        self.state.stop()
        for t in getattr(self, "_threads", []):
            t.join(timeout=60.0)
        super().destroy_node()
