"""Where a base station's robots train and get labelled: one :class:`Backend` interface, two kinds.

- :class:`LocalBackend` (``backend: local``): every robot's :class:`~ams_ros.core.server.session.RobotSession`
  and its teacher in this process; one phase at a time (one lane); each session saved to
  ``state_dir`` after its phases and at shutdown.
- :class:`PoolBackend` (``backend: ray``): the sessions and teachers in a
  :class:`~ams_ros.core.fleet.pool.SessionPool` of actors; one lane per actor (robots on different
  actors, i.e. GPUs, train at once), fused phases of one actor's robots with ``pool_fuse``; the
  pool persists every robot itself.

The base station (:mod:`~ams_ros.core.fleet.base_station`) and its phase loop
(:mod:`~ams_ros.core.fleet.phase_loop`) talk to robots only through this interface, and the
server nodes only through those: no node asks which backend it runs on.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.pooled_session import PooledSession
from ams_ros.core.fleet.scheduling import student_error
from ams_ros.core.fleet.transports import disconnect_ray
from ams_ros.core.fleet.worker import TeacherSpec
from ams_ros.core.models.labels import resolve_label_space
from ams_ros.core.models.teachers import build_robot_teachers, label_frames
from ams_ros.core.server.session import PhaseOutcome, Resync, RobotSession, SessionConfig
from ams_ros.core.server.session_store import SessionStore

Log = Callable[[str, str], None]  # (level: "info" | "warning" | "error", text)
Outcome = Optional[PhaseOutcome] | Exception


class RobotHandle(Protocol):
    """What the base station does with one robot's session: a local
    :class:`~ams_ros.core.server.session.RobotSession` or a pool's
    :class:`~ams_ros.core.fleet.pooled_session.PooledSession`."""

    device_id: str
    config: SessionConfig

    @property
    def version(self) -> int: ...

    @property
    def chain_tag(self) -> str: ...

    @property
    def latest_t(self) -> float | None: ...

    @property
    def update_period_s(self) -> float: ...

    @property
    def horizon_s(self) -> float: ...

    discarded_phases: int  # (issue #29) phases the gate kept from shipping, and why the last one
    last_discard: str
    unjudged_phases: int  # (issue #29) phases shipped unjudged across a scene change, and why the last one
    last_unjudged: str
    refused_batches: int  # (issue #29) batches and frames the label checks kept from training, and why the last
    refused_frames: int
    last_refusal: str

    def ready(self) -> bool: ...

    def buffered(self, now: float) -> int: ...

    def downlink_kbps(self, now: float) -> float | None: ...

    def resync(self, have_version: int, have_chain_tag: str = "", encoding: str | None = None) -> Resync: ...

    def rollback(self, to: int | str, encoding: str | None = None) -> Resync: ...

    def sampling_command(self, now: float) -> tuple[float, float, float] | None: ...

    def reconfigure(self, update_encoding: str | None = None, **trainer_changes: Any) -> bool: ...

    def configure(self, snapshot_encoding: str | None = None, min_samples: int | None = None) -> None: ...

    def configure_rate_control(self, rate: Any, adaptive_period: Any, reset: bool = False) -> None: ...


class Backend(ABC):
    """The robots' sessions and teachers, and the lanes their phases run in."""

    sessions: dict[str, RobotHandle]
    #: phases that may run at once (one per GPU)
    lanes: int = 1
    #: robots of one lane that are due together train in one fused step
    fuse: bool = False

    def __init__(self) -> None:
        self._busy_lanes: set[int] = set()
        self._lanes_lock = threading.Lock()

    @abstractmethod
    def lane_of(self, robot: str) -> int:
        """The lane (actor) the robot's phases run in."""

    def lane_free(self, robot: str) -> bool:
        with self._lanes_lock:
            return self.lane_of(robot) not in self._busy_lanes

    def claim(self, robot: str) -> bool:
        """Take the robot's lane for a phase (False: another phase runs there)."""
        with self._lanes_lock:
            lane = self.lane_of(robot)
            if lane in self._busy_lanes:
                return False
            self._busy_lanes.add(lane)
            return True

    def release(self, lane: int) -> None:
        with self._lanes_lock:
            self._busy_lanes.discard(lane)

    @abstractmethod
    def run_phases(self, robots: Sequence[str]) -> list[Outcome]:
        """One phase per robot (fused when ``fuse`` and they share a lane): per robot its outcome,
        None (nothing to train, or stopping) or the exception that ended its phase."""

    @abstractmethod
    def set_teachers(self, spec: TeacherSpec, device: torch.device | None) -> str:
        """Build the robots' teachers (``device``: the local one, resolved by the caller); returns
        where they run. ValueError when a teacher's classes do not fit the student's."""

    @abstractmethod
    def label(self, robot: str, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float]) -> int:
        """Decode a frame batch, label it with the robot's teacher, buffer it; frames added."""

    @abstractmethod
    def student_error(self, robot: str, frames: int) -> float | None:
        """The student's error against the teacher on the robot's newest ``frames`` labelled frames."""

    def after_phase(self, robot: str) -> None:
        """Persist the robot after a phase or a changed chain floor (where the backend does not itself)."""

    def stop_phases(self) -> None:
        """Ask running phases to end early (shutting down)."""

    @abstractmethod
    def close(self, save: bool) -> int:
        """Shut down (after the phase loop stopped); returns the number of sessions saved."""

    @abstractmethod
    def describe(self) -> str:
        """Where the robots train, for the log."""

    def set_teacher_fault(self, one_class: int) -> None:
        """Test-only fault injection (``make faults``, issue #29): every robot's teacher labels every
        pixel ``one_class`` (-1 = off). Only where the teachers run in this process."""
        if one_class >= 0:
            raise ValueError(f"fault_teacher_one_class {one_class}: test-only fault injection works with the local "
                             f"backend only (the teachers run on the pool's actors here); set it back to -1")


