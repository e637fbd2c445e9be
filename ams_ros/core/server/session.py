"""Server-side state of AMS for one edge device (paper Algorithm 1), free of ROS.

One base station serves many robots; each has its own buffer, trainer state, version chain,
sampling-rate controller and update period. The ROS server nodes, the demo and the
evaluation harness drive this class; they differ only in how bytes travel.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.wire.frame_codec import BatchLimits, FrameCodecError, decode_frames
from ams_ros.core.common.config import check_choice, knob
from ams_ros.core.server.downlink_budget import DownlinkBudget, DownlinkBudgetConfig, PhasePlan
from ams_ros.core.server.rate_control import (
    AdaptivePeriodConfig,
    AdaptiveTrainingPeriod,
    RateControlConfig,
    SamplingRateController,
)
from ams_ros.core.server.label_checks import LabelCheckConfig, LabelChecks
from ams_ros.core.server.quality_gate import GateConfig, drifted, held_out, scene_changed, score, verdict
from ams_ros.core.server.trainer import AMSTrainer
from ams_ros.core.server.stop_hooks import PhaseInterrupted
from ams_ros.core.server.trainer_config import PhaseResult, TrainerConfig
from ams_ros.core.models.params import flatten_params, write_flat
from ams_ros.core.security.signing import SigningKey, sign_update
from ams_ros.core.wire.encodings import (
    DEFAULT_UPDATE_ENCODING, ENCODINGS, decode_update, encode_snapshot, encode_catch_up)
from ams_ros.core.wire.update import EncodedUpdate, encoded_size
from ams_ros.core.server.shipping import UnencodableValues, ship_update


def new_chain_tag() -> str:
    """A random id for a new version chain (64 bits: two server runs never draw the same)."""
    return secrets.token_hex(8)


@dataclass
class Resync:
    """What the server sends a robot that asked to resync, and why (for both sides' logs)."""

    update: EncodedUpdate
    kind: str  # "catch_up" | "snapshot"
    reason: str
    warning: str = ""  # set when the robot was ahead of the server's chain


@dataclass
class SessionConfig:
    """Per-device server settings; trainer settings live in ``trainer``, the sampling-rate rule
    in ``rate`` and the adaptive update period in ``adaptive_period``."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    update_encoding: str = knob(DEFAULT_UPDATE_ENCODING, "Encoding of sparse updates", choices=tuple(ENCODINGS))
    # (issue #10) a per-robot downlink budget: gamma and the encoding chosen per phase to keep it
    downlink: DownlinkBudgetConfig = field(default_factory=DownlinkBudgetConfig)
    snapshot_encoding: str = knob("paper_gzip_fp16", "Encoding of full snapshots (a value encoding, not residual_*)",
                                  choices=tuple(n for n, e in ENCODINGS.items() if not e.residual))
    # (issue #13) the base station's Ed25519 key: every update, catch-up and snapshot is signed for
    # its robot (ams_ros.core.security.signing); None = unsigned
    signing_key: Optional[SigningKey] = None
    min_samples: int = knob(1, "New labelled samples needed before a phase runs")
    rate: RateControlConfig = field(default_factory=RateControlConfig)
    adaptive_period: AdaptivePeriodConfig = field(default_factory=AdaptivePeriodConfig)
    # (issue #29) the gate on each phase: held-out newest frames, the margin in mIoU points
    gate: GateConfig = field(default_factory=GateConfig)
    # (issue #29) the checks a batch's frames and teacher labels pass before they are trained on
    labels: LabelCheckConfig = field(default_factory=LabelCheckConfig)
    catch_up_versions: int = knob(8, "Phases whose changed coordinates the server keeps, to answer a robot up to "
                                     "this many versions behind with one catch-up update instead of a snapshot "
                                     "(0 = always a snapshot)")

    def __post_init__(self) -> None:
        check_choice("update_encoding", self.update_encoding, tuple(ENCODINGS))
        if self.catch_up_versions < 0:
            raise ValueError(f"catch_up_versions must be >= 0, got {self.catch_up_versions}")


#: (issue #29) :meth:`RobotSession.rollback` to the weights the session started from
START = "start"


class TrainingDiverged(RuntimeError):
    """A phase produced weights the update encoding cannot carry (NaN/Inf, or past float16).
    The phase was undone: the server's copy, Adam state and version are as before it."""


@dataclass
class PhaseOutcome:
    """A trained phase and the update that carries it to the edge."""

    update: EncodedUpdate
    result: PhaseResult
    wall_s: float
    plan: Optional[PhasePlan] = None  # the downlink budget's choice of gamma and encoding, when one is set
    # (issue #29) the gate's mIoU (points) of the running model and of this phase on the held-out frames
    gate_scores: Optional[tuple[float, float]] = None
    # (issue #29) set when this update sends the robot back to its starting weights (drift_phases) instead
    # of shipping the phase: why
    reset: str = ""


@dataclass
class PhaseStart:
    """A phase between :meth:`RobotSession.begin_phase` and :meth:`RobotSession.finish_phase`."""

    now: float
    ckpt: Any
    configured: TrainerConfig
    plan: Optional[PhasePlan]
    encoding: str
    before: Optional[np.ndarray]
    phase: int
    # (issue #29) the frames held out to judge the phase, the running model's score on them, and the
    # stream time training uses frames up to (``now`` without a gate)
    held: list = field(default_factory=list)
    running_score: float = float("nan")
    train_now: float = 0.0
    start_score: float = float("nan")  # the starting weights' score on the held-out frames
    # the running model's score on the previous phase's held-out frames (gate_scene_drop)
    previous_score: float = float("nan")


class RobotSession:
    """Buffer, trainer, version chain and rate control for one device."""

    def __init__(self, device_id: str, model: nn.Module, config: SessionConfig | None = None) -> None:
        self.device_id = device_id
        self.config = config or SessionConfig()
        self.trainer = AMSTrainer(model, self.config.trainer)
        self.version = 0
        # the version chain this session makes; drawn here, persisted with the session
        self.chain_tag = new_chain_tag()
        # (new_version, indices changed by the phase that made it, their values before it, None when
        # unknown): the last catch_up_versions phases, for catch-ups and (issue #29) rollbacks
        self.history: deque[tuple[int, np.ndarray, Optional[np.ndarray]]] = deque(
            maxlen=max(1, self.config.catch_up_versions))
        # (issue #29) the weights the session started from (the pretrained student), for a rollback
        self.start_weights = flatten_params(model).detach().cpu().numpy().copy()
        self.lock = threading.RLock()  # guards model + version: a snapshot never sees half a phase
        self._rate_lock = threading.Lock()  # guards rate control and queued setting changes
        self._pending: dict[str, Any] = {}
        self.reset_rate_control()
        self.budget = DownlinkBudget(self.config.downlink, self.config.trainer.update_period_s)
        self.new_samples = 0
        self.diverged_phases = 0
        self.discarded_phases = 0  # (issue #29) phases the gate kept from shipping
        self.last_discard = ""
        self.unjudged_phases = 0  # (issue #29) phases shipped unjudged across a scene change, and why the last
        self.last_unjudged = ""
        self._previous_held: list = []  # the previous phase's held-out frames (gate_scene_drop)
        # (issue #29) batches (and frames of kept batches) the label checks kept from training, and why
        self.label_checks = LabelChecks(self.config.labels, self.config.trainer.ignore_index)
        self.refused_batches = 0
        self.drift_streak = 0  # (issue #29) phases in a row below the starting weights
        self._start: Optional[nn.Module] = None
        self.refused_frames = 0
        self.last_refusal = ""
        self.rollbacks = 0  # (issue #29) operator rollbacks
        self.last_phase_wall_s = 0.0
        self.latest_t: Optional[float] = None

    def _sign(self, update: EncodedUpdate) -> None:
        if self.config.signing_key is not None:
            sign_update(update, self.device_id, self.config.signing_key)

    def reset_rate_control(self) -> None:
        """(Re)build the sampling-rate and update-period controllers from ``config``."""
        c = self.config
        self.rate = SamplingRateController.from_config(c.rate)
        self.period = AdaptiveTrainingPeriod.from_config(c.adaptive_period, c.trainer.update_period_s)
        self.update_period_s = c.trainer.update_period_s

    def configure_rate_control(self, rate: RateControlConfig, adaptive_period: AdaptivePeriodConfig,
                               reset: bool = False) -> None:
        """The ASR controller's settings. ``reset`` (start-up) rebuilds the controllers, starting
        at ``rate.r_init``; otherwise (a change at run time) they keep their current rate and
        period, clipped into the new bounds."""
        with self._rate_lock:  # not the phase lock: rate commands never wait for training
            self.config = replace(self.config, rate=rate, adaptive_period=adaptive_period)
            if reset:
                self.reset_rate_control()
            else:
                self.rate.reconfigure(rate)
                self.period.reconfigure(adaptive_period, self.config.trainer.update_period_s)

    def reconfigure(self, update_encoding: str | None = None, **trainer_changes: Any) -> bool:
        """Change training settings (``update_encoding`` and :meth:`AMSTrainer.reconfigure`'s).

        Validated at once (ValueError, nothing changed, when a value is invalid); applied at once
        when no phase runs, else when the running phase has ended, never in the middle of one.
        Returns True when applied at once."""
        if update_encoding is not None:
            check_choice("update_encoding", update_encoding, tuple(ENCODINGS))
        fixed = [k for k in trainer_changes if k in AMSTrainer.FIXED_AT_START]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change while training: start a new session")
        replace(self.trainer.config, **trainer_changes)  # validates (TrainerConfig.__post_init__)
        with self._rate_lock:
            if update_encoding is not None:
                self._pending["update_encoding"] = update_encoding
            self._pending.update(trainer_changes)
        if self.lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self.lock.release()
            return True
        return False

    def configure(self, snapshot_encoding: str | None = None, min_samples: int | None = None) -> None:
        """Settings read outside a phase (when a snapshot is served, when a phase is due)."""
        if snapshot_encoding is not None:
            check_choice("snapshot_encoding", snapshot_encoding,
                         tuple(n for n, e in ENCODINGS.items() if not e.residual))
        if min_samples is not None and min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        with self._rate_lock:
            self.config = replace(self.config, snapshot_encoding=snapshot_encoding or self.config.snapshot_encoding,
                                  min_samples=self.config.min_samples if min_samples is None else int(min_samples))

    def _apply_pending(self) -> None:
        """Apply queued setting changes; the caller holds the phase lock."""
        with self._rate_lock:
            changes, self._pending = self._pending, {}
            if not changes:
                return
            encoding = changes.pop("update_encoding", None)
            before = self.trainer.config.update_period_s
            cfg = self.trainer.reconfigure(**changes) if changes else self.trainer.config
            if cfg.update_period_s != before:
                self.period.reconfigure(self.config.adaptive_period, cfg.update_period_s)
                self.update_period_s = self.period.period_s if self.config.adaptive_period.enabled else cfg.update_period_s
            self.config = replace(self.config, trainer=cfg, update_encoding=encoding or self.config.update_encoding)

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    def add_labeled(self, t: float, frame: np.ndarray, label: np.ndarray) -> None:
        """Algorithm 1 lines 6-8: a teacher-labelled sample enters the buffer (and phi)."""
        self.trainer.add_sample(t, frame, label)
        with self._rate_lock:
            self.rate.add_label(t, label)
        self.new_samples += 1
        self.latest_t = t if self.latest_t is None else max(self.latest_t, t)

    def add_encoded_batch(self, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float],
                          label: Callable[[list[np.ndarray], list[float]], list[np.ndarray]],
                          limits: BatchLimits | None = None) -> int:
        """Decode a frame batch from the robot, label its frames and add them (the server node and
        the evaluation harness both come in here). ``label(frames, stamps)`` returns the teacher's
        label maps in the student's classes. Returns how many frames were added; raises
        :class:`~ams_ros.core.wire.frame_codec.FrameCodecError` for a batch that does not decode."""
        stamps = [float(s) for s in stamps]
        # the declared count and size are checked against the limits before decoding (issue #13)
        frames = decode_frames(data, codec, int(width), int(height), expected_frames=len(stamps), limits=limits)
        if len(frames) != len(stamps):
            raise FrameCodecError(f"batch holds {len(frames)} frames but {len(stamps)} timestamps")
        labels = label(frames, stamps)
        verdict = self.label_checks.check(frames, labels)  # (issue #29) frames not worth learning from
        if verdict.reason:
            left_out = len(frames) - len(verdict.keep)
            self.refused_frames += left_out
            self.refused_batches += int(verdict.refused)
            what = "refused" if verdict.refused else f"{left_out} of {len(frames)} frames left out"
            self.last_refusal = f"batch at t={stamps[-1]:.1f} s {what}: {verdict.reason}"
        for i in verdict.keep:
            self.add_labeled(stamps[i], frames[i], labels[i])
        return len(verdict.keep)

    def ready(self) -> bool:
        return self.new_samples >= max(1, self.config.min_samples)

    @property
    def horizon_s(self) -> float:
        return float(self.trainer.config.horizon_s)

    def buffered(self, now: float) -> int:
        """Labelled samples within the horizon at ``now`` (ServerStatus buffer_frames)."""
        return len(self.trainer.buffer.window(now, self.horizon_s))

    def downlink_kbps(self, now: float) -> float | None:
        """The downlink budget's running average (None without a budget or before an update)."""
        return self.budget.average_kbps(now) if self.budget.enabled else None

    def run_phase(self, now: float | None = None) -> PhaseOutcome | None:
        """Algorithm 1 lines 10-17: train a phase and encode the update for the edge."""
        now = self.latest_t if now is None else now
        if now is None:
            return None
        t0 = time.perf_counter()
        with self.lock:
            start = self.begin_phase(now)
            try:
                result = self.trainer.train_phase(start.train_now)
            except PhaseInterrupted:  # shutting down: as if the phase never started
                self.abandon_phase(start)
                return None
            finally:
                self.trainer.config = start.configured
            return self.finish_phase(start, result, t0)

    def begin_phase(self, now: float) -> "PhaseStart":
        """What a phase needs before training (the caller holds the lock): queued settings
        applied, a checkpoint, the downlink budget's plan, the base values of a residual update;
        the trainer's config carries the plan's gamma until the phase ends."""
        self._apply_pending()
        ckpt = self.trainer.checkpoint()
        configured = self.trainer.config
        plan = None
        enc = self.config.update_encoding
        if self.budget.enabled:
            self.budget.period_s = self.update_period_s
            plan = self.budget.plan(now, self.trainer.num_params, configured.gamma, enc)
            enc = plan.encoding
            self.trainer.config = replace(configured, gamma=plan.gamma)  # the configured gamma stays the ceiling
        before = ckpt.weights.cpu().numpy() if ENCODINGS[enc].residual else None
        held, upto = held_out(self.trainer.buffer.window(now, configured.horizon_s), self.config.gate)
        running = score(self.model, held, configured.ignore_index) if held else float("nan")
        start = score(self._start_model(), held, configured.ignore_index) \
            if held and self.config.gate.drift_phases else float("nan")
        previous = score(self.model, self._previous_held, configured.ignore_index) \
            if held and self._previous_held and self.config.gate.gate_scene_drop > 0 else float("nan")
        if held:
            self._previous_held = held
        return PhaseStart(now, ckpt, configured, plan, enc, before, self.trainer.phase, held, running,
                          now if upto is None else upto, start, previous)

    def _start_model(self) -> nn.Module:
        """A copy of the student with the starting weights (built once), for the drift rule."""
        if self._start is None:
            self._start = copy.deepcopy(self.model)
            write_flat(self._start, np.arange(self.start_weights.size), self.start_weights)
        return self._start

    def abandon_phase(self, start: "PhaseStart") -> None:
        self.trainer.rollback(start.ckpt)
        self.trainer.phase = start.phase

    def finish_phase(self, start: "PhaseStart", result: PhaseResult | None, t0: float) -> PhaseOutcome | None:
        """Encode the trained phase as the next version's update (the caller holds the lock and
        has put the configured trainer settings back); raises TrainingDiverged (phase undone)."""
        if result is None:
            return None
        self.new_samples = 0  # a diverged phase waits for new samples too, instead of retrying at once
        scores = None
        if start.held:
            scores = (start.running_score, score(self.model, start.held, self.trainer.config.ignore_index))
            unjudged = scene_changed(start.previous_score, start.running_score, self.config.gate)
            reason = "" if unjudged else verdict(*scores, self.config.gate)
            if unjudged:  # (issue #29) the candidate ships: the frames that would judge it are of a new scene
                self.unjudged_phases += 1
                self.last_unjudged = f"phase {result.phase} shipped unjudged: {unjudged}"
            if reason:  # (issue #29) not shipped: the robot keeps what it runs, no version is used
                self.trainer.rollback(start.ckpt)
                self.discarded_phases += 1
                self.last_discard = f"phase {result.phase} discarded: {reason}"
            reset = self._drift(scores[0] if reason else scores[1], start.start_score)
            if reset:  # (issue #29) the robot goes back to its starting weights instead
                if not reason:
                    self.trainer.rollback(start.ckpt)
                back = self.rollback(START)
                return PhaseOutcome(back.update, result, time.perf_counter() - t0, None, scores,
                                    f"{reset}: {back.reason}")
            if reason:
                return None
        enc = start.encoding
        base = start.before[result.indices] if start.before is not None else None
        try:
            update = ship_update(self.model, result.indices, result.values, self.version, enc, base_values=base)
        except UnencodableValues as exc:
            # Shipping it would make the edge reject this update and every later one (they
            # build on it), and poison the snapshots too: undo the phase instead.
            self.trainer.rollback(start.ckpt)
            self.diverged_phases += 1
            raise TrainingDiverged(
                f"phase {result.phase} diverged: {exc} (loss {result.loss:.3g}); the phase was undone and "
                f"the model stays at v{self.version}. Lower the learning rate (lr={self.trainer.config.lr:g})."
            ) from exc
        update.chain_tag = self.chain_tag
        self._sign(update)
        self.version += 1
        indices = np.asarray(result.indices, dtype=np.int64)
        self.history.append((self.version, indices, start.ckpt.weights[torch.from_numpy(indices).to(
            start.ckpt.weights.device)].cpu().numpy()))
        self.budget.shipped(enc, update.num_selected, encoded_size(update))
        self.last_phase_wall_s = time.perf_counter() - t0
        return PhaseOutcome(update, result, self.last_phase_wall_s, start.plan, scores)

    def _drift(self, runs: float, start: float) -> str:
        """Count the phases in a row that leave the robot (its model scoring ``runs``) below its
        starting weights (``start``); why it goes back to them once there are ``drift_phases``, else ""."""
        gate = self.config.gate
        self.drift_streak = self.drift_streak + 1 if gate.drift_phases and drifted(runs, start, gate) else 0
        if not gate.drift_phases or self.drift_streak < gate.drift_phases:
            return ""
        self.drift_streak = 0
        return (f"{gate.drift_phases} phases in a row more than {gate.gate_margin:g} points below the starting "
                f"weights (now mIoU {runs:.1f} against their {start:.1f} on the held-out frames)")

    def snapshot(self, encoding: str | None = None) -> EncodedUpdate:
        """A full snapshot of the current version (for a late or out-of-sync edge)."""
        with self.lock:
            return self._serve(encode_snapshot(self.model, self.version, encoding or self.config.snapshot_encoding))

    def _serve(self, update: EncodedUpdate) -> EncodedUpdate:
        """A snapshot, catch-up or rollback update made ready to send (the caller holds the lock): the
        server keeps exactly what the robot decodes (e.g. float16; else the copies would differ at every
        coordinate no later sparse update touches), tagged with the chain, signed and counted."""
        idx, vals = decode_update(update, self.model)
        write_flat(self.model, idx, vals)
        update.chain_tag = self.chain_tag
        self._sign(update)
        self.budget.shipped(None, 0, encoded_size(update))
        return update

    def catch_up(self, have_version: int, encoding: str | None = None) -> EncodedUpdate | None:
        """One sparse update from ``have_version`` (of this chain) to the current version: the
        union of the coordinates the phases in between changed, at their current values. None
        when the history does not reach back that far (the caller sends a snapshot)."""
        with self.lock:
            behind = self.version - int(have_version)
            if behind < 1 or behind > self.config.catch_up_versions:
                return None
            changes = [idx for v, idx, _ in self.history if v > have_version]
            if len(changes) != behind:  # history cleared (a chain floor raised) or too short
                return None
            indices = np.unique(np.concatenate(changes)) if changes else np.zeros(0, np.int64)
            return self._serve(encode_catch_up(self.model, indices, int(have_version), self.version,
                                               encoding or self.config.snapshot_encoding))

    def resync(self, have_version: int, have_chain_tag: str = "", encoding: str | None = None) -> Resync:
        """Answer a robot's resync request (it runs ``have_version`` of chain ``have_chain_tag``).

        The robot-ahead rule (docs/architecture.md, "Version chains"): versions a robot runs
        never go backwards, and the server is the authority on the weights. A robot ahead of
        this chain (the server lost its state, or resumed an older save of it) gets a snapshot
        of the server's weights numbered ``have_version + 1``: the server raises its chain's
        version to that floor (drawing a new tag when the robot was on this very chain, whose
        numbers past the save now mean other weights), so the robot's freshness rule (a
        snapshot must not take it backwards) holds and replay protection stays sound.
        A robot a few versions behind on this chain gets one catch-up update, else a snapshot.
        """
        have_version = int(have_version)
        with self.lock:
            warning = ""
            same_chain = bool(have_chain_tag) and have_chain_tag == self.chain_tag
            if same_chain and have_version > self.version:
                old = self.chain_tag
                self._raise_floor(have_version + 1, new_tag=True)
                warning = (f"robot runs v{have_version} of chain {old}, ahead of this server's saved state: "
                           f"the server lost phases; it continues as chain {self.chain_tag} from "
                           f"v{self.version} with a snapshot of its weights")
            elif not same_chain and (have_version > self.version or (have_chain_tag and have_version >= self.version)):
                old_v = self.version
                self._raise_floor(have_version + 1, new_tag=False)
                warning = (f"robot runs v{have_version} of chain {have_chain_tag or '(untagged)'}, ahead of this "
                           f"server's chain {self.chain_tag} at v{old_v} (the server lost its state?): raising the "
                           f"chain to v{self.version} so the robot's versions never go backwards; it resyncs to "
                           f"the server's weights (its own adaptation is lost)")
            elif same_chain:
                update = self.catch_up(have_version, encoding)
                if update is not None:
                    return Resync(update, "catch_up",
                                  f"catch-up v{have_version}->v{self.version} ({update.num_selected} parameters)")
            snap = self.snapshot(encoding)
            reason = ("robot is on another chain" if not same_chain else
                      f"robot is {self.version - have_version} versions behind (catch-up keeps "
                      f"{self.config.catch_up_versions})" if have_version < self.version else "robot is up to date")
            return Resync(snap, "snapshot", f"snapshot v{snap.new_version}: {reason}", warning)

    def rollback(self, to: int | str, encoding: str | None = None) -> Resync:
        """(issue #29) An operator sends the robot back: to the weights of version ``to`` of this
        chain (one of the last ``catch_up_versions``), or to the weights the session started from
        (``to`` = :data:`START`). Versions never go backwards: those weights become the next
        version, shipped as one signed catch-up update from the current version (a robot elsewhere
        on the chain resyncs to it as to any version). Adam's moments and the selection guide start
        afresh (they belong to the path rolled back from); the sample buffer is kept. ValueError,
        nothing changed, when ``to`` is not a version the session can go back to."""
        with self.lock:  # waits for a phase in progress: a rollback never lands in the middle of one
            current = flatten_params(self.model).detach().cpu().numpy()
            if to == START:
                target, what = self.start_weights, "the starting weights"
            else:
                target, what = self._weights_at(int(to), current), f"the weights of v{int(to)}"
            changed = np.flatnonzero(target != current).astype(np.int64)
            base = self.version
            self.trainer.reset_optimizer()
            write_flat(self.model, changed, target[changed])
            update = self._serve(encode_catch_up(self.model, changed, base, base + 1,
                                                 encoding or self.config.snapshot_encoding))
            self.version = base + 1
            self.history.append((self.version, changed, current[changed]))
            self.rollbacks += 1
            return Resync(update, "rollback", f"rolled back to {what} as v{self.version} ({changed.size} parameters "
                                              f"changed from v{base})")

    def _weights_at(self, version: int, current: np.ndarray) -> np.ndarray:
        """The flat weights of ``version`` of this chain: the ``current`` ones with the kept phases
        after it undone (the caller holds the lock); ValueError naming the versions that can be reached."""
        kept = [(v, idx, before) for v, idx, before in self.history if v > version]
        oldest = self.version - len(kept)
        reachable = (f"v{self.history[0][0] - 1} to v{self.version - 1}" if self.history else "none")
        if version >= self.version or version < 0:
            raise ValueError(f"cannot roll back to v{version}: the robot's chain is at v{self.version}; versions "
                             f"that can be rolled back to: {reachable}, or '{START}' (the starting weights)")
        if oldest != version or any(before is None for _, _, before in kept):
            raise ValueError(f"cannot roll back to v{version}: the server keeps the last {self.config.catch_up_versions} "
                             f"versions' changes (catch_up_versions) and can reach {reachable}; roll back to "
                             f"'{START}' (the starting weights) instead")
        weights = current.copy()
        for _, idx, before in reversed(kept):
            weights[idx] = before
        return weights

    def _raise_floor(self, version: int, new_tag: bool) -> None:
        """Renumber the current weights as ``version`` (the caller holds the lock)."""
        self.version = int(version)
        self.history.clear()
        if new_tag:
            self.chain_tag = new_chain_tag()

    def sampling_command(self, now: float) -> tuple[float, float, float] | None:
        """Every rate period: (sampling rate, update period, mean phi) or None when not due."""
        with self._rate_lock:
            r = self.rate.maybe_update(now)
            if r is None:
                return None
            if self.config.adaptive_period.enabled:
                self.period.observe_rate(r)
                period = self.period.period_s
            else:
                period = self.config.trainer.update_period_s
            self.update_period_s = period
            return r, period, float(self.rate.last_phi)
