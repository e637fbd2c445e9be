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
  version chain (a robot ahead of the restored chain is handled by ``RobotSession.resync``).

The transport is an :class:`~ams_ros.core.fleet.transports.ActorRef`; the load rules and moves are in
:mod:`~ams_ros.core.fleet.pool_load`, the recovery in :mod:`~ams_ros.core.fleet.pool_recovery`. No ROS import.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

from ams_ros.core.fleet.pool_config import MAX_REPLAY_BATCHES, PoolConfig
from ams_ros.core.fleet.pool_events import PoolEvent
from ams_ros.core.fleet.pool_load import LoadBalancing
from ams_ros.core.fleet.pool_recovery import Recovery
from ams_ros.core.fleet.replies import AddReply, ResyncReply, RobotInfo
from ams_ros.core.fleet.transports import ActorGone, ActorRef
from ams_ros.core.fleet.worker import RobotNotHere, TeacherSpec
from ams_ros.core.server.session import PhaseOutcome, Resync
from ams_ros.core.server.session_store import MAGIC, SessionStore, atomic_write


class SessionPool(LoadBalancing, Recovery):
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
        self.info: dict[str, RobotInfo] = {}  # each robot's mirrored session info
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
            self.info[dev] = reply.info
            reports.append(self._start_report(dev, idx, data, reply))
            state, seq = self.actors[idx].call("export", dev)
            self._keep(dev, state, reply.info.version, seq, persist=False)
        return reports

    def _start_report(self, dev: str, idx: int, data: bytes | None, reply: AddReply) -> dict[str, Any]:
        where = f"actor {idx}"
        if data is None:
            return {"message": f"{dev}: on {where}; no saved session, starting a new chain {reply.info.chain_tag} at v0",
                    "warning": False}
        if reply.resumed:
            return {"message": f"{dev}: on {where}; resumed chain {reply.info.chain_tag} at v{reply.info.version} "
                               f"(phase {reply.info.phase}) from {self.store.path(dev)}", "warning": False}
        dest = self.store.set_aside(self.store.path(dev), reply.kind or "corrupt")
        return {"message": f"{dev}: saved session is {reply.kind or 'corrupt'} ({reply.error}); set it aside "
                           f"as {dest} and started a new chain {reply.info.chain_tag} at v0 on {where}",
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
            self._record(dev, reply.busy_s)
            self.info[dev] = reply.info
            kept = self._states[dev][2] if dev in self._states else -1
            if seq > kept:
                q = self._replay[dev]
                q.append((seq, args))
                while len(q) > MAX_REPLAY_BATCHES:
                    q.popleft()
        return int(reply.frames)

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
            self._record(dev, reply.busy_s)
            self.info[dev] = reply.info
        if reply.state is not None:
            self._keep(dev, reply.state, reply.info.version, reply.seq)
        return reply.outcome

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
                self._record(dev, reply.busy_s)
                self.info[dev] = reply.info
            if reply.state is not None:
                self._keep(dev, reply.state, reply.info.version, reply.seq)
            out.append(reply.error if reply.error is not None else reply.outcome)
        return out

    def _phase_or_error(self, dev: str) -> PhaseOutcome | Exception | None:
        try:
            return self.run_phase(dev)
        except Exception as exc:  # the caller reports it per robot, as for a fused phase
            return exc

    def resync(self, dev: str, have_version: int, have_chain_tag: str, encoding: str | None) -> Resync:
        return self._answered(dev, self.call(dev, "resync", int(have_version), have_chain_tag, encoding))

    def rollback(self, dev: str, to: int | str, encoding: str | None = None) -> Resync:
        """(issue #29) Roll ``dev`` back on its actor; its new state is kept like a phase's."""
        return self._answered(dev, self.call(dev, "rollback", to, encoding))

    def _answered(self, dev: str, reply: ResyncReply) -> Resync:
        """A resync or rollback answer: the robot's info mirrored, its changed state (if any) kept."""
        with self._cv:
            self.info[dev] = reply.info
        if reply.state is not None:
            self._keep(dev, reply.state, reply.info.version, self._states.get(dev, (b"", 0, -1))[2])
        return reply.resync

    def sampling_command(self, dev: str, now: float) -> tuple[float, float, float] | None:
        reply = self.call(dev, "sampling_command", float(now))
        with self._cv:
            self.info[dev] = reply.info
        return reply.command

    def configure(self, changes: dict[str, Any], devices: Sequence[str] | None = None) -> None:
        """Run-time settings for the robots (all by default); a bad value raises ValueError from the
        first robot (nothing changed). Kept, and applied again when a robot is restored."""
        for dev in (list(devices) if devices is not None else list(self.assignment)):
            info = self.call(dev, "configure_robot", dict(changes))
            with self._cv:
                self.info[dev] = info
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
