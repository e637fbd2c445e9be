"""ams_trainer: trains each robot's student in phases (Algorithms 1 and 2), publishes updates.

Builds one :class:`~ams_ros.core.server.session.RobotSession` per robot from its parameters.
A worker thread runs one phase at a time, the robot chosen by the GPU scheduler
(``scheduler_policy``, core/scheduling.py: in turn by default, or by predicted mIoU gain per
GPU-second; a bounded wait for every robot either way), never an unbounded queue: a slow
phase stretches the update period instead. Snapshots are
served while a phase runs. Training settings (lr, gamma, K, batch size, horizon, strategy,
encodings) can change at run time and apply from the next phase.

With ``state_dir`` set, each robot's session is resumed from its file at start-up and written
(atomically) after every phase and at shutdown (:mod:`ams_ros.core.server.session_store`), so a
restarted server continues each robot's chain. The snapshot service answers a robot a few
versions behind on its chain with one catch-up update, and a robot ahead of the chain by the
rule of :meth:`~ams_ros.core.server.session.RobotSession.resync` (with a warning).

Signatures (issue #13, :mod:`ams_ros.core.security.signing`): with ``signing_key_file`` every update,
catch-up and snapshot is signed for its robot with the base station's Ed25519 key; with
``robot_public_keys`` a snapshot request must be signed by its robot's key, fresh (within
``snapshot_request_window_s``) and carry an unused nonce, else it is refused with the reason.

``backend`` (issue #12): ``local`` keeps every session in this process; ``ray`` keeps the ROS side
here and runs the sessions (and the teacher) in a pool of Ray actors, one trainer thread per actor,
so phases of robots on different actors (GPUs) run at once; Ray is imported only then. Which robot
trains next and the phase itself are the ROS-free :class:`~ams_ros.core.fleet.phase_loop.PhaseLoop`
over a :class:`~ams_ros.core.fleet.backend.Backend`: this node translates parameters, publishes
updates and statuses and serves snapshots, whatever the backend.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import ModelUpdate, ServerStatus
from ams_msgs.srv import GetModelSnapshot, RollbackModel
from ams_ros.core.common.devices import DeviceConfig, configure_cudnn, resolve_device
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.core.fleet.backend import LocalBackend, PoolBackend
from ams_ros.core.fleet.phase_loop import PhaseLoop, Shipped
from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.pool_config import RAY, PoolConfig
from ams_ros.core.fleet.scheduling import GpuScheduler, SchedulerConfig
from ams_ros.core.fleet.transports import connect_ray, ray_actor_factory
from ams_ros.core.fleet.worker import WorkerSpec
from ams_ros.core.models.params import fingerprint
from ams_ros.core.security.signing import DEFAULT_REQUEST_WINDOW_S, ReplayGuard, SignatureError, SigningKey
from ams_ros.core.server.downlink_budget import DownlinkBudgetConfig
from ams_ros.core.server.label_checks import LabelCheckConfig
from ams_ros.core.server.quality_gate import GateConfig
from ams_ros.core.server.session import START, SessionConfig
from ams_ros.core.server.session_store import SessionStore
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import sec_to_stamp, snapshot_request_input, update_to_msg
from ams_ros.nodes.common.parameters import NodeParameters, Param, from_field
from ams_ros.nodes.common.qos import qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.common.shared_params import (DEVICE_IDS, ROBOT_PUBLIC_KEYS, STUDENT_PARAMS, device_ids,
                                                robot_public_keys, student_spec)
from ams_ros.nodes.common.spinning import worker_thread
from ams_ros.nodes.server.state import ServerState

# trainer settings that may change between phases, and the session's
TRAINER_DYNAMIC = ("iterations", "batch_size", "horizon_s", "update_period_s", "lr", "gamma", "strategy",
                   "train_precision")
SESSION_DYNAMIC = ("update_encoding", "snapshot_encoding", "min_samples")

PARAMS = (
    DEVICE_IDS, *STUDENT_PARAMS,
    from_field(TrainerConfig, "input_size", name="input_width", index=0, description="Training input width"),
    from_field(TrainerConfig, "input_size", name="input_height", index=1, description="Training input height"),
    *(from_field(TrainerConfig, name, dynamic=True) for name in TRAINER_DYNAMIC),
    from_field(TrainerConfig, "authors_variant"),
    from_field(DeviceConfig, "device", description="Torch device the students train on: auto (first CUDA device, "
               "else the CPU) | cpu | cuda | cuda:N; CUDA where torch sees none is a start-up error"),
    from_field(DeviceConfig, "cudnn_benchmark"),
    from_field(SessionConfig, "min_samples", dynamic=True),
    from_field(SessionConfig, "update_encoding", dynamic=True),
    from_field(SessionConfig, "snapshot_encoding", dynamic=True),
    Param("signing_key_file", "", "Base station's private key file (PEM, mode 0600, from `ams-keys generate`): "
                                  "signs every update, catch-up and snapshot (empty = unsigned)"),
    ROBOT_PUBLIC_KEYS,
    Param("snapshot_request_window_s", DEFAULT_REQUEST_WINDOW_S, "With robot_public_keys: snapshot requests "
          "stamped further than this from the server's clock are refused (replay protection)"),
    from_field(TrainerConfig, "seed"),
    Param("torch_threads", 0, "Torch intra-op threads for training (0 = torch default)"),
    Param("update_qos_depth", 10, "Model update QoS depth (reliable)"),
    Param("state_dir", "", "Folder where each robot's session is saved after every phase and resumed from at "
                           "start-up (empty = no persistence: a restart starts new chains)"),
    from_field(SessionConfig, "catch_up_versions"),
    # issue 29: the gate on each phase
    from_field(GateConfig, "gate_frames"),
    from_field(GateConfig, "gate_margin"),
    from_field(GateConfig, "gate_scene_drop"),
    from_field(GateConfig, "drift_phases"),
    # issue 29: the checks a batch passes before it is trained on
    from_field(LabelCheckConfig, "min_frame_std"),
    from_field(LabelCheckConfig, "one_class_share"),
    from_field(LabelCheckConfig, "one_class_batches"),
    # issue 10: a per-robot downlink budget (gamma and encoding picked per phase)
    from_field(DownlinkBudgetConfig, "downlink_budget_kbps"),
    from_field(DownlinkBudgetConfig, "min_gamma", name="budget_min_gamma"),
    # issue 16: one GPU shared among the robots
    from_field(SchedulerConfig, "policy", name="scheduler_policy", dynamic=True),
    from_field(SchedulerConfig, "max_wait_periods"),
    from_field(SchedulerConfig, "share_window_s"),
    # issue 12: the sessions in a pool of Ray actors
    from_field(PoolConfig, "backend"),
    from_field(PoolConfig, "ray_address"),
    from_field(PoolConfig, "actors", name="pool_actors"),
    from_field(PoolConfig, "actor_cpus", name="pool_actor_cpus"),
    from_field(PoolConfig, "actor_gpus", name="pool_actor_gpus"),
    from_field(PoolConfig, "overload", name="pool_overload"),
    from_field(PoolConfig, "load_window_s", name="pool_load_window_s"),
    from_field(PoolConfig, "check_period_s", name="pool_check_period_s"),
    from_field(PoolConfig, "unreachable_s", name="pool_unreachable_s"),
    from_field(PoolConfig, "fuse", name="pool_fuse"),
    from_field(PoolConfig, "placement", name="pool_placement"),
    from_field(PoolConfig, "spread", name="pool_spread"),
)


def pool_config(p) -> PoolConfig:
    return PoolConfig(backend=p["backend"], ray_address=p["ray_address"], actors=int(p["pool_actors"]),
                      actor_cpus=float(p["pool_actor_cpus"]), actor_gpus=float(p["pool_actor_gpus"]),
                      overload=float(p["pool_overload"]), load_window_s=float(p["pool_load_window_s"]),
                      check_period_s=float(p["pool_check_period_s"]),
                      unreachable_s=float(p["pool_unreachable_s"]), fuse=bool(p["pool_fuse"]),
                      placement=p["pool_placement"], spread=bool(p["pool_spread"]))


def trainer_config(p) -> TrainerConfig:
    return TrainerConfig(
        **{name: p[name] for name in TRAINER_DYNAMIC}, authors_variant=bool(p["authors_variant"]),
        input_size=(int(p["input_width"]), int(p["input_height"])), seed=int(p["seed"]),
    )


class AMSTrainerNode(Node):
    """Builds the robots' sessions (the backend), runs the phase loop, publishes updates and
    statuses, serves snapshots."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("ams_trainer", **kwargs)
        p = self.p = NodeParameters(self, PARAMS, on_change=self._apply_change)
        pcfg = pool_config(p)  # ValueError naming a bad backend setting
        self.state = state
        state.bind(device_ids(p), self.get_name())
        self.signing_key = SigningKey.load(p["signing_key_file"]) if p["signing_key_file"] else None
        self.robot_keys = robot_public_keys(p)
        self.replay_guard = ReplayGuard(float(p["snapshot_request_window_s"]))
        self.store = SessionStore(p["state_dir"]) if p["state_dir"] else None
        self._reject = RejectLog(self, counter=state.rejections)
        tcfg = trainer_config(p)
        spec = student_spec(p)
        if pcfg.backend == RAY:
            self.backend = self._start_pool(pcfg, spec, tcfg)
            self.fingerprint = fingerprint(spec.load())
        else:
            set_torch_threads(int(p["torch_threads"]))
            device = resolve_device(p["device"])  # DeviceError (start-up failure) naming what torch sees
            configure_cudnn(device, bool(p["cudnn_benchmark"]))
            base = spec.load().to(device)  # every robot's copy, its Adam state and its phases live there
            self.fingerprint = fingerprint(base)
            self.backend = LocalBackend.build(
                state.robots, base, lambda: session_config(p, tcfg, self.signing_key), self.store,
                device, self._log, lambda: state.stopping)
        state.backend = self.backend
        self.pubs, self.status_pubs = {}, {}
        group = MutuallyExclusiveCallbackGroup()
        for dev in state.robots:
            self.pubs[dev] = self.create_publisher(ModelUpdate, topics.for_device(dev, topics.MODEL_UPDATE),
                                                   qos("reliable", int(p["update_qos_depth"])))
            self.status_pubs[dev] = self.create_publisher(ServerStatus, topics.for_device(dev, topics.SERVER_STATUS),
                                                          qos("reliable", 10))
            self.create_service(GetModelSnapshot, topics.for_device(dev, topics.SNAPSHOT_SERVICE),
                                self._reject.guard(f"{dev} snapshot request", self._make_snapshot_cb(dev),
                                                   fallback=self._refuse_snapshot), callback_group=group)
            self.create_service(RollbackModel, topics.for_device(dev, topics.ROLLBACK_SERVICE),
                                self._make_rollback_cb(dev), callback_group=group)
        state.scheduler = GpuScheduler(state.robots, SchedulerConfig(
            policy=p["scheduler_policy"], max_wait_periods=float(p["max_wait_periods"]),
            share_window_s=float(p["share_window_s"])), period_s=tcfg.update_period_s)
        self.loop = PhaseLoop(state, self.backend, state.scheduler, self._ship, self._phase_failed, self._log)
        if isinstance(self.backend, PoolBackend):  # the pool's placement follows the scheduler's utilities
            self.backend.pool.utility = self.loop.utility
        # one phase at a time per GPU: one trainer thread per lane (one here, one per actor with the pool)
        self._threads = [worker_thread(self.loop.run, f"ams_trainer{i or ''}", self.get_logger())
                         for i in range(self.backend.lanes)]
        for t in self._threads:
            t.start()
        self.get_logger().info(
            f"training {spec.name} on {self.backend.describe()} ({tcfg.train_precision}) for "
            f"{', '.join(state.robots)}: K={tcfg.iterations}, batch {tcfg.batch_size}, horizon {tcfg.horizon_s:g} s, "
            f"gamma {tcfg.gamma:g} ({tcfg.strategy}), encoding {p['update_encoding']}")

    def _log(self, level: str, text: str) -> None:
        """The core's log lines, one call site per severity (rclpy requires it)."""
        log = self.get_logger()
        if level == "error":
            log.error(text)
        elif level == "warning":
            log.warning(text)
        else:
            log.info(text)

    def _start_pool(self, pcfg: PoolConfig, spec, tcfg: TrainerConfig) -> PoolBackend:
        """Start or join Ray, start the actors and place the robots (resumed from state_dir)."""
        p = self.p
        self._log("info", connect_ray(pcfg.ray_address, num_cpus=max(pcfg.actors * pcfg.actor_cpus, 1.0)
                                      if pcfg.ray_address == "local" else None))
        wspec = WorkerSpec(student=spec, session=session_config(p, tcfg, None), signing_key_file=p["signing_key_file"],
                           device=p["device"], cudnn_benchmark=bool(p["cudnn_benchmark"]),
                           torch_threads=int(p["torch_threads"]))
        pool = SessionPool(ray_actor_factory(wspec, pcfg), pcfg, self.store, log=self._log)
        for report in pool.start(self.state.robots):
            self._log("warning" if report["warning"] else "info", report["message"])
        pool.start_monitor()
        return PoolBackend(pool, {r: session_config(p, tcfg, self.signing_key) for r in self.state.robots})

    def _apply_change(self, changes: dict[str, Any]) -> None:
        """Run-time changes, for every robot: validated (ValueError: refused, nothing changed),
        applied at once between phases or else when the running phase ends."""
        trainer = {k: v for k, v in changes.items() if k in TRAINER_DYNAMIC}
        if "scheduler_policy" in changes:
            with self.state.cv:
                self.state.scheduler.set_policy(changes["scheduler_policy"])
        for s in self.state.sessions.values():  # raises ValueError (nothing changed) for an invalid value
            s.reconfigure(update_encoding=changes.get("update_encoding"), **trainer)
            s.configure(**{k: v for k, v in changes.items() if k in ("snapshot_encoding", "min_samples")})

    @staticmethod
    def _refuse_snapshot(req, resp, exc: Exception):
        """The answer to a snapshot request the server could not serve (the rejection is counted)."""
        resp.success = False
        resp.message = f"snapshot failed: {type(exc).__name__}: {exc}"
        return resp

    def _make_snapshot_cb(self, dev: str):
        def cb(req: GetModelSnapshot.Request, resp: GetModelSnapshot.Response):
            if self.robot_keys:
                try:
                    self.robot_keys[dev].verify(snapshot_request_input(req, dev), bytes(req.signature),
                                                req.signer_key_id, f"snapshot request of {dev}")
                    self.replay_guard.check(dev, int(req.request_time_ns), bytes(req.nonce), time.time_ns())
                except SignatureError as exc:
                    resp.success = False
                    resp.message = f"refused: {exc}"
                    self.state.count_error(dev, f"snapshot request refused: {exc}")
                    self._reject("snapshot request", f"{exc} (from {dev})")
                    return resp
            if req.model_fingerprint and req.model_fingerprint != self.fingerprint:
                resp.success = False
                resp.message = (f"architecture mismatch: robot runs {req.model_fingerprint[:12]}, server trains "
                                f"{self.fingerprint[:12]} ({self.p['student']}); use the same student on both")
                return resp
            try:
                answer = self.state.sessions[dev].resync(int(req.have_version), req.have_chain_tag, req.encoding or None)
            except Exception as exc:  # e.g. an unknown encoding asked for: refuse, never stop the server
                resp.success = False
                resp.message = f"cannot resync robot {dev}: {exc}"
                self.get_logger().error(f"{dev}: {resp.message}")
                return resp
            update = answer.update
            resp.success = True
            resp.message = answer.reason + (f"; {answer.warning}" if answer.warning else "")
            resp.snapshot = update_to_msg(update, dev, stamp=self.get_clock().now().to_msg())
            if answer.warning:
                self.get_logger().warning(f"{dev}: {answer.warning}")
                self.backend.after_phase(dev)  # the chain's new floor (and tag) must survive a restart too
            self.get_logger().info(f"{dev}: served {answer.reason} (robot had v{req.have_version} of chain "
                                   f"{req.have_chain_tag or '(none)'}, {update.wire_bytes} bytes)")
            return resp
        return cb

    def _make_rollback_cb(self, dev: str):
        def cb(req: RollbackModel.Request, resp: RollbackModel.Response):
            """(issue #29) An operator's rollback: the session makes the rolled-back weights its next
            version (waiting for a phase in progress), published like a phase's update and saved."""
            to = START if req.to_start else int(req.version)
            try:
                answer = self.state.sessions[dev].rollback(to, req.encoding or None)
            except (ValueError, KeyError) as exc:  # out of reach, an unknown encoding: refused, nothing changed
                resp.success, resp.message = False, f"{dev}: {exc}"
                self.get_logger().warning(f"rollback refused: {resp.message}")
                return resp
            update = answer.update
            self.pubs[dev].publish(update_to_msg(update, dev, stamp=self.get_clock().now().to_msg()))
            self.backend.after_phase(dev)
            with self.state.cv:
                self.state.rollbacks[dev] = self.state.rollbacks.get(dev, 0) + 1
                self.state.last_rollback[dev] = answer.reason
            resp.success, resp.message, resp.new_version = True, f"{dev}: {answer.reason}", int(update.new_version)
            self.get_logger().warning(f"{dev}: operator rollback: {answer.reason} ({update.wire_bytes} bytes)")
            return resp
        return cb

    def _phase_failed(self, dev: str, exc: Exception) -> None:
        self.get_logger().error(f"{dev}: training phase failed: {exc}")

    def _ship(self, shipped: Shipped) -> bool:
        """Publish a phase's update and status, save the session; False when shutting down."""
        dev, outcome = shipped.robot, shipped.outcome
        session = self.state.sessions[dev]
        if shipped.stretched:
            self.get_logger().warning(
                f"{dev}: phase took {outcome.wall_s:.1f} s > T_update {shipped.requested_s:.1f} s: stretching the "
                f"period (batches that arrive meanwhile are merged into the next phase)")
        r = outcome.result
        msg = update_to_msg(outcome.update, dev, stamp=sec_to_stamp(r.now), phase=r.phase, train_seconds=outcome.wall_s)
        if not rclpy.ok():
            return False
        self.pubs[dev].publish(msg)
        self.backend.after_phase(dev)
        if outcome.reset:  # (issue #29) the drift rule sent the robot back to its starting weights
            with self.state.cv:
                self.state.rollbacks[dev] = self.state.rollbacks.get(dev, 0) + 1
                self.state.last_rollback[dev] = outcome.reset
            self.get_logger().warning(f"{dev}: back to the starting weights: {outcome.reset}")
        self.status_pubs[dev].publish(server_status(self.state, dev, session, shipped))
        self.get_logger().info(
            f"{dev}: update v{outcome.update.base_version}->v{outcome.update.new_version}: phase {r.phase}, "
            f"loss {r.loss:.3f}, {r.num_samples} samples, {len(r.indices)} params, "
            f"{len(msg.indices) + len(msg.values)} bytes, {outcome.wall_s:.1f} s"
            + (f" (budget {session.config.downlink.downlink_budget_kbps:g} Kbps: gamma {outcome.plan.gamma:.4f}, "
               f"{outcome.plan.encoding}, average {session.downlink_kbps(r.now) or 0.0:.1f} Kbps)"
               if outcome.plan is not None else ""))
        return True

    def destroy_node(self) -> None:
        """Stop the training threads and wait for the phases in hand, so torch's backward pass is
        never still running while the interpreter shuts down; then save every session. A node
        whose start-up failed (rclpy destroys it with its context) has no thread yet."""
        backend = getattr(self, "backend", None)
        if not hasattr(self, "_threads"):
            if backend is not None:
                backend.close(save=False)
            super().destroy_node()
            return
        self.state.stop()
        backend.stop_phases()
        for t in self._threads:
            t.join(timeout=60.0)
        if any(t.is_alive() for t in self._threads):
            self.get_logger().warning("training thread still busy after 60 s; exiting without it")
        else:
            saved = backend.close(save=self.store is not None)
            if self.store is not None:
                self.get_logger().info(f"saved {saved} session(s) to {self.store.state_dir}")
        super().destroy_node()


