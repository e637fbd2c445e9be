"""What one actor of the base station's session pool runs (issue #12): several robots' sessions and a teacher.

With ``backend: ray`` the server process keeps the ROS side and the per-robot work moves out of
it: each actor of the pool (:mod:`ams_ros.core.fleet.pool`) holds a :class:`PoolWorker`, which
owns the :class:`~ams_ros.core.server.session.RobotSession` of each robot assigned to it
(student, Adam state, buffer, version chain, rate control) and the teachers that label their
frames. It is built from plain, picklable settings (:class:`WorkerSpec`, :class:`TeacherSpec`:
spec strings and file paths, never live models or keys), so the same class runs in-process
(tests, ``backend: local`` needs none of this) or in a Ray actor on another machine's GPU.

Moving a robot is exact: :meth:`PoolWorker.remove_robot` takes the session's persisted state
(:func:`~ams_ros.core.server.session_store.session_state`) under the batch lock and the phase lock
and drops the robot in one step, so every batch and phase is either in the exported state or
refused with :class:`RobotNotHere` (the pool then retries it where the robot went). Each batch
carries the pool's sequence number; an exported state says which was the last it holds, so the
pool can replay the batches a dead actor took with it.

No ROS and no Ray import here.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ams_ros.core import sources as _sources  # noqa: F401 (registers the synthetic world's oracle teacher)
from ams_ros.core.wire.frame_codec import BatchLimits
from ams_ros.core.models.params import fingerprint
from ams_ros.core.fleet.scheduling import student_error
from ams_ros.core.fleet.fused_training import run_fused_phases
from ams_ros.core.fleet.replies import AddReply, CommandReply, LabelReply, PhaseReply, Ping, ResyncReply, RobotInfo
from ams_ros.core.server.session import RobotSession, Resync, SessionConfig
from ams_ros.core.server.session_store import decode_state, encode_state, restore_session_state, session_state
from ams_ros.core.common.config import knob
from ams_ros.core.common.devices import configure_cudnn, resolve_device
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.core.models.labels import resolve_label_space
from ams_ros.core.models.teachers import build_robot_teachers, label_frames
from ams_ros.core.security.signing import SigningKey


class RobotNotHere(KeyError):
    """The robot is not (or no longer) on this actor: it was moved, or never assigned here."""


@dataclass
class WorkerSpec:
    """How an actor builds its robots' sessions: the student (a :class:`StudentSpec`), the
    session settings (``session.signing_key`` must be None: the key travels as
    ``signing_key_file``, a path the actor's machine can read), the torch device and threads."""

    student: Any  # ams_ros.core.models.weights.StudentSpec (picklable dataclass)
    session: SessionConfig
    signing_key_file: str = ""
    device: str = "auto"
    cudnn_benchmark: bool = False
    torch_threads: int = 0

    def __post_init__(self) -> None:
        if self.session.signing_key is not None:
            raise ValueError("WorkerSpec.session.signing_key must be None: pass the key's path as signing_key_file "
                             "(a live key does not travel to an actor)")


@dataclass
class TeacherSpec:
    """How an actor builds its teachers: one spec string per robot (robots sharing a spec share
    the teacher), the classes kept, the student's label space, the device, the batch limits."""

    specs: dict[str, str]
    selected_classes: tuple[str, ...] = ()
    label_space: str = "synthetic"
    device: str = "auto"
    max_batch: int = 0
    min_confidence: float = knob(0.0, "Pixels whose top softmax probability from the teacher is below this are "
                                      "labelled ignore: left out of training and of the gate's scores (0 = every "
                                      "pixel; PyTorch teachers only, the others give no scores)")
    limits: BatchLimits = field(default_factory=BatchLimits)


class PoolWorker:
    """The robots one actor serves. Thread-safe: labelling, a phase and snapshot requests of
    different robots (and labelling and a phase of the same robot) run concurrently, as in the
    server process."""

    def __init__(self, spec: WorkerSpec, name: str = "pool-worker") -> None:
        self.name = name
        self.spec = spec
        if spec.torch_threads:
            set_torch_threads(int(spec.torch_threads))
        self.device = resolve_device(spec.device)
        configure_cudnn(self.device, bool(spec.cudnn_benchmark))
        self.base = spec.student.load().to(self.device)
        self.fingerprint = fingerprint(self.base)
        key = None
        if spec.signing_key_file:
            key = SigningKey.load(spec.signing_key_file)
        self.config = replace(spec.session, signing_key=key)
        self.sessions: dict[str, RobotSession] = {}
        self._batch_locks: dict[str, threading.Lock] = {}
        self._applied_seq: dict[str, int] = {}
        self._lock = threading.Lock()  # guards the dicts above
        self.teachers: dict[str, Any] = {}
        self.teacher_spec: Optional[TeacherSpec] = None
        self.stopping = False

    def _session_config(self) -> SessionConfig:
        """Each robot's own copy (the key object is shared: it does not deep-copy)."""
        return replace(self.config, trainer=copy.deepcopy(self.config.trainer))

    # ------------------------------------------------------------------ membership
    def ping(self) -> Ping:
        with self._lock:
            robots = tuple(sorted(self.sessions))
        return Ping(self.name, os.getpid(), robots, str(self.device))

    def _session(self, dev: str) -> RobotSession:
        with self._lock:
            s = self.sessions.get(dev)
        if s is None:
            raise RobotNotHere(f"robot '{dev}' is not on actor {self.name} (robots here: {sorted(self.sessions)})")
        return s

    def _here(self, dev: str, session: RobotSession) -> None:
        with self._lock:
            if self.sessions.get(dev) is not session:
                raise RobotNotHere(f"robot '{dev}' left actor {self.name}")

    def add_robot(self, dev: str, state: bytes | None = None, config: dict[str, Any] | None = None) -> AddReply:
        """Serve ``dev`` here: from its persisted ``state`` (exported by another actor, or read
        from ``state_dir``) or, without one, a fresh chain. A state that does not restore is
        reported (``resumed`` False, ``error`` the reason) and the robot starts fresh: a session
        is restored whole or not at all. ``config``: run-time settings to apply (rate control,
        changed training settings) as :meth:`configure_robot` takes them."""
        session = RobotSession(dev, copy.deepcopy(self.base), self._session_config())
        resumed, error, kind, seq = False, "", "", -1
        if state is not None:
            try:
                decoded = decode_state(state, dev, self.fingerprint)
                restore_session_state(session, decoded)
                seq = int(decoded.get("pool_seq", -1))
                resumed = True
            except Exception as exc:  # noqa: BLE001 - never half-load: start fresh and say why
                kind = getattr(exc, "kind", "corrupt")
                error = f"{type(exc).__name__}: {exc}"
                session = RobotSession(dev, copy.deepcopy(self.base), self._session_config())
        session.trainer.stop_requested = lambda: self.stopping
        if config:
            _configure(session, config)
        with self._lock:
            self.sessions[dev] = session
            self._batch_locks[dev] = threading.Lock()
            self._applied_seq[dev] = seq
        return AddReply(self._info(session), resumed, error, kind, seq)

    def export(self, dev: str) -> tuple[bytes, int]:
        """The robot's persisted state (bytes of :func:`encode_state`) and the last batch it holds."""
        session = self._session(dev)
        with self._batch_locks[dev]:
            return self._export(dev, session)

    def _export(self, dev: str, session: RobotSession) -> tuple[bytes, int]:
        state = session_state(session)
        seq = self._applied_seq.get(dev, -1)
        state["pool_seq"] = int(seq)
        return encode_state(state), seq

    def remove_robot(self, dev: str) -> tuple[bytes, int]:
        """Export and drop ``dev`` in one step (after any batch or phase of it in hand)."""
        session = self._session(dev)
        with self._batch_locks[dev], session.lock:
            self._here(dev, session)
            data = self._export(dev, session)
            with self._lock:
                del self.sessions[dev]
                self._batch_locks.pop(dev, None)
                self._applied_seq.pop(dev, None)
        return data

    # ------------------------------------------------------------------ teacher
    def set_teachers(self, spec: TeacherSpec) -> str:
        """Build the teachers (one per distinct spec); returns where they run. ValueError when a
        teacher's classes do not match the student's."""
        import torch

        device = resolve_device(spec.device) if spec.device.strip().lower() not in ("", "auto") else \
            (self.device if self.device.type == "cuda" else torch.device("cpu"))
        student_space = resolve_label_space(spec.label_space, list(spec.selected_classes))
        self.teachers, where = build_robot_teachers(
            dict(spec.specs), spec.selected_classes, student_space, device,
            explicit=spec.device.strip().lower() not in ("", "auto"), max_batch=int(spec.max_batch),
            min_confidence=float(spec.min_confidence))
        self.teacher_spec = spec
        return where

    # ------------------------------------------------------------------ per-robot work
    def label(self, dev: str, seq: int, data: bytes, codec: str, width: int, height: int,
              stamps: list[float]) -> LabelReply:
        """Decode a robot's frame batch, label it with the robot's teacher and add it to its
        buffer; ``seq`` is the pool's number of this batch. Raises FrameCodecError for a batch
        that does not decode, RobotNotHere when the robot is not here."""

        if self.teacher_spec is None:
            raise RuntimeError(f"actor {self.name} has no teacher yet: call set_teachers first")
        session = self._session(dev)
        teacher = self.teachers[dev]
        t0 = time.perf_counter()
        with self._batch_locks[dev]:
            self._here(dev, session)
            n = session.add_encoded_batch(data, codec, int(width), int(height), stamps,
                                          lambda frames, st: label_frames(teacher, frames, st),
                                          limits=self.teacher_spec.limits)
            self._applied_seq[dev] = max(self._applied_seq.get(dev, -1), int(seq))
        return LabelReply(self._info(session), n, time.perf_counter() - t0)

    def run_phase(self, dev: str) -> PhaseReply:
        """A training phase (None outcome when there was nothing to train) and, after it, the
        robot's persisted state (the pool keeps the latest, to restore the robot elsewhere)."""
        session = self._session(dev)
        t0 = time.perf_counter()
        with session.lock:
            self._here(dev, session)
            outcome = session.run_phase()
        busy = time.perf_counter() - t0
        state, seq = None, -1
        if outcome is not None:
            try:
                state, seq = self.export(dev)
            except RobotNotHere:  # moved right after the phase: its new actor has this phase in its state
                pass
        return PhaseReply(self._info(session), outcome, None, busy, state, seq)

    def run_phases(self, devs: list[str]) -> list[PhaseReply]:
        """One phase for each of ``devs`` (robots on this actor), their students trained in one
        fused step (``run_fused_phases``); per robot the reply :meth:`run_phase` gives, with
        ``error`` set (and no outcome) for a phase that diverged and was undone."""
        sessions = [self._session(d) for d in devs]
        t0 = time.perf_counter()
        with ExitStack() as held:
            for dev, session in sorted(zip(devs, sessions), key=lambda x: x[0]):
                held.enter_context(session.lock)
                self._here(dev, session)
            outcomes = run_fused_phases(sessions)
        busy = (time.perf_counter() - t0) / max(1, len(devs))  # each robot's share of the fused step
        replies = []
        for dev, session, outcome in zip(devs, sessions, outcomes):
            error = outcome if isinstance(outcome, Exception) else None
            state, seq = None, -1
            if error is None and outcome is not None:
                try:
                    state, seq = self.export(dev)
                except RobotNotHere:
                    pass
            replies.append(PhaseReply(self._info(session), None if error is not None else outcome, error, busy,
                                      state, seq))
        return replies

    def resync(self, dev: str, have_version: int, have_chain_tag: str, encoding: str | None) -> ResyncReply:
        session = self._session(dev)
        with session.lock:
            self._here(dev, session)
            answer: Resync = session.resync(int(have_version), have_chain_tag, encoding)
            state = self._export(dev, session)[0] if answer.warning else None  # a raised floor must persist
        return ResyncReply(self._info(session), answer, state)

    def rollback(self, dev: str, to: int | str, encoding: str | None) -> ResyncReply:
        """(issue #29) An operator's rollback (:meth:`RobotSession.rollback`); the new version's state
        comes back to be kept, as after a phase. ValueError, nothing changed, for a version out of reach."""
        session = self._session(dev)
        with session.lock:
            self._here(dev, session)
            answer: Resync = session.rollback(to, encoding)
            state = self._export(dev, session)[0]
        return ResyncReply(self._info(session), answer, state)

    def sampling_command(self, dev: str, now: float) -> CommandReply:
        session = self._session(dev)
        return CommandReply(self._info(session), session.sampling_command(float(now)))

    def configure_robot(self, dev: str, changes: dict[str, Any]) -> RobotInfo:
        """Run-time settings (see :func:`_configure`); ValueError, nothing changed, for a bad value."""
        session = self._session(dev)
        _configure(session, changes)
        return self._info(session)

    def student_error(self, dev: str, frames: int = 4) -> float | None:
        """The scheduler's utility signal: the student's error on the newest labelled frames."""
        session = self._session(dev)
        latest = session.latest_t
        if latest is None:
            return None
        entries = session.trainer.buffer.window(latest, session.trainer.config.horizon_s)[-frames:]
        if not entries:
            return None
        with session.lock:
            return float(student_error(session.model, entries))

    def stop(self) -> None:
        """End a running phase early (it is undone, as in the server process) and refuse new ones."""
        self.stopping = True

    def info(self, dev: str) -> RobotInfo:
        return self._info(self._session(dev))

    @staticmethod
    def _info(session: RobotSession) -> RobotInfo:
        """What the server process mirrors of a robot (no round trip to read it)."""
        latest = session.latest_t
        horizon = float(session.trainer.config.horizon_s)
        return RobotInfo(
            device_id=session.device_id, version=int(session.version), chain_tag=session.chain_tag,
            latest_t=latest, new_samples=int(session.new_samples), min_samples=int(session.config.min_samples),
            update_period_s=float(session.update_period_s), horizon_s=horizon, phase=int(session.trainer.phase),
            buffered=len(session.trainer.buffer.window(latest, horizon)) if latest is not None else 0,
            downlink_kbps=session.budget.average_kbps(latest) if latest is not None and session.budget.enabled
            else None,
            downlink_budget_kbps=float(session.config.downlink.downlink_budget_kbps),
            discarded_phases=int(session.discarded_phases), last_discard=session.last_discard,
            unjudged_phases=int(session.unjudged_phases), last_unjudged=session.last_unjudged,
            refused_batches=int(session.refused_batches), refused_frames=int(session.refused_frames),
            last_refusal=session.last_refusal)


def _configure(session: RobotSession, changes: dict[str, Any]) -> None:
    """Apply run-time settings to a session: ``rate`` / ``adaptive_period`` (with ``reset``),
    ``update_encoding`` and the trainer's dynamic settings, ``snapshot_encoding``, ``min_samples``."""
    changes = dict(changes)
    rate, period = changes.pop("rate", None), changes.pop("adaptive_period", None)
    reset = bool(changes.pop("reset", False))
    if rate is not None and period is not None:
        session.configure_rate_control(rate, period, reset=reset)
    snapshot_encoding, min_samples = changes.pop("snapshot_encoding", None), changes.pop("min_samples", None)
    encoding = changes.pop("update_encoding", None)
    if encoding is not None or changes:
        session.reconfigure(update_encoding=encoding, **changes)
    if snapshot_encoding is not None or min_samples is not None:
        session.configure(snapshot_encoding=snapshot_encoding, min_samples=min_samples)