class LocalBackend(Backend):
    """Every session and teacher in this process, one lane."""

    def __init__(self, sessions: dict[str, RobotSession], store: SessionStore | None, device: torch.device,
                 log: Log, stopping: Callable[[], bool]) -> None:
        super().__init__()
        self.sessions = dict(sessions)
        self.store, self.device, self.log = store, device, log
        self.teachers: dict[str, Any] = {}
        self.teacher_spec: Optional[TeacherSpec] = None
        self.fault_one_class = -1  # test-only (set_teacher_fault)
        self._save_lock = threading.Lock()
        for session in self.sessions.values():
            session.trainer.stop_requested = stopping  # a stop ends a phase early (it is rolled back)

    @classmethod
    def build(cls, robots: Sequence[str], base: nn.Module, config: Callable[[], SessionConfig],
              store: SessionStore | None, device: torch.device, log: Log,
              stopping: Callable[[], bool]) -> "LocalBackend":
        """Each robot's session resumed from ``store`` (when it holds a usable one) or new."""
        sessions = {}
        for robot in robots:
            if store is not None:
                loaded = store.load(robot, base, config())
                log("warning" if loaded.warning else "info", loaded.message)
                sessions[robot] = loaded.session
            else:
                sessions[robot] = RobotSession(robot, copy.deepcopy(base), config())
        return cls(sessions, store, device, log, stopping)

    def lane_of(self, robot: str) -> int:
        return 0

    def run_phases(self, robots: Sequence[str]) -> list[Outcome]:
        out: list[Outcome] = []
        for robot in robots:
            try:
                out.append(self.sessions[robot].run_phase())
            except Exception as exc:  # noqa: BLE001 - reported per robot by the phase loop
                out.append(exc)
        return out

    def set_teachers(self, spec: TeacherSpec, device: torch.device | None) -> str:
        space = resolve_label_space(spec.label_space, list(spec.selected_classes))
        self.teachers, where = build_robot_teachers(
            dict(spec.specs), list(spec.selected_classes), space, device,
            explicit=spec.device.strip().lower() not in ("", "auto"), max_batch=int(spec.max_batch),
            min_confidence=float(spec.min_confidence))
        self.teacher_spec = spec
        return where

    def set_teacher_fault(self, one_class: int) -> None:
        self.fault_one_class = int(one_class)

    def label(self, robot: str, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float]) -> int:
        if self.teacher_spec is None:
            raise RuntimeError("no teachers yet: build the teacher_labeler of this process (set_teachers)")
        teacher, one_class = self.teachers[robot], self.fault_one_class

        def label(frames: list, st: list) -> list:
            labels = label_frames(teacher, frames, st)
            if one_class >= 0:  # test-only fault injection: a teacher gone wrong (issue #29)
                labels = [np.full_like(lab, one_class) for lab in labels]
            return labels
        return self.sessions[robot].add_encoded_batch(data, codec, width, height, stamps, label,
                                                      limits=self.teacher_spec.limits)

    def student_error(self, robot: str, frames: int) -> float | None:
        session = self.sessions[robot]
        latest = session.latest_t
        if latest is None:
            return None
        with session.lock:
            entries = session.trainer.buffer.window(latest, session.trainer.config.horizon_s)
            return student_error(session.model, entries[-frames:])

    def after_phase(self, robot: str) -> None:
        """Write the robot's session to ``state_dir`` (atomically); a failure is logged, never fatal."""
        if self.store is None:
            return
        try:
            with self._save_lock:
                self.store.save(self.sessions[robot])
        except Exception as exc:  # noqa: BLE001 - disk full, folder gone: keep serving, say so
            self.log("error", f"{robot}: could not save the session to {self.store.state_dir}: {exc}")

    def close(self, save: bool) -> int:
        if not save or self.store is None:
            return 0
        for robot in self.sessions:
            self.after_phase(robot)
        return len(self.sessions)

    def describe(self) -> str:
        return str(self.device)


