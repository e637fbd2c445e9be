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

``backend`` (issue #12, :mod:`ams_ros.core.fleet.pool`): ``local`` keeps every session in this
process; ``ray`` keeps the ROS side here and runs the sessions (and the teacher) in a pool of
Ray actors, one trainer thread per actor, so phases of robots on different actors (GPUs) run at
once. The sessions are then :class:`~ams_ros.core.fleet.pooled_session.PooledSession` handles with the
same calls; Ray is imported only then.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import ModelUpdate, ServerStatus
from ams_msgs.srv import GetModelSnapshot
from ams_ros.core.common.devices import configure_cudnn, describe, resolve_device
from ams_ros.core.server.downlink_budget import DownlinkBudgetConfig
from ams_ros.core.common.devices import DeviceConfig
from ams_ros.core.models.params import fingerprint
from ams_ros.core.fleet.worker import WorkerSpec
from ams_ros.core.fleet.scheduling import LABEL, ROUND_ROBIN, GpuScheduler, SchedulerConfig, student_error
from ams_ros.core.server.session import RobotSession, SessionConfig
from ams_ros.core.fleet.pool_config import RAY, PoolConfig
from ams_ros.core.fleet.pooled_session import PooledSession
from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.transports import connect_ray, disconnect_ray, ray_actor_factory
from ams_ros.core.server.session_store import SessionStore
from ams_ros.core.security.signing import DEFAULT_REQUEST_WINDOW_S, ReplayGuard, SignatureError, SigningKey
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.core.server.trainer import TrainerConfig
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import sec_to_stamp, snapshot_request_input, update_to_msg
from ams_ros.nodes.common.parameters import NodeParameters, Param, from_field
from ams_ros.nodes.common.qos import qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.server.state import ServerState
from ams_ros.nodes.common.shared_params import (DEVICE_IDS, ROBOT_PUBLIC_KEYS, STUDENT_PARAMS, device_ids,
                                         robot_public_keys, student_spec)
from ams_ros.nodes.common.spinning import worker_thread

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
    from_field(PoolConfig, "fuse", name="pool_fuse"),
    from_field(PoolConfig, "placement", name="pool_placement"),
)


def pool_config(p) -> PoolConfig:
    return PoolConfig(backend=p["backend"], ray_address=p["ray_address"], actors=int(p["pool_actors"]),
                      actor_cpus=float(p["pool_actor_cpus"]), actor_gpus=float(p["pool_actor_gpus"]),
                      overload=float(p["pool_overload"]), load_window_s=float(p["pool_load_window_s"]),
                      check_period_s=float(p["pool_check_period_s"]), fuse=bool(p["pool_fuse"]),
                      placement=p["pool_placement"])


def trainer_config(p) -> TrainerConfig:
    return TrainerConfig(
        **{name: p[name] for name in TRAINER_DYNAMIC}, authors_variant=bool(p["authors_variant"]),
        input_size=(int(p["input_width"]), int(p["input_height"])), seed=int(p["seed"]),
    )