def session_config(p, tcfg: TrainerConfig, key: SigningKey | None) -> SessionConfig:
    """A robot's session settings (its own copy of the trainer settings)."""
    return SessionConfig(trainer=copy.deepcopy(tcfg), update_encoding=p["update_encoding"],
                         snapshot_encoding=p["snapshot_encoding"], signing_key=key,
                         min_samples=int(p["min_samples"]), catch_up_versions=int(p["catch_up_versions"]),
                         gate=GateConfig(gate_frames=int(p["gate_frames"]), gate_margin=float(p["gate_margin"]),
                                         gate_scene_drop=float(p["gate_scene_drop"]),
                                         drift_phases=int(p["drift_phases"])),
                         labels=LabelCheckConfig(min_frame_std=float(p["min_frame_std"]),
                                                 one_class_share=float(p["one_class_share"]),
                                                 one_class_batches=int(p["one_class_batches"])),
                         downlink=DownlinkBudgetConfig(downlink_budget_kbps=float(p["downlink_budget_kbps"]),
                                                       min_gamma=float(p["budget_min_gamma"])))


def server_status(state: ServerState, dev: str, session: Any, shipped: Shipped) -> ServerStatus:
    """The ServerStatus of a robot after a phase."""
    r = shipped.outcome.result
    msg = ServerStatus()
    msg.header.stamp = sec_to_stamp(r.now)
    msg.device_id = dev
    msg.phase = int(r.phase)
    msg.model_version = int(session.version)
    msg.buffer_frames = int(session.buffered(r.now))
    msg.horizon = float(session.horizon_s)
    msg.train_seconds = float(shipped.outcome.wall_s)
    msg.train_loss = float(r.loss)
    msg.changed_fraction = float(r.changed_fraction)
    msg.update_period_requested = shipped.requested_s
    msg.update_period_effective = float(shipped.effective_s)
    msg.period_stretched = bool(shipped.stretched)
    with state.cv:
        msg.batches_received = state.received[dev]
        msg.batches_dropped = state.dropped[dev]
        msg.last_error = state.last_error[dev]
        msg.gpu_share = float(state.scheduler.share(dev, time.monotonic()))
        msg.scheduler_policy = state.scheduler.policy
    msg.inputs_rejected, msg.last_input_rejection = state.rejections.read()
    msg.phases_discarded = int(session.discarded_phases)
    msg.last_discard = str(session.last_discard)
    msg.phases_unjudged = int(session.unjudged_phases)
    msg.last_unjudged = str(session.last_unjudged)
    msg.batches_refused = int(session.refused_batches)
    msg.frames_refused = int(session.refused_frames)
    msg.last_refusal = str(session.last_refusal)
    msg.gate_running_miou, msg.gate_candidate_miou = shipped.outcome.gate_scores or (float("nan"), float("nan"))
    msg.rollbacks = state.rollbacks.get(dev, 0)
    msg.last_rollback = state.last_rollback.get(dev, "")
    return msg