class PoolBackend(Backend):
    """The sessions and teachers in a :class:`SessionPool` of actors, one lane per actor."""

    def __init__(self, pool: SessionPool, configs: dict[str, SessionConfig]) -> None:
        super().__init__()
        self.pool = pool
        self.lanes = pool.config.actors
        self.fuse = bool(pool.config.fuse)
        self.sessions = {robot: PooledSession(pool, robot, cfg) for robot, cfg in configs.items()}

    def lane_of(self, robot: str) -> int:
        return self.pool.actor_of(robot)

    def lane_free(self, robot: str) -> bool:
        return self.pool.phase_free(robot)

    def claim(self, robot: str) -> bool:
        return self.pool.begin_phase(robot)

    def release(self, lane: int) -> None:
        self.pool.end_phase("", lane)

    def run_phases(self, robots: Sequence[str]) -> list[Outcome]:
        if len(robots) == 1:
            try:
                return [self.pool.run_phase(robots[0])]
            except Exception as exc:  # noqa: BLE001 - reported per robot by the phase loop
                return [exc]
        return self.pool.run_phases(robots)

    def set_teachers(self, spec: TeacherSpec, device: torch.device | None) -> str:
        return "the pool's actors: " + self.pool.set_teachers(spec)

    def label(self, robot: str, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float]) -> int:
        return self.pool.label(robot, data, codec, width, height, stamps)

    def student_error(self, robot: str, frames: int) -> float | None:
        return self.pool.student_error(robot)

    def stop_phases(self) -> None:
        self.pool.stop_phases()

    def close(self, save: bool) -> int:
        saved = self.pool.shutdown(save=save)
        disconnect_ray()
        return saved

    def describe(self) -> str:
        pool = self.pool
        placement = "; ".join(f"actor {i}: {', '.join(pool.robots_on(i)) or '-'}" for i in range(len(pool.actors)))
        return f"{len(pool.actors)} Ray actor(s) (robots {placement})"