class AMSTrainerNode(Node):
    """Runs training phases for the devices in turn; publishes updates and serves snapshots."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("ams_trainer", **kwargs)
        p = self.p = NodeParameters(self, PARAMS, on_change=self._apply_change)
        pcfg = pool_config(p)  # ValueError naming a bad backend setting
        self.pool: SessionPool | None = None
        if pcfg.backend == RAY:  # the actors resolve the device: this process may have no GPU
            device = resolve_device("cpu")
        else:
            set_torch_threads(int(p["torch_threads"]))
            device = resolve_device(p["device"])  # DeviceError (start-up failure) naming what torch sees
            configure_cudnn(device, bool(p["cudnn_benchmark"]))
        self.state = state
        state.bind_devices(device_ids(p), self.get_name())
        spec = student_spec(p)
        base = spec.load().to(device)  # every robot's copy, its Adam state and its phases live there
        self.fingerprint = fingerprint(base)
        tcfg = trainer_config(p)
        self.pubs, self.status_pubs = {}, {}
        self.store = SessionStore(p["state_dir"]) if p["state_dir"] else None
        self._save_lock = threading.Lock()
        self._reject = RejectLog(self, counter=state.rejections)
        self.signing_key = SigningKey.load(p["signing_key_file"]) if p["signing_key_file"] else None
        self.robot_keys = robot_public_keys(p)
        self.replay_guard = ReplayGuard(float(p["snapshot_request_window_s"]))
        group = MutuallyExclusiveCallbackGroup()

        def session_config(key: SigningKey | None) -> SessionConfig:
            return SessionConfig(trainer=copy.deepcopy(tcfg), update_encoding=p["update_encoding"],
                                 snapshot_encoding=p["snapshot_encoding"],
                                 signing_key=key, min_samples=int(p["min_samples"]),
                                 catch_up_versions=int(p["catch_up_versions"]),
                                 downlink=DownlinkBudgetConfig(downlink_budget_kbps=float(p["downlink_budget_kbps"]),
                                                               min_gamma=float(p["budget_min_gamma"])))

        if pcfg.backend == RAY:
            self.pool = self._start_pool(pcfg, spec, session_config(None))
        for dev in state.device_ids:
            cfg = session_config(self.signing_key)
            if self.pool is not None:
                state.sessions[dev] = PooledSession(self.pool, dev, cfg)
            elif self.store is not None:
                loaded = self.store.load(dev, base, cfg)
                if loaded.warning:  # one call site per severity: rclpy raises when a call site's severity changes
                    self.get_logger().warning(loaded.message)
                else:
                    self.get_logger().info(loaded.message)
                state.sessions[dev] = loaded.session
            else:
                state.sessions[dev] = RobotSession(dev, copy.deepcopy(base), cfg)
            if self.pool is None:
                state.sessions[dev].trainer.stop_requested = lambda: state.stopping  # stop ends a phase early
            self.pubs[dev] = self.create_publisher(ModelUpdate, topics.for_device(dev, topics.MODEL_UPDATE),
                                                   qos("reliable", int(p["update_qos_depth"])))
            self.status_pubs[dev] = self.create_publisher(ServerStatus, topics.for_device(dev, topics.SERVER_STATUS),
                                                          qos("reliable", 10))
            self.create_service(GetModelSnapshot, topics.for_device(dev, topics.SNAPSHOT_SERVICE),
                                self._reject.guard(f"{dev} snapshot request", self._make_snapshot_cb(dev),
                                                   fallback=self._refuse_snapshot), callback_group=group)
        self._phase_started: dict[str, float] = {}
        self._trained_upto: dict[str, float] = {}  # stream time of each robot's newest trained-on frame
        self._measured: dict[str, float] = {}
        state.scheduler = GpuScheduler(state.device_ids, SchedulerConfig(
            policy=p["scheduler_policy"], max_wait_periods=float(p["max_wait_periods"]),
            share_window_s=float(p["share_window_s"])), period_s=tcfg.update_period_s)
        self._effective: dict[str, float] = {d: tcfg.update_period_s for d in state.device_ids}
        # one phase at a time per GPU: one trainer thread here, one per actor with the pool
        self._threads = [worker_thread(self._work, f"ams_trainer{i or ''}", self.get_logger())
                         for i in range(pcfg.actors if self.pool is not None else 1)]
        self._thread = self._threads[0]
        for t in self._threads:
            t.start()
        where = (f"{pcfg.actors} Ray actor(s) ({p['device']}; robots {self._placement()})" if self.pool is not None
                 else describe(device))
        self.get_logger().info(
            f"training {spec.name} on {where} ({tcfg.train_precision}) for {', '.join(state.device_ids)}: "
            f"K={tcfg.iterations}, batch {tcfg.batch_size}, "
            f"horizon {tcfg.horizon_s:g} s, gamma {tcfg.gamma:g} ({tcfg.strategy}), encoding {p['update_encoding']}"
        )

    def _start_pool(self, pcfg: PoolConfig, spec, cfg: SessionConfig) -> SessionPool:
        """Start or join Ray, start the actors and place the robots (resumed from state_dir)."""
        p = self.p
        log = self.get_logger()
        log.info(connect_ray(pcfg.ray_address, num_cpus=max(pcfg.actors * pcfg.actor_cpus, 1.0)
                             if pcfg.ray_address == "local" else None))
        wspec = WorkerSpec(student=spec, session=cfg, signing_key_file=p["signing_key_file"], device=p["device"],
                           cudnn_benchmark=bool(p["cudnn_benchmark"]), torch_threads=int(p["torch_threads"]))
        def pool_log(level: str, text: str) -> None:  # one call site per severity (rclpy requires it)
            if level == "error":
                log.error(text)
            elif level == "warning":
                log.warning(text)
            else:
                log.info(text)

        pool = SessionPool(ray_actor_factory(wspec, pcfg), pcfg, self.store, log=pool_log)
        # pool_placement utility: the scheduler's utilities as of its last choice (a copy the trainer
        # threads replace under the state lock: the pool's threads read it without taking that lock)
        self._utilities: dict[str, float] = {}
        pool.utility = lambda dev: self._utilities.get(dev, math.inf)
        self.state.pool = pool
        for report in pool.start(self.state.device_ids):
            pool_log("warning" if report["warning"] else "info", report["message"])
        pool.start_monitor()
        return pool

    def _placement(self) -> str:
        pool = self.pool
        return "; ".join(f"actor {i}: {', '.join(pool.robots_on(i)) or '-'}" for i in range(len(pool.actors)))

    def _apply_change(self, changes: dict[str, Any]) -> None:
        """Run-time changes, for every robot: validated (ValueError: refused, nothing changed),
        applied at once between phases or else when the running phase ends."""
        trainer = {k: v for k, v in changes.items() if k in TRAINER_DYNAMIC}
        if "scheduler_policy" in changes:
            with self.state.cv:
                self.state.scheduler.set_policy(changes["scheduler_policy"])
        sessions = list(self.state.sessions.values())
        for s in sessions:  # raises ValueError (nothing changed) for an invalid value
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
            session = self.state.sessions[dev]
            try:
                answer = session.resync(int(req.have_version), req.have_chain_tag, req.encoding or None)
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
                self._save(dev)  # the chain's new floor (and tag) must survive a restart too
            self.get_logger().info(f"{dev}: served {answer.reason} (robot had v{req.have_version} of chain "
                                   f"{req.have_chain_tag or '(none)'}, {update.wire_bytes} bytes)")
            return resp
        return cb

    def _next_device(self) -> str | None:
        st = self.state
        while True:
            with st.cv:
                while not st.stopping and not (ready := [d for d in st.device_ids if st.sessions[d].ready()]):
                    st.cv.wait(timeout=0.5)
                if st.stopping:
                    return None
            self._measure_errors(ready)  # outside the lock: forward passes
            with st.cv:
                ready = [d for d in ready if st.sessions[d].ready()]
                if self.pool is not None:  # one phase at a time per actor: robots on a busy one wait
                    ready = [d for d in ready if self.pool.phase_free(d)]
                    if not ready:
                        st.cv.wait(timeout=0.5)
                        continue
                sched = st.scheduler
                sched.period_s = max(float(st.sessions[d].update_period_s) for d in st.device_ids)
                now = time.monotonic()
                dev = sched.pick(ready, now)
                if self.pool is not None:  # the pool's placement reads these (none under round_robin: by load)
                    self._utilities = ({} if sched.policy == ROUND_ROBIN else
                                       {d: sched.utility(d, now) for d in st.device_ids})
                if dev is not None and not st.stopping:
                    if self.pool is not None and not self.pool.begin_phase(dev):
                        continue
                    return dev

    def _measure_errors(self, ready: list[str]) -> None:
        """The utility policies' signal: the student's error vs the teacher on each ready robot's
        newest labelled frames (measured once per new frame; booked as that robot's GPU time)."""
        sched = self.state.scheduler
        if sched.policy == ROUND_ROBIN:
            return
        for dev in ready:
            session = self.state.sessions[dev]
            latest = session.latest_t
            if latest is None or latest <= self._measured.get(dev, float("-inf")):
                continue
            t0 = time.monotonic()
            if isinstance(session, PooledSession):
                err = session.student_error()
                if err is None:
                    continue
            else:
                with session.lock:
                    entries = session.trainer.buffer.window(latest, session.trainer.config.horizon_s)
                    err = student_error(session.model, entries[-sched.config.error_frames:])
            self._measured[dev] = latest
            with self.state.cv:
                sched.observe_error(dev, latest, err)
                sched.record(dev, LABEL, t0, time.monotonic())

    def _work(self) -> None:
        while True:
            dev = self._next_device()
            if dev is None:
                return
            group = self._fused_group(dev)
            started = time.monotonic()
            prev = {}
            with self.state.cv:
                for d in group:
                    prev[d] = self._phase_started.get(d)
                    self._phase_started[d] = started
                    self.state.scheduler.start_phase(d, started)
                actor = self.pool.actor_of(dev) if self.pool is not None else -1
            try:
                if len(group) > 1:
                    self.get_logger().info(f"fused phase of {', '.join(group)} on actor {actor}")
                    outcomes = self.pool.run_phases(group)  # one fused step on the robots' actor
                else:
                    try:
                        outcomes = [self.state.sessions[dev].run_phase()]
                    except Exception as exc:
                        outcomes = [exc]
            finally:
                with self.state.cv:
                    for d in group:
                        self.state.scheduler.end_phase(d, started, time.monotonic())
                    if self.pool is not None:
                        self.pool.end_phase(dev, actor)
                    self.state.cv.notify_all()
            for d, outcome in zip(group, outcomes):
                if isinstance(outcome, Exception):
                    self.state.count_error(d, f"training failed: {outcome}")
                    self.get_logger().error(f"{d}: training phase failed: {outcome}")
                elif outcome is not None and not self._ship(d, outcome, started, prev[d]):
                    return

    def _fused_group(self, dev: str) -> list[str]:
        """``dev`` and, with ``pool_fuse``, every other robot on its actor that is ready or holds
        labelled frames newer than its last phase (the actor is claimed for this phase, so none of
        them is training): one fused step trains them all. (A robot's count of new samples starts
        again after its phase, so with phases longer than T_update robots on one actor would
        otherwise never be ready at the same moment.)"""
        if self.pool is None or not self.pool.config.fuse:
            return [dev]
        actor = self.pool.actor_of(dev)
        with self.state.cv:
            others = [d for d in self.state.device_ids if d != dev and self.pool.actor_of(d) == actor
                      and (self.state.sessions[d].ready() or self._untrained_frames(d))]
        return [dev, *others]

    def _untrained_frames(self, dev: str) -> bool:
        latest = self.state.sessions[dev].latest_t
        return latest is not None and latest > self._trained_upto.get(dev, float("-inf"))

    def _ship(self, dev: str, outcome, started: float, prev: float | None) -> bool:
        """Publish a phase's update and status, save the session; False when shutting down."""
        session = self.state.sessions[dev]
        requested = float(session.update_period_s)
        stretched = outcome.wall_s > requested
        self._effective[dev] = max(requested, outcome.wall_s, (started - prev) if prev else 0.0)
        if stretched:
            self.get_logger().warning(
                f"{dev}: phase took {outcome.wall_s:.1f} s > T_update {requested:.1f} s: stretching the period "
                f"(batches that arrive meanwhile are merged into the next phase)"
            )
        r = outcome.result
        self._trained_upto[dev] = float(r.now)
        msg = update_to_msg(outcome.update, dev, stamp=sec_to_stamp(r.now), phase=r.phase, train_seconds=outcome.wall_s)
        if not rclpy.ok() or self.state.stopping:
            return False
        self.pubs[dev].publish(msg)
        self._save(dev)
        self._publish_status(dev, session, outcome, requested, stretched)
        self.get_logger().info(
            f"{dev}: update v{outcome.update.base_version}->v{outcome.update.new_version}: phase {r.phase}, "
            f"loss {r.loss:.3f}, {r.num_samples} samples, {len(r.indices)} params, "
            f"{len(msg.indices) + len(msg.values)} bytes, {outcome.wall_s:.1f} s"
            + (f" (budget {session.config.downlink.downlink_budget_kbps:g} Kbps: gamma {outcome.plan.gamma:.4f}, "
               f"{outcome.plan.encoding}, average {session.downlink_kbps(r.now) or 0.0:.1f} Kbps)"
               if outcome.plan is not None else "")
        )
        return True

    def _publish_status(self, dev: str, session: RobotSession | PooledSession, outcome, requested: float,
                        stretched: bool) -> None:
        st = self.state
        r = outcome.result
        horizon = session.horizon_s
        msg = ServerStatus()
        msg.header.stamp = sec_to_stamp(r.now)
        msg.device_id = dev
        msg.phase = int(r.phase)
        msg.model_version = int(session.version)
        msg.buffer_frames = int(session.buffered(r.now))
        msg.horizon = float(horizon)
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
            msg.gpu_share = float(st.scheduler.share(dev, time.monotonic()))
            msg.scheduler_policy = st.scheduler.policy
        msg.inputs_rejected, msg.last_input_rejection = st.rejections.read()
        self.status_pubs[dev].publish(msg)

    def _save(self, dev: str) -> None:
        """Write the robot's session to ``state_dir`` (atomically); a failure is logged and
        counted, never stops training."""
        if self.store is None or self.pool is not None:  # the pool saves after every phase itself
            return
        try:
            with self._save_lock:
                size = self.store.save(self.state.sessions[dev])
        except Exception as exc:  # disk full, folder gone: keep serving, say so
            self.state.count_error(dev, f"saving the session failed: {exc}")
            self.get_logger().error(f"{dev}: could not save the session to {self.store.state_dir}: {exc}")
            return
        self.get_logger().debug(f"{dev}: saved session v{self.state.sessions[dev].version} ({size} bytes)")

    def destroy_node(self) -> None:
        """Stop the training thread and wait for the phase in hand, so torch's backward pass is
        never still running while the interpreter shuts down; then save every session. A node
        whose start-up failed (rclpy destroys it with its context) has no thread or state yet."""
        if not hasattr(self, "_thread"):
            if getattr(self, "pool", None) is not None:
                self.pool.shutdown(save=False)
            super().destroy_node()
            return
        self.state.stop()
        if self.pool is not None:
            self.pool.stop_phases()
        for t in self._threads:
            t.join(timeout=60.0)
        if any(t.is_alive() for t in self._threads):
            self.get_logger().warning("training thread still busy after 60 s; exiting without it")
        elif self.pool is not None:
            saved = self.pool.shutdown(save=self.store is not None)
            disconnect_ray()
            if self.store is not None:
                self.get_logger().info(f"saved {saved} session(s) to {self.store.state_dir}")
        elif self.store is not None:
            for dev in self.state.device_ids:
                self._save(dev)
            self.get_logger().info(f"saved {len(self.state.device_ids)} session(s) to {self.store.state_dir}")
        super().destroy_node()
