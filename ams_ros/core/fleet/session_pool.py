"""The base station's robots served by a pool of actors, e.g. one per GPU on a Ray cluster (issue #12).

With ``backend: local`` (the default) every robot's session lives in the server process, and
nothing here is used (Ray is not even imported). With ``backend: ray`` the server process keeps
the ROS side (subscriptions, publishers, the snapshot service, status) and hands the per-robot
work to a :class:`SessionPool`: a few actors, each a :class:`~ams_ros.core.fleet.worker.PoolWorker`
holding several robots' sessions and its own teacher. The pool:

- **assigns** each robot to the least-loaded actor (load = the share of wall time the actor spent
  labelling and training over ``load_window_s``, ties by robot count); nothing else is known of a
  robot that has not run yet;
- **moves** a robot between actors: its persisted state (``session_state`` / ``encode_state``, the
  unit a ``state_dir`` keeps) is taken from the old actor and restored on the new one while calls
  for that robot wait, so its version chain continues unbroken and no labelled sample is lost;
  :meth:`SessionPool.rebalance` moves one when an actor is busier than ``overload``. Which one is
  the ``placement`` rule's choice among the robots whose move lowers the busier of the two actors:
  ``utility`` (the default) takes the robot with the lowest utility, the fleet scheduler's
  predicted mIoU gain per GPU-second (:meth:`~ams_ros.core.fleet.scheduling.GpuScheduler.utility`,
  handed in as :attr:`SessionPool.utility`): a move pauses the moved robot's calls while its state
  travels and puts it behind the new actor's robots, which costs least for the robot whose phases
  buy least, while the robots whose scenes are changing keep training where they are; ties (and
  ``load``, or a scheduler that measures no utility: ``round_robin``) take the move that leaves the
  lower peak. A dead actor's robots are restored highest utility first;
- **recovers** a dead actor: the state of each robot is kept here after every phase (and in
  ``state_dir`` when set), with the batches labelled since; a call that finds its actor dead, or
  the monitor's ping (every ``check_period_s``), restores its robots on the least-loaded
  surviving actors (already running: no start-up wait) and replays those batches, while a
  replacement actor starts in the background (a pool of one actor waits for it). The robots keep inferring meanwhile and resync through the normal
  version chain (a robot ahead of the restored chain is handled by ``DeviceSession.resync``).

The transport is an :class:`ActorRef`: :class:`RayActor` (a Ray actor, Ray imported only here,
lazily) or :class:`InProcessActor` (the same worker in this process: the pool's rules tested
without Ray). No ROS import.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from ams_ros.core.common.paths import SOURCE_ROOT
from ams_ros.core.common.config import check_choice, knob
from ams_ros.core.fleet.worker import PoolWorker, RobotNotHere, TeacherSpec, WorkerSpec
from ams_ros.core.server.session import PhaseOutcome, Resync
from ams_ros.core.server.session_store import MAGIC, SessionStore, atomic_write

LOCAL, RAY = "local", "ray"
BACKENDS: tuple[str, ...] = (LOCAL, RAY)
#: a local Ray instance's object store: robots' states and batches at demo size need little
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
#: batches kept per robot for replay after an actor's death (those since its last persisted state)
MAX_REPLAY_BATCHES = 256
#: how an overloaded actor picks the robot it hands over (see the module doc)
UTILITY, LOAD = "utility", "load"
PLACEMENTS: tuple[str, ...] = (UTILITY, LOAD)


@dataclass
class PoolConfig:
    """Where the robots' sessions run, and the pool's rules when that is a pool of actors."""

    backend: str = knob(LOCAL, "Where the robots' sessions (student, Adam state, buffer, chain) and the teacher run: "
                               "local (in the server process) | ray (in a pool of Ray actors, e.g. one per GPU)",
                        choices=BACKENDS)
    ray_address: str = knob(LOCAL, "With backend ray: local (start a Ray instance in this process, bound to "
                                   "127.0.0.1) | auto (join the cluster `ray start` runs on this machine) | HOST:PORT "
                                   "(join that cluster's head)")
    actors: int = knob(2, "With backend ray: actors in the pool; each serves several robots with its own teacher")
    actor_cpus: float = knob(1.0, "With backend ray: CPUs each actor reserves")
    actor_gpus: float = knob(0.0, "With backend ray: GPUs each actor reserves (1 = one GPU per actor, 0.5 = two "
                                  "per GPU, 0 = CPU actors)")
    overload: float = knob(0.9, "With backend ray: an actor busier than this share of wall time (labelling and "
                                "training over pool_load_window_s) hands a robot to a less-busy actor")
    load_window_s: float = knob(30.0, "With backend ray: the window (s) over which each actor's load is measured")
    fuse: bool = knob(False, "With backend ray: train the ready robots of one actor in one fused step (vmap over "
                             "their students; per-robot selection and Adam state). Pays on a GPU; on a CPU it is "
                             "slower than one phase after another (docs/results.md)")
    placement: str = knob(UTILITY, "With backend ray: which robot an overloaded actor hands over (among those whose "
                                   "move lowers the busier actor): utility (the lowest predicted mIoU gain per "
                                   "GPU-second, from the scheduler; needs scheduler_policy utility or utility_aging, "
                                   "else as load) | load (the move that leaves the lowest peak load). A dead actor's "
                                   "robots are restored highest utility first", choices=PLACEMENTS)
    check_period_s: float = knob(1.0, "With backend ray: how often the pool pings its actors (a dead one is "
                                      "replaced and its robots restored) and checks their load")

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_choice("pool_placement", self.placement, PLACEMENTS)
        if not str(self.ray_address).strip():
            raise ValueError("ray_address is empty: use local (a Ray instance in this process), auto (the cluster "
                             "`ray start` runs here) or HOST:PORT of the cluster's head")
        if self.actors < 1:
            raise ValueError(f"pool_actors must be >= 1, got {self.actors}")
        if self.actor_cpus < 0 or self.actor_gpus < 0:
            raise ValueError(f"pool_actor_cpus and pool_actor_gpus must be >= 0, got {self.actor_cpus}, "
                             f"{self.actor_gpus}")
        if not 0.0 < self.overload <= 1.0:
            raise ValueError(f"pool_overload must be in (0, 1], got {self.overload}")
        if self.load_window_s <= 0 or self.check_period_s <= 0:
            raise ValueError(f"pool_load_window_s and pool_check_period_s must be > 0, got {self.load_window_s}, "
                             f"{self.check_period_s}")


class ActorGone(RuntimeError):
    """The actor died (killed, its process or node lost): its robots must be restored elsewhere."""


class ActorRef(Protocol):
    name: str

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...

    def kill(self) -> None: ...


class InProcessActor:
    """A :class:`PoolWorker` in this process behind the actor interface (tests, benchmarks):
    ``kill()`` makes every later call raise :class:`ActorGone`, as a killed Ray actor does."""

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        self.name = name
        self.worker: Optional[PoolWorker] = PoolWorker(spec, name)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        worker = self.worker
        if worker is None:
            raise ActorGone(f"actor {self.name} was killed")
        return getattr(worker, method)(*args)

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.worker = None


def import_ray() -> Any:
    """Ray, imported on first use only (``backend: local`` never needs it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage telemetry
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("backend ray needs the ray package (pip install ray==2.60.0; `make setup` installs it), "
                           "or set backend: local") from exc
    return ray


def connect_ray(address: str, num_cpus: float | None = None, num_gpus: float | None = None) -> str:
    """Start or join Ray once per process; returns what was done, for the log.

    ``local``: a new Ray instance in this process, every service bound to 127.0.0.1, no dashboard,
    no usage statistics. ``auto`` / ``HOST:PORT``: join an existing cluster (``ray start``)."""
    text = str(address).strip()
    if text == LOCAL:
        # Ray on Linux turns a node address of 127.0.0.1 into the machine's network address; its
        # single-machine mode (what it runs on macOS) keeps loopback: for this process (read on
        # import, and at call time) and every process the instance starts (from the environment)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = import_ray()
    if ray.is_initialized():
        return "Ray already initialised in this process"
    if text == LOCAL:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        # the workers it starts inherit this environment: they must import this ams_ros
        root = str(SOURCE_ROOT)
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 num_cpus=None if num_cpus is None else max(1, int(round(num_cpus))),
                 num_gpus=None if num_gpus is None else int(num_gpus),
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
        return "started a local Ray instance on 127.0.0.1"
    ray.init(address=text, log_to_driver=False, configure_logging=False)
    return f"joined the Ray cluster at {text}"


def disconnect_ray() -> None:
    """End this process's Ray connection (a local instance stops with it); nothing without Ray."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


class RayActor:
    """A :class:`PoolWorker` in a Ray actor. Errors the worker raises come back as themselves
    (ValueError, FrameCodecError, RobotNotHere); a dead actor as :class:`ActorGone`."""

    def __init__(self, spec: WorkerSpec, name: str, cpus: float = 1.0, gpus: float = 0.0,
                 max_concurrency: int = 8) -> None:
        ray = self._ray = import_ray()
        self.name = name
        cls = ray.remote(PoolWorker)
        self.handle = cls.options(num_cpus=cpus, num_gpus=gpus, max_concurrency=max_concurrency, max_restarts=0,
                                  max_task_retries=0).remote(spec, name)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        ray = self._ray
        try:
            return ray.get(getattr(self.handle, method).remote(*args), timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            raise ActorGone(f"actor {self.name} died: {exc}") from exc
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def kill(self) -> None:
        try:
            self._ray.kill(self.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def ray_actor_factory(spec: WorkerSpec, config: PoolConfig) -> Callable[[str], RayActor]:
    return lambda name: RayActor(spec, name, cpus=config.actor_cpus, gpus=config.actor_gpus)


def in_process_factory(spec: WorkerSpec) -> Callable[[str], InProcessActor]:
    return lambda name: InProcessActor(spec, name)


@dataclass
class PoolEvent:
    """A move or a recovery, for the log and the tests."""

    kind: str  # "move" | "recover"
    device_id: str
    source: int
    target: int
    version: int
    message: str


class SessionPool:
    """The robots' sessions on ``config.actors`` actors: assignment, moves, recovery (see the module doc).

    Every per-robot call waits while that robot moves or is restored, then goes to its actor;
    one that finds the robot gone (it moved meanwhile) is retried where it went, one that finds
    the actor dead restores the actor's robots elsewhere first."""

    def __init__(self, make_actor: Callable[[str], ActorRef], config: PoolConfig | None = None,
                 store: SessionStore | None = None, log: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or PoolConfig()
        self.make_actor = make_actor
        self.store = store
        self.log = log or (lambda level, text: None)
        self.clock = clock
        #: each robot's utility (predicted mIoU gain per GPU-second; inf = not measured yet), set by
        #: the server from its scheduler; must not block (it is called from the pool's threads)
        self.utility: Optional[Callable[[str], float]] = None
        self.actors: list[ActorRef] = []
        self.generation: list[int] = []
        self.assignment: dict[str, int] = {}
        self.info: dict[str, dict[str, Any]] = {}  # each robot's mirrored session info
        self.settings: dict[str, dict[str, Any]] = {}  # run-time settings, applied again on restore
        self.events: list[PoolEvent] = []
        self.teacher_spec: Optional[TeacherSpec] = None
        self._states: dict[str, tuple[bytes, int, int]] = {}  # dev -> (state bytes, version, last batch seq)
        self._replay: dict[str, deque] = {}
        self._seq: dict[str, int] = {}
        self._busy: dict[str, deque] = {}  # dev -> (end time, busy seconds)
        self._moved_at: dict[str, float] = {}
        self._held: set[str] = set()  # robots being moved or restored: their calls wait
        self._phase_actors: set[int] = set()
        self._down: set[int] = set()  # dead actors whose replacement is starting (no robots on them)
        self._replacers: list[threading.Thread] = []
        self._cv = threading.Condition()
        self._recover_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._monitor: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ start-up
    def start(self, devices: Sequence[str]) -> list[dict[str, Any]]:
        """Start the actors and place the robots (resumed from ``state_dir`` when there is a usable
        file, else a fresh chain); returns each robot's start-up report (``message``, ``warning``)."""
        for i in range(self.config.actors):
            self.actors.append(self._new_actor(i, 0))
            self.generation.append(0)
        reports = []
        for dev in devices:
            self._seq[dev], self._replay[dev], self._busy[dev], self.settings[dev] = 0, deque(), deque(), {}
            idx = self._least_loaded()
            data = self._read_file(dev)
            reply = self.actors[idx].call("add_robot", dev, data, None)
            self.assignment[dev] = idx
            self.info[dev] = reply
            reports.append(self._start_report(dev, idx, data, reply))
            state, seq = self.actors[idx].call("export", dev)
            self._keep(dev, state, reply["version"], seq, persist=False)
        return reports

    def _start_report(self, dev: str, idx: int, data: bytes | None, reply: dict[str, Any]) -> dict[str, Any]:
        where = f"actor {idx}"
        if data is None:
            return {"message": f"{dev}: on {where}; no saved session, starting a new chain {reply['chain_tag']} at v0",
                    "warning": False}
        if reply["resumed"]:
            return {"message": f"{dev}: on {where}; resumed chain {reply['chain_tag']} at v{reply['version']} "
                               f"(phase {reply['phase']}) from {self.store.path(dev)}", "warning": False}
        dest = self.store.set_aside(self.store.path(dev), reply["kind"] or "corrupt")
        return {"message": f"{dev}: saved session is {reply['kind'] or 'corrupt'} ({reply['error']}); set it aside "
                           f"as {dest} and started a new chain {reply['chain_tag']} at v0 on {where}",
                "warning": True}

    def _read_file(self, dev: str) -> bytes | None:
        if self.store is None or not os.path.exists(self.store.path(dev)):
            return None
        with open(self.store.path(dev), "rb") as f:
            return f.read()

    def _new_actor(self, idx: int, generation: int) -> ActorRef:
        ref = self.make_actor(f"ams-pool-{idx}.{generation}")
        ref.call("ping")  # wait until it is up (a constructor error surfaces here)
        if self.teacher_spec is not None:
            ref.call("set_teachers", self.teacher_spec)
        return ref

    def set_teachers(self, spec: TeacherSpec) -> str:
        """Give every actor (and every later replacement) its teachers; returns where they run."""
        self.teacher_spec = spec  # read by _new_actor: a replacement starting now gets it too
        where = ""
        for i in self.live_actors():
            where = self._on_actor(i, "set_teachers", spec)
        return where

    def live_actors(self) -> list[int]:
        with self._cv:
            return [i for i in range(len(self.actors)) if i not in self._down]

    def wait_all_up(self, timeout: float = 120.0) -> bool:
        """Wait until no actor is being replaced (False after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._down and time.monotonic() < deadline:
                self._cv.wait(timeout=max(0.01, deadline - time.monotonic()))
            return not self._down

    def _on_actor(self, idx: int, method: str, *args: Any) -> Any:
        for _ in range(3):
            with self._cv:
                while idx in self._down:  # its replacement is starting
                    self._cv.wait(timeout=1.0)
                ref, gen = self.actors[idx], self.generation[idx]
            try:
                return ref.call(method, *args)
            except ActorGone:
                self._recover(idx, gen)
        raise ActorGone(f"actor {idx} keeps dying: {method} failed three times")

    # ------------------------------------------------------------------ routing
    def call(self, dev: str, method: str, *args: Any) -> Any:
        """``method(dev, *args)`` on the robot's actor (waits while it moves; retries after a
        move or a recovery). Errors of the work itself (a bad batch, a bad setting) propagate."""
        if dev not in self.assignment:
            raise KeyError(f"robot '{dev}' is not served by this pool (robots: {sorted(self.assignment)})")
        last: Exception | None = None
        for _ in range(4):
            with self._cv:
                while dev in self._held:
                    self._cv.wait()
                idx = self.assignment[dev]
                ref, gen = self.actors[idx], self.generation[idx]
            try:
                return ref.call(method, dev, *args)
            except RobotNotHere as exc:  # moved (or restored elsewhere) while the call travelled
                last = exc
            except ActorGone as exc:
                last = exc
                self._recover(idx, gen)
        raise RuntimeError(f"{method} for robot '{dev}' failed after 4 tries: {last}")

    def actor_of(self, dev: str) -> int:
        with self._cv:
            return self.assignment[dev]

    def robots_on(self, idx: int) -> list[str]:
        with self._cv:
            return sorted(d for d, a in self.assignment.items() if a == idx)

    # ------------------------------------------------------------------ the robots' work
    def label(self, dev: str, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float]) -> int:
        """Decode, label (the actor's teacher) and buffer a frame batch; returns frames added."""
        with self._cv:
            self._seq[dev] += 1
            seq = self._seq[dev]
        args = (bytes(data), str(codec), int(width), int(height), [float(s) for s in stamps])
        reply = self.call(dev, "label", seq, *args)
        with self._cv:
            self._record(dev, reply["busy_s"])
            self.info[dev] = reply
            kept = self._states[dev][2] if dev in self._states else -1
            if seq > kept:
                q = self._replay[dev]
                q.append((seq, args))
                while len(q) > MAX_REPLAY_BATCHES:
                    q.popleft()
        return int(reply["frames"])

    def begin_phase(self, dev: str) -> bool:
        """Claim the robot's actor for a phase (False when another phase runs there)."""
        with self._cv:
            idx = self.assignment[dev]
            if idx in self._phase_actors:
                return False
            self._phase_actors.add(idx)
            return True

    def end_phase(self, dev: str, idx: int) -> None:
        with self._cv:
            self._phase_actors.discard(idx)
            self._cv.notify_all()

    def phase_free(self, dev: str) -> bool:
        with self._cv:
            return self.assignment[dev] not in self._phase_actors

    def run_phase(self, dev: str) -> PhaseOutcome | None:
        """One training phase on the robot's actor; its state afterwards is kept (and persisted)."""
        reply = self.call(dev, "run_phase")
        with self._cv:
            self._record(dev, reply["busy_s"])
            self.info[dev] = reply
        if reply["state"] is not None:
            self._keep(dev, reply["state"], reply["version"], reply["seq"])
        return reply["outcome"]

    def run_phases(self, devs: Sequence[str]) -> list[PhaseOutcome | Exception | None]:
        """One phase for each of ``devs``, fused in one step on their actor when they are all on
        the same one (``pool_fuse``); otherwise, or when a move or an actor's death interrupts
        the call, one phase after another. Per robot: its outcome, None, or the error of its
        phase (a diverged phase was undone on the actor)."""
        devs = list(devs)
        if len(devs) == 1:
            return [self._phase_or_error(devs[0])]
        with self._cv:
            while any(d in self._held for d in devs):
                self._cv.wait()
            on = {self.assignment[d] for d in devs}
            idx = on.pop() if len(on) == 1 else None
            ref, gen = (self.actors[idx], self.generation[idx]) if idx is not None else (None, None)
        if ref is None:
            return [self._phase_or_error(d) for d in devs]
        try:
            replies = ref.call("run_phases", devs)
        except RobotNotHere:  # one moved while the call travelled: none trained there
            return [self._phase_or_error(d) for d in devs]
        except ActorGone:
            self._recover(idx, gen)
            return [self._phase_or_error(d) for d in devs]
        out: list[PhaseOutcome | Exception | None] = []
        for dev, reply in zip(devs, replies):
            with self._cv:
                self._record(dev, reply["busy_s"])
                self.info[dev] = reply
            if reply["state"] is not None:
                self._keep(dev, reply["state"], reply["version"], reply["seq"])
            out.append(reply["error"] if reply["error"] is not None else reply["outcome"])
        return out

    def _phase_or_error(self, dev: str) -> PhaseOutcome | Exception | None:
        try:
            return self.run_phase(dev)
        except Exception as exc:  # the caller reports it per robot, as for a fused phase
            return exc

    def resync(self, dev: str, have_version: int, have_chain_tag: str, encoding: str | None) -> Resync:
        reply = self.call(dev, "resync", int(have_version), have_chain_tag, encoding)
        with self._cv:
            self.info[dev] = reply
        if reply["state"] is not None:
            self._keep(dev, reply["state"], reply["version"], self._states.get(dev, (b"", 0, -1))[2])
        return reply["resync"]

    def sampling_command(self, dev: str, now: float) -> tuple[float, float, float] | None:
        reply = self.call(dev, "sampling_command", float(now))
        with self._cv:
            self.info[dev] = reply
        return reply["command"]

    def configure(self, changes: dict[str, Any], devices: Sequence[str] | None = None) -> None:
        """Run-time settings for the robots (all by default); a bad value raises ValueError from the
        first robot (nothing changed). Kept, and applied again when a robot is restored."""
        for dev in (list(devices) if devices is not None else list(self.assignment)):
            reply = self.call(dev, "configure_robot", dict(changes))
            with self._cv:
                self.info[dev] = reply
                self.settings[dev].update({k: v for k, v in changes.items() if k != "reset"})

    def student_error(self, dev: str) -> float | None:
        return self.call(dev, "student_error")

    def persist(self, dev: str) -> None:
        """Take the robot's state now (e.g. at shutdown) and keep it (and write it to ``state_dir``)."""
        state, seq = self.call(dev, "export")
        self._keep(dev, state, int(decode_state_header(state)["version"]), seq)

    def _keep(self, dev: str, state: bytes, version: int, seq: int, persist: bool = True) -> None:
        """The robot's newest persisted state (a late, older one never replaces a newer one)."""
        with self._cv:
            old = self._states.get(dev)
            if old is not None and (old[1], old[2]) > (int(version), int(seq)):
                return
            self._states[dev] = (state, int(version), int(seq))
            q = self._replay[dev]
            while q and q[0][0] <= seq:
                q.popleft()
        if persist and self.store is not None:
            try:
                with self._save_lock:
                    atomic_write(self.store.path(dev), state)
            except OSError as exc:  # disk full, folder gone: keep serving, say so
                self.log("error", f"{dev}: could not save the session to {self.store.state_dir}: {exc}")

    def kept_state(self, dev: str) -> tuple[bytes, int, int]:
        """(state bytes, version, last batch seq) the pool would restore ``dev`` from."""
        with self._cv:
            return self._states[dev]

    # ------------------------------------------------------------------ load
    def _record(self, dev: str, busy_s: float) -> None:
        """Book ``busy_s`` of actor time to ``dev`` (the caller holds the condition)."""
        now = self.clock()
        q = self._busy[dev]
        q.append((now, float(busy_s)))
        while q and q[0][0] < now - self.config.load_window_s:
            q.popleft()

    def robot_load(self, dev: str, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._cv:
            return sum(b for t, b in self._busy[dev] if t >= now - self.config.load_window_s) / self.config.load_window_s

    def actor_load(self, idx: int, now: float | None = None) -> float:
        return sum(self.robot_load(d, now) for d in self.robots_on(idx))

    def _least_loaded(self, exclude: Sequence[int] = ()) -> int:
        now = self.clock()
        candidates = [i for i in self.live_actors() if i not in exclude]
        return min(candidates, key=lambda i: (round(self.actor_load(i, now), 3), len(self.robots_on(i)), i))

    def rebalance(self) -> PoolEvent | None:
        """Move one robot off an overloaded actor (busier than ``overload``) to the least-loaded
        one, when that lowers the busier of the two; a robot moves at most once per window."""
        now = self.clock()
        loads = {i: self.actor_load(i, now) for i in self.live_actors()}
        if len(loads) < 2:
            return None
        src = max(loads, key=lambda i: loads[i])
        if loads[src] <= self.config.overload or len(self.robots_on(src)) < 2:
            return None
        dst = min(loads, key=lambda i: (loads[i], len(self.robots_on(i))))
        if dst == src:
            return None
        candidates = []  # (dev, the busier of the two actors' loads after its move): moves that lower it
        for dev in self.robots_on(src):
            if now - self._moved_at.get(dev, float("-inf")) < self.config.load_window_s:
                continue
            r = self.robot_load(dev, now)
            peak = max(loads[src] - r, loads[dst] + r)
            if peak < loads[src]:
                candidates.append((dev, peak))
        if not candidates:
            return None
        utilities = self._utilities([d for d, _ in candidates])
        best, peak = min(candidates, key=lambda c: (utilities.get(c[0], 0.0), round(c[1], 6), c[0]))
        why = f"actor {src} at {loads[src]:.0%} > {self.config.overload:.0%}"
        if utilities and len({round(u, 9) for u in utilities.values()}) > 1:
            why += f"; lowest utility of those whose move lowers it ({utilities[best]:.3g} mIoU/GPU-s)"
        return self.move(best, dst, reason=why)

    def _utilities(self, devs: Sequence[str]) -> dict[str, float]:
        """``placement: utility``: each robot's utility from :attr:`utility` (empty, i.e. all
        equal, under ``load``, without a provider, or when it fails)."""
        if self.config.placement != UTILITY or self.utility is None:
            return {}
        try:
            return {d: float(self.utility(d)) for d in devs}
        except Exception as exc:  # noqa: BLE001 - the load rule still decides
            self.log("warning", f"robot utilities unavailable ({type(exc).__name__}: {exc}); placing by load")
            return {}

    # ------------------------------------------------------------------ moves
    def move(self, dev: str, target: int, reason: str = "") -> PoolEvent | None:
        """Move ``dev``'s session to actor ``target``: its state leaves the old actor and is
        restored on the new one while the robot's calls wait (its labelled samples and chain go
        with it). None when it is already there or moving."""
        with self._cv:
            if dev in self._held or self.assignment[dev] == target or target in self._down:
                return None
            src = self.assignment[dev]
            self._held.add(dev)
        try:
            try:
                state, seq = self._on_actor(src, "remove_robot", dev)
            except RobotNotHere:  # the source died meanwhile and the robot was restored elsewhere
                return None
            reply = self._on_actor(target, "add_robot", dev, state, self.settings[dev])
            with self._cv:
                self.assignment[dev] = target
                self.info[dev] = reply
                self._moved_at[dev] = self.clock()
            self._keep(dev, state, reply["version"], seq)
            event = PoolEvent("move", dev, src, target, int(reply["version"]),
                              f"{dev}: moved from actor {src} to actor {target} at v{reply['version']} of chain "
                              f"{reply['chain_tag']} ({len(state)} bytes){': ' + reason if reason else ''}")
        finally:
            with self._cv:
                self._held.discard(dev)
                self._cv.notify_all()
        self.events.append(event)
        self.log("info", event.message)
        return event

    # ------------------------------------------------------------------ recovery
    def _recover(self, idx: int, generation: int) -> None:
        """Handle the death of actor ``idx`` (unless someone already did): restore each of its
        robots from its kept state, with the batches labelled since replayed, on the least-loaded
        surviving actor (warm: no start-up wait), and start a replacement actor in the background
        (rebalancing moves robots onto it when the survivors are overloaded). A pool of one actor
        restores its robots on the replacement, once it is up."""
        with self._recover_lock:
            with self._cv:
                if self.generation[idx] != generation or idx in self._down:
                    return  # already handled
                robots = sorted(d for d, a in self.assignment.items() if a == idx)
                survivors = [i for i in range(len(self.actors)) if i != idx and i not in self._down]
                self._held.update(robots)
                self.generation[idx] = generation + 1
                self._down.add(idx)
                dead = self.actors[idx]
            t0 = time.monotonic()
            utilities = self._utilities(robots)  # outside the lock: the provider is the server's
            robots.sort(key=lambda d: -utilities.get(d, 0.0))  # the most to gain back first
            try:
                dead.kill()
                if not survivors:
                    self._install(idx, self._new_actor(idx, generation + 1))
                for dev in robots:
                    target = self._least_loaded() if survivors else idx
                    self._restore(dev, idx, target, t0)
            finally:
                with self._cv:
                    self._held.difference_update(robots)
                    self._cv.notify_all()
            if not robots:
                self.log("warning", f"actor {idx} died (no robots on it)")
            if survivors:
                t = threading.Thread(target=self._replace, args=(idx, generation + 1), daemon=True,
                                     name=f"session_pool_replace{idx}")
                self._replacers.append(t)
                t.start()

    def _restore(self, dev: str, dead: int, target: int, t0: float) -> None:
        with self._cv:
            ref = self.actors[target]
        state, _, _ = self._states[dev]
        reply = ref.call("add_robot", dev, state, self.settings[dev])
        with self._cv:
            replay = [(s, a) for s, a in self._replay[dev] if s > reply["seq"]]
        for seq, args in replay:
            try:
                reply = ref.call("label", dev, seq, *args)
            except Exception as exc:  # noqa: BLE001 - a batch that failed before fails again
                self.log("warning", f"{dev}: replaying batch {seq} failed: {exc}")
        with self._cv:
            self.info[dev] = reply
            self.assignment[dev] = target
        event = PoolEvent("recover", dev, dead, target, int(reply["version"]),
                          f"{dev}: actor {dead} died; restored on actor {target} ({ref.name}) at v{reply['version']} "
                          f"of chain {reply['chain_tag']} (+{len(replay)} batches replayed) in "
                          f"{time.monotonic() - t0:.1f} s")
        self.events.append(event)
        self.log("warning", event.message)

    def _install(self, idx: int, ref: ActorRef) -> None:
        with self._cv:
            self.actors[idx] = ref
            self._down.discard(idx)
            self._cv.notify_all()

    def _replace(self, idx: int, generation: int) -> None:
        """Start actor ``idx``'s replacement (retried every check period until it comes up)."""
        while not self._stop.is_set():
            try:
                ref = self._new_actor(idx, generation)
            except Exception as exc:  # noqa: BLE001 - e.g. the cluster lost the node: try again
                self.log("error", f"starting a replacement for actor {idx} failed: {type(exc).__name__}: {exc}")
                self._stop.wait(self.config.check_period_s)
                continue
            self._install(idx, ref)
            self.events.append(PoolEvent("replace", "", idx, idx, 0, f"actor {idx} replaced by {ref.name}"))
            self.log("info", f"actor {idx} replaced by {ref.name}")
            return

    def check(self) -> None:
        """Ping every actor (a dead one is replaced, its robots restored); then rebalance."""
        for idx in self.live_actors():
            with self._cv:
                ref, gen = self.actors[idx], self.generation[idx]
            try:
                ref.call("ping", timeout=30.0)
            except ActorGone:
                self._recover(idx, gen)
            except Exception as exc:  # noqa: BLE001 - a slow actor is not a dead one
                self.log("warning", f"actor {idx} did not answer a ping: {exc}")
        self.rebalance()

    def start_monitor(self) -> None:
        """Run :meth:`check` every ``check_period_s`` in a thread until :meth:`shutdown`."""
        def loop() -> None:
            while not self._stop.wait(self.config.check_period_s):
                try:
                    self.check()
                except Exception as exc:  # noqa: BLE001 - the monitor must outlive one failed check
                    self.log("error", f"pool check failed: {type(exc).__name__}: {exc}")

        self._monitor = threading.Thread(target=loop, name="session_pool_monitor", daemon=True)
        self._monitor.start()

    def stop_phases(self) -> None:
        """Ask every actor to end a running phase early (shutting down)."""
        for ref in list(self.actors):
            try:
                ref.call("stop", timeout=10.0)
            except Exception:  # noqa: BLE001 - a dead actor has no phase to stop
                pass

    def shutdown(self, save: bool = True) -> int:
        """Stop the monitor, keep (and persist) every robot's state, end the actors; returns the
        number of robots saved."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=30.0)
        for t in self._replacers:
            t.join(timeout=60.0)
        saved = 0
        if save:
            for dev in list(self.assignment):
                try:
                    self.persist(dev)
                    saved += 1
                except Exception as exc:  # noqa: BLE001 - the last kept state stays
                    self.log("error", f"{dev}: could not take its state at shutdown: {exc}")
        for ref in self.actors:
            ref.kill()
        return saved


def decode_state_header(data: bytes) -> dict[str, Any]:
    """The JSON header line of an encoded session state (version, chain tag), without the payload."""
    end = data.find(b"\n", len(MAGIC))
    return json.loads(data[len(MAGIC):end])


class PooledSession:
    """One robot's session in the pool, as the server nodes see a local
    :class:`~ams_ros.core.server.session.DeviceSession`: the same calls, forwarded to the robot's
    actor; the values read often (version, chain tag, newest stamp, readiness) are mirrored from
    each reply, so reading them costs no round trip. ``config`` is the session settings the
    actors were built with (``downlink`` and the like, for the logs)."""

    def __init__(self, pool: SessionPool, device_id: str, config: Any) -> None:
        self.pool = pool
        self.device_id = device_id
        self.config = config

    @property
    def _info(self) -> dict[str, Any]:
        return self.pool.info[self.device_id]

    @property
    def version(self) -> int:
        return int(self._info["version"])

    @property
    def chain_tag(self) -> str:
        return str(self._info["chain_tag"])

    @property
    def latest_t(self) -> float | None:
        return self._info["latest_t"]

    @property
    def update_period_s(self) -> float:
        return float(self._info["update_period_s"])

    @property
    def horizon_s(self) -> float:
        return float(self._info["horizon_s"])

    def ready(self) -> bool:
        info = self._info
        return int(info["new_samples"]) >= max(1, int(info["min_samples"]))

    def buffered(self, now: float) -> int:
        return int(self._info["buffered"])

    def downlink_kbps(self, now: float) -> float | None:
        return self._info["downlink_kbps"]

    def add_encoded_batch(self, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float],
                          label: Any = None, limits: Any = None) -> int:
        """Decoded and labelled on the robot's actor, by its teacher and batch limits (``label``
        and ``limits`` are the local session's and unused here)."""
        return self.pool.label(self.device_id, data, codec, width, height, stamps)

    def run_phase(self, now: float | None = None) -> PhaseOutcome | None:
        return self.pool.run_phase(self.device_id)

    def resync(self, have_version: int, have_chain_tag: str = "", encoding: str | None = None) -> Resync:
        return self.pool.resync(self.device_id, have_version, have_chain_tag, encoding)

    def sampling_command(self, now: float) -> tuple[float, float, float] | None:
        return self.pool.sampling_command(self.device_id, now)

    def reconfigure(self, update_encoding: str | None = None, **trainer_changes: Any) -> bool:
        changes = dict(trainer_changes)
        if update_encoding is not None:
            changes["update_encoding"] = update_encoding
        if changes:
            self.pool.configure(changes, [self.device_id])
        return True

    def configure(self, snapshot_encoding: str | None = None, min_samples: int | None = None) -> None:
        changes = {k: v for k, v in (("snapshot_encoding", snapshot_encoding), ("min_samples", min_samples))
                   if v is not None}
        if changes:
            self.pool.configure(changes, [self.device_id])

    def configure_rate_control(self, rate: Any, adaptive_period: Any, reset: bool = False) -> None:
        self.pool.configure({"rate": rate, "adaptive_period": adaptive_period, "reset": reset}, [self.device_id])

    def student_error(self) -> float | None:
        return self.pool.student_error(self.device_id)

