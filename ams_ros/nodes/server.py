"""`server` executable: teacher_labeler + ams_trainer + asr_controller in one process.

Per robot (``device_ids``): frame batches come in on ``/<id>/ams/frame_batch``; updates go out
on ``/<id>/ams/model_update``, commands on ``/<id>/ams/sampling_command``, status on
``/<id>/ams/server_status``; ``/<id>/ams/get_model_snapshot`` serves full snapshots.
Labelling and training run on their own threads: one training phase at a time, devices in
turn, never an unbounded queue (a slow phase stretches the update period instead).
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import deque
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import FrameBatch, ModelUpdate, SamplingCommand, ServerStatus
from ams_msgs.srv import GetModelSnapshot
from ams_ros.core.frame_codec import FrameCodecError, decode_frames
from ams_ros.core.models.student import load_student
from ams_ros.core.models.teachers import build_teacher
from ams_ros.core.params import fingerprint
from ams_ros.core.server_session import DeviceSession, SessionConfig
from ams_ros.core.threads import set_torch_threads
from ams_ros.core.trainer import TrainerConfig
from ams_ros.core.update_codec import ENCODINGS
from ams_ros.nodes.common import (
    FRAME_BATCH,
    MODEL_UPDATE,
    SAMPLING_COMMAND,
    SERVER_STATUS,
    SNAPSHOT_SERVICE,
    declare,
    qos,
    sec_to_stamp,
    spin_nodes,
    stamp_to_sec,
    string_list,
)
from ams_ros.nodes.conversions import frame_batch_checksum, update_to_msg
from ams_ros.nodes.edge_model import resolve_label_space

LABELER_PARAMS = {
    "device_ids": (["robot1"], "Robots served by this base station"),
    "teacher": ("oracle", "Teacher spec: tflite:PATH | torchvision:NAME | checkpoint:PATH | oracle[:seed]"),
    "label_space": ("synthetic", "Label space of the teacher (synthetic | cityscapes | voc | camvid)"),
    "selected_classes": ([""], "Train only on these class names ([''] = all); other pixels are ignored"),
    "max_pending_batches": (4, "Per device: batches waiting for the teacher beyond this are dropped (counted)"),
    "batch_qos_depth": (10, "Frame batch QoS depth (reliable)"),
}
TRAINER_PARAMS = {
    "device_ids": (["robot1"], "Robots served by this base station"),
    "student": ("deeplabv3_mobilenet_v2", "Student model name; must match the robots'"),
    "student_weights": ("", "Initial student weights w0 (checkpoint path or tflite:PATH; empty = random init)"),
    "label_space": ("synthetic", "Label space of the teacher and student"),
    "selected_classes": ([""], "Class names the student predicts ([''] = all)"),
    "input_width": (512, "Training input width"),
    "input_height": (256, "Training input height"),
    "iterations": (20, "K: Adam iterations per training phase"),
    "batch_size": (8, "Mini-batch size"),
    "horizon_s": (240.0, "T_horizon: train on samples from the last this many seconds"),
    "update_period_s": (10.0, "T_update: requested seconds between updates"),
    "lr": (0.001, "Adam learning rate"),
    "gamma": (0.05, "Fraction of parameters trained and sent per update"),
    "strategy": ("gradient_guided", "Coordinate selection: gradient_guided | full | random | first_layers | last_layers | first_last | gauss_southwell_sgd"),
    "authors_variant": (False, "Authors' code variant: mask from a first full step, restart from w0 each phase"),
    "min_samples": (1, "New labelled samples needed before a phase runs"),
    "update_encoding": ("paper_gzip_fp16", "Encoding of sparse updates: " + " | ".join(ENCODINGS)
                        + " (residual_zlib_q6: about half the bytes, decodes within 10 ms on the edge)"),
    "snapshot_encoding": ("paper_gzip_fp16", "Encoding of full snapshots (a value encoding, not residual_*)"),
    "auth_key": ("", "Shared HMAC key to sign updates (empty = unsigned)"),
    "seed": (0, "Seed of coordinate selection and batch sampling"),
    "torch_threads": (0, "Torch intra-op threads for training (0 = torch default)"),
    "update_qos_depth": (10, "Model update QoS depth (reliable)"),
}
ASR_PARAMS = {
    "device_ids": (["robot1"], "Robots served by this base station"),
    "r_min": (0.1, "Minimum sampling rate (frames/s)"),
    "r_max": (1.0, "Maximum sampling rate (frames/s)"),
    "r_init": (1.0, "Initial sampling rate (frames/s)"),
    "phi_form": ("loss", "phi-score: loss (paper Eq. 1) | iou (authors' code)"),
    "eta_r": (2.0, "Step size of Eq. 1"),
    "phi_target": (0.1, "Target phi-score of Eq. 1"),
    "period_s": (10.0, "Seconds of stream time between rate updates (delta t)"),
    "adaptive_update_period": (True, "Lengthen T_update on static scenes (paper appendix D)"),
    "atp_low": (0.25, "Mean sampling rate below which the update period grows"),
    "atp_high": (0.35, "Mean sampling rate above which it returns to T_update"),
    "atp_step_s": (2.0, "Seconds added to the update period per update while static"),
    "atp_max_factor": (6.0, "Largest update period as a multiple of T_update"),
}


class ServerState:
    """What the three server nodes share: sessions, pending batches, counters, wake-ups."""

    def __init__(self, device_ids: list[str]) -> None:
        self.device_ids = device_ids
        self.sessions: dict[str, DeviceSession] = {}
        self.pending: dict[str, deque] = {d: deque() for d in device_ids}
        self.received = {d: 0 for d in device_ids}
        self.dropped = {d: 0 for d in device_ids}
        self.last_error = {d: "" for d in device_ids}
        self.cv = threading.Condition()
        self.stopping = False


class TeacherLabeler(Node):
    """Decodes frame batches and labels them with the teacher; hands samples to the sessions."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("teacher_labeler", **kwargs)
        self.p = declare(self, LABELER_PARAMS)
        self.state = state
        self.teacher = build_teacher(self.p["teacher"])
        self.space = resolve_label_space(self.p["label_space"], string_list(self.p["selected_classes"]))
        self._lut = None
        selected = string_list(self.p["selected_classes"])
        if selected:
            _, self._lut = self.teacher.label_space.restrict(selected)
        group = MutuallyExclusiveCallbackGroup()
        for dev in state.device_ids:
            self.create_subscription(FrameBatch, f"/{dev}/{FRAME_BATCH}", self._make_cb(dev),
                                     qos("reliable", int(self.p["batch_qos_depth"])), callback_group=group)
        self._unchecked_warned: set[str] = set()
        self._thread = threading.Thread(target=self._work, name="teacher_labeler", daemon=True)
        self._thread.start()
        self.get_logger().info(f"teacher '{self.p['teacher']}' labelling batches of {', '.join(state.device_ids)}")

    def _make_cb(self, dev: str):
        def cb(msg: FrameBatch) -> None:
            st = self.state
            with st.cv:
                st.received[dev] += 1
                q = st.pending[dev]
                q.append(msg)
                while len(q) > int(self.p["max_pending_batches"]):
                    old = q.popleft()
                    st.dropped[dev] += 1
                    self.get_logger().warning(f"{dev}: teacher busy, dropped batch {old.batch_seq}")
                st.cv.notify_all()
        return cb

    def _next(self):
        st = self.state
        with st.cv:
            while not st.stopping and not any(st.pending.values()):
                st.cv.wait(timeout=0.5)
            if st.stopping:
                return None, None
            dev = max((d for d in st.device_ids if st.pending[d]), key=lambda d: len(st.pending[d]))
            return dev, st.pending[dev].popleft()

    def _check_integrity(self, dev: str, msg: FrameBatch) -> None:
        """Raises FrameCodecError on a checksum mismatch; warns once per device when there is none."""
        if not msg.checksum:
            if dev not in self._unchecked_warned:
                self._unchecked_warned.add(dev)
                self.get_logger().warning(f"{dev}: frame batches carry no checksum; corruption in transit goes unnoticed")
            return
        expected = frame_batch_checksum(msg)
        if msg.checksum != expected:
            raise FrameCodecError("checksum mismatch: the batch was corrupted in transit (frames or stamps)")

    def _work(self) -> None:
        while True:
            dev, msg = self._next()
            if dev is None:
                return
            try:
                self._label_batch(dev, msg)
            except Exception as exc:  # a bad batch must never stop the server
                with self.state.cv:
                    self.state.dropped[dev] += 1
                    self.state.last_error[dev] = f"batch {msg.batch_seq}: {exc}"
                self.get_logger().error(f"{dev}: rejected batch {msg.batch_seq}: {exc}")

    def _label_batch(self, dev: str, msg: FrameBatch) -> None:
        self._check_integrity(dev, msg)
        stamps = [stamp_to_sec(s) for s in msg.frame_stamps]
        frames = decode_frames(bytes(msg.data), msg.codec, int(msg.width), int(msg.height))
        if len(frames) != len(stamps):
            raise ValueError(f"batch holds {len(frames)} frames but {len(stamps)} timestamps")
        if getattr(self.teacher, "uses_stamps", False):  # the synthetic oracle renders by stream time
            labels = self.teacher.label(frames, stamps=stamps)
        else:
            labels = self.teacher.label(frames)
        session = self.state.sessions[dev]
        for t, frame, label in zip(stamps, frames, labels):
            if self._lut is not None:
                label = self._lut[label]
            session.add_labeled(t, frame, label)
        with self.state.cv:
            self.state.cv.notify_all()
        self.get_logger().info(f"{dev}: labelled batch {msg.batch_seq} ({len(frames)} frames)")


class AMSTrainerNode(Node):
    """Runs training phases for the devices in turn; publishes updates and serves snapshots."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("ams_trainer", **kwargs)
        p = self.p = declare(self, TRAINER_PARAMS)
        set_torch_threads(int(p["torch_threads"]))
        self.state = state
        self.space = resolve_label_space(p["label_space"], string_list(p["selected_classes"]))
        base = load_student(p["student"], num_classes=len(self.space.class_names), weights=p["student_weights"] or None)
        self.fingerprint = fingerprint(base)
        tcfg = TrainerConfig(
            iterations=int(p["iterations"]), batch_size=int(p["batch_size"]), horizon_s=float(p["horizon_s"]),
            update_period_s=float(p["update_period_s"]), lr=float(p["lr"]), gamma=float(p["gamma"]),
            strategy=p["strategy"], authors_variant=bool(p["authors_variant"]),
            input_size=(int(p["input_width"]), int(p["input_height"])), seed=int(p["seed"]),
        )
        self.pubs, self.status_pubs = {}, {}
        group = MutuallyExclusiveCallbackGroup()
        for dev in state.device_ids:
            cfg = SessionConfig(trainer=tcfg, update_encoding=p["update_encoding"],
                                snapshot_encoding=p["snapshot_encoding"],
                                auth_key=p["auth_key"].encode() or None, min_samples=int(p["min_samples"]))
            state.sessions[dev] = DeviceSession(dev, copy.deepcopy(base), cfg)
            self.pubs[dev] = self.create_publisher(ModelUpdate, f"/{dev}/{MODEL_UPDATE}", qos("reliable", int(p["update_qos_depth"])))
            self.status_pubs[dev] = self.create_publisher(ServerStatus, f"/{dev}/{SERVER_STATUS}", qos("reliable", 10))
            self.create_service(GetModelSnapshot, f"/{dev}/{SNAPSHOT_SERVICE}", self._make_snapshot_cb(dev),
                                callback_group=group)
        self._phase_started: dict[str, float] = {}
        self._effective: dict[str, float] = {d: tcfg.update_period_s for d in state.device_ids}
        self._thread = threading.Thread(target=self._work, name="ams_trainer", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"training {p['student']} for {', '.join(state.device_ids)}: K={tcfg.iterations}, batch {tcfg.batch_size}, "
            f"horizon {tcfg.horizon_s:g} s, gamma {tcfg.gamma:g} ({tcfg.strategy}), encoding {p['update_encoding']}"
        )

    def reconfigure_period(self, dev: str, period_s: float) -> None:
        """Called by the ASR controller when the adaptive training period changes T_update."""
        self.state.sessions[dev].trainer.config.update_period_s = float(period_s)

    def _make_snapshot_cb(self, dev: str):
        def cb(req: GetModelSnapshot.Request, resp: GetModelSnapshot.Response):
            if req.model_fingerprint and req.model_fingerprint != self.fingerprint:
                resp.success = False
                resp.message = (f"architecture mismatch: robot runs {req.model_fingerprint[:12]}, server trains "
                                f"{self.fingerprint[:12]} ({self.p['student']}); use the same student on both")
                return resp
            session = self.state.sessions[dev]
            update = session.snapshot(req.encoding or None)
            resp.success = True
            resp.message = f"snapshot v{update.new_version}"
            resp.snapshot = update_to_msg(update, dev, stamp=self.get_clock().now().to_msg())
            self.get_logger().info(f"{dev}: served full snapshot v{update.new_version} (robot had v{req.have_version})")
            return resp
        return cb

    def _next_device(self) -> str | None:
        st = self.state
        with st.cv:
            while not st.stopping:
                ready = [d for d in st.device_ids if st.sessions[d].ready()]
                if ready:  # devices in turn: the one that waited longest goes first
                    return min(ready, key=lambda d: self._phase_started.get(d, float("-inf")))
                st.cv.wait(timeout=0.5)
        return None

    def _work(self) -> None:
        import time

        while True:
            dev = self._next_device()
            if dev is None:
                return
            session = self.state.sessions[dev]
            started = time.monotonic()
            prev = self._phase_started.get(dev)
            self._phase_started[dev] = started
            try:
                outcome = session.run_phase()
            except Exception as exc:
                self.state.last_error[dev] = f"training failed: {exc}"
                self.get_logger().error(f"{dev}: training phase failed: {exc}")
                continue
            if outcome is None:
                continue
            requested = float(session.trainer.config.update_period_s)
            stretched = outcome.wall_s > requested
            self._effective[dev] = max(requested, outcome.wall_s, (started - prev) if prev else 0.0)
            if stretched:
                self.get_logger().warning(
                    f"{dev}: phase took {outcome.wall_s:.1f} s > T_update {requested:.1f} s: stretching the period "
                    f"(batches that arrive meanwhile are merged into the next phase)"
                )
            r = outcome.result
            msg = update_to_msg(outcome.update, dev, stamp=sec_to_stamp(r.now), phase=r.phase, train_seconds=outcome.wall_s)
            if not rclpy.ok():
                return
            self.pubs[dev].publish(msg)
            self._publish_status(dev, session, outcome, requested, stretched)
            self.get_logger().info(
                f"{dev}: update v{outcome.update.base_version}->v{outcome.update.new_version}: phase {r.phase}, "
                f"loss {r.loss:.3f}, {r.num_samples} samples, {len(r.indices)} params, "
                f"{len(msg.indices) + len(msg.values)} bytes, {outcome.wall_s:.1f} s"
            )

    def _publish_status(self, dev: str, session: DeviceSession, outcome, requested: float, stretched: bool) -> None:
        st = self.state
        r = outcome.result
        msg = ServerStatus()
        msg.header.stamp = sec_to_stamp(r.now)
        msg.device_id = dev
        msg.phase = int(r.phase)
        msg.model_version = int(session.version)
        msg.buffer_frames = int(len(session.trainer.buffer.window(r.now, session.trainer.config.horizon_s)))
        msg.horizon = float(session.trainer.config.horizon_s)
        msg.train_seconds = float(outcome.wall_s)
        msg.train_loss = float(r.loss)
        msg.changed_fraction = float(r.changed_fraction)
        msg.update_period_requested = requested
        msg.update_period_effective = float(self._effective[dev])
        msg.period_stretched = bool(stretched)
        with st.cv:
            msg.batches_received = st.received[dev]
            msg.batches_dropped = st.dropped[dev]
            msg.last_error = st.last_error[dev]
        self.status_pubs[dev].publish(msg)



class ASRController(Node):
    """Turns each device's phi-score into sampling commands (Eq. 1) every ``period_s``."""

    def __init__(self, state: ServerState, trainer: AMSTrainerNode, **kwargs: Any) -> None:
        super().__init__("asr_controller", **kwargs)
        p = self.p = declare(self, ASR_PARAMS)
        self.state = state
        self.trainer = trainer
        for session in state.sessions.values():
            c = session.config
            c.r_min, c.r_max, c.r_init = float(p["r_min"]), float(p["r_max"]), float(p["r_init"])
            c.phi_form, c.eta_r, c.phi_target = p["phi_form"], float(p["eta_r"]), float(p["phi_target"])
            c.rate_period_s, c.adaptive_update_period = float(p["period_s"]), bool(p["adaptive_update_period"])
            c.atp_low, c.atp_high = float(p["atp_low"]), float(p["atp_high"])
            c.atp_step_s, c.atp_max_factor = float(p["atp_step_s"]), float(p["atp_max_factor"])
            session.reset_rate_control()
        self.pubs = {d: self.create_publisher(SamplingCommand, f"/{d}/{SAMPLING_COMMAND}", qos("reliable", 10))
                     for d in state.device_ids}
        self.create_timer(1.0, self._tick, callback_group=MutuallyExclusiveCallbackGroup())

    def _tick(self) -> None:
        for dev, session in self.state.sessions.items():
            if session.latest_t is None:
                continue
            cmd = session.sampling_command(session.latest_t)
            if cmd is None:
                continue
            rate, period, phi = cmd
            self.trainer.reconfigure_period(dev, period)
            msg = SamplingCommand()
            msg.header.stamp = sec_to_stamp(session.latest_t)
            msg.device_id = dev
            msg.sampling_rate = float(rate)
            msg.update_period = float(period)
            msg.phi = float(phi)
            self.pubs[dev].publish(msg)
            self.get_logger().info(f"{dev}: phi {phi:.3f} -> sampling {rate:.2f} frames/s, T_update {period:.1f} s")


def _device_ids() -> list[str]:
    probe = Node("ams_trainer")
    ids = string_list(declare(probe, {"device_ids": TRAINER_PARAMS["device_ids"]})["device_ids"])
    probe.destroy_node()
    if not ids:
        raise ValueError("parameter device_ids is empty: list the robots this server serves")
    return ids


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        state = ServerState(_device_ids())
        trainer = AMSTrainerNode(state)
        labeler = TeacherLabeler(state)
        asr = ASRController(state, trainer)
    except Exception as exc:
        print(f"[server] start-up failed: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(1)

    def stop() -> None:
        with state.cv:
            state.stopping = True
            state.cv.notify_all()

    trainer.close = stop  # type: ignore[attr-defined]
    spin_nodes([labeler, trainer, asr], threads=4)


if __name__ == "__main__":
    main()
