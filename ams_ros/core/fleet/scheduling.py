"""One GPU shared by many robots: which robot's training phase runs next (issue #16).

A base station serves N robots on one accelerator. Every piece of GPU work (a teacher labelling
job or a training phase) is a job on one device clock; this module decides which ready robot's
phase goes next and keeps the books (each robot's share of the GPU over a sliding window). It
is free of ROS: the server node (``nodes/server/ams_trainer.py``) and the fleet evaluation
(``ams-eval fleet``) drive the same :class:`GpuScheduler`, with wall time and modelled time
respectively.

Policies (``SchedulerConfig.policy``):

- ``round_robin``: today's server. The ready robot whose last phase started longest ago (never
  trained = first; ties in ``device_ids`` order). Every robot gets the same share whatever its
  scene does.
- ``utility``: the ready robot with the largest predicted mIoU gain per GPU-second (the idea of
  Ekya's "thief" scheduler, with AMS's free signal: the student's error against the teacher on
  its newest labelled frames). The predicted gain of a phase is

      drift + learn,   drift = max(0, err_now - err_after_last_phase),
                       learn = mean over the last phases of max(0, err_before - err_after)

  (floored at ``min_gain``): a robot whose scene changed since its last phase (its error came
  back up) or whose phases still buy accuracy goes first; a robot in a static scene whose error
  neither drifts nor falls goes last. Divided by the robot's measured phase cost (GPU-seconds).
  A robot without a measurement yet gets an infinite utility (measure it first).
- ``utility_aging``: ``utility`` times ``1 + wait / period``. A static robot's priority grows
  smoothly with its wait instead of jumping at the hard bound below; it trades a little of the
  gain for a steadier update interval (fresher models on robots whose drift the error sample
  missed).

Starvation is impossible under every policy: a ready robot that has waited ``max_wait_s =
max_wait_periods * period_s`` is *overdue*, and overdue robots go before any other, the one
overdue longest first. A robot served gets a new wait that starts after its phase, so it cannot
get ahead of a robot already overdue. Hence (stated, and tested in test/test_scheduling.py):

    a robot that is ready at time t starts a phase by  t + max_wait_s + N * longest_phase_s

(at most N-1 robots overdue earlier go first, plus the phase that was running when it became
overdue).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.common.config import check_choice, knob
from ams_ros.core.models.samples import BufferEntry
from ams_ros.core.server.quality_gate import teacher_miou

ROUND_ROBIN = "round_robin"
UTILITY = "utility"
UTILITY_AGING = "utility_aging"
POLICIES: tuple[str, ...] = (ROUND_ROBIN, UTILITY, UTILITY_AGING)

#: Kinds of GPU jobs the scheduler books.
LABEL, TRAIN = "label", "train"


@dataclass
class SchedulerConfig:
    """How the base station shares its GPU among robots."""

    policy: str = knob(ROUND_ROBIN, "GPU scheduling among robots: round_robin (in turn), utility (predicted mIoU "
                                    "gain per GPU-second), utility_aging (utility, rising with the wait)",
                       choices=POLICIES)
    max_wait_periods: float = knob(3.0, "Starvation bound: a ready robot waits at most this many update periods "
                                        "before it goes first")
    share_window_s: float = knob(60.0, "Sliding window (s) over which each robot's GPU share is computed")
    error_frames: int = 4
    history_phases: int = 4
    min_gain: float = 1e-3

    def __post_init__(self) -> None:
        check_choice("scheduler_policy", self.policy, POLICIES)
        if not self.max_wait_periods > 0:
            raise ValueError(f"max_wait_periods must be > 0, got {self.max_wait_periods}")
        if not self.share_window_s > 0:
            raise ValueError(f"share_window_s must be > 0, got {self.share_window_s}")
        if self.error_frames < 1 or self.history_phases < 1:
            raise ValueError("error_frames and history_phases must be >= 1")


@dataclass
class _Robot:
    ready_since: Optional[float] = None
    last_start: float = -math.inf
    errors: deque = field(default_factory=deque)          # (t, error) of the newest labelled frames
    err_before: Optional[float] = None                     # error when the running/last phase started
    awaiting_after: bool = False                           # next error sample measures "after"
    err_after: Optional[float] = None                      # error first measured after the last phase
    drops: deque = field(default_factory=deque)            # err_before - err_after of the last phases
    cost_s: Optional[float] = None                         # EMA of this robot's phase GPU-seconds
    busy: deque = field(default_factory=deque)             # (start, end, kind) GPU intervals
    phases: int = 0
    max_wait_seen: float = 0.0


class GpuScheduler:
    """Chooses the next robot to train and books every robot's GPU time (one device clock).

    Not thread-safe by itself: the server calls it under its state lock.
    """

    def __init__(self, device_ids: Sequence[str], config: SchedulerConfig | None = None,
                 period_s: float = 10.0) -> None:
        if not device_ids:
            raise ValueError("a scheduler needs at least one robot (device_ids is empty)")
        if len(set(device_ids)) != len(device_ids):
            raise ValueError(f"device_ids must be unique, got {list(device_ids)}")
        self.config = config or SchedulerConfig()
        self.device_ids = list(device_ids)
        self.period_s = float(period_s)
        self._robots = {d: _Robot() for d in device_ids}
        self._order = {d: i for i, d in enumerate(device_ids)}

    # ------------------------------------------------------------------ configuration
    @property
    def policy(self) -> str:
        return self.config.policy

    def set_policy(self, policy: str) -> None:
        """Change the policy at run time (from the next choice); ValueError names the choices."""
        check_choice("scheduler_policy", policy, POLICIES)
        self.config = SchedulerConfig(**{**self.config.__dict__, "policy": policy})

    @property
    def max_wait_s(self) -> float:
        return self.config.max_wait_periods * self.period_s

    def wait_bound_s(self, longest_phase_s: float) -> float:
        """The stated starvation bound: ready -> phase start within this many seconds."""
        return self.max_wait_s + len(self.device_ids) * float(longest_phase_s)

    # ------------------------------------------------------------------ signals
    def observe_error(self, dev: str, t: float, error: float) -> None:
        """The student's error (1 - mIoU vs the teacher) on a newly labelled frame at time ``t``."""
        r = self._robots[dev]
        if not math.isfinite(error):
            return
        r.errors.append((float(t), float(error)))
        while len(r.errors) > self.config.error_frames:
            r.errors.popleft()
        if r.awaiting_after:
            r.awaiting_after = False
            r.err_after = float(error)
            if r.err_before is not None:
                r.drops.append(r.err_before - r.err_after)
                while len(r.drops) > self.config.history_phases:
                    r.drops.popleft()

    def error_now(self, dev: str) -> Optional[float]:
        r = self._robots[dev]
        return float(np.mean([e for _, e in r.errors])) if r.errors else None

    def predicted_gain(self, dev: str) -> float:
        """Predicted error reduction of this robot's next phase (mIoU points as a fraction)."""
        r = self._robots[dev]
        now = self.error_now(dev)
        if now is None:
            return math.inf
        drift = max(0.0, now - r.err_after) if r.err_after is not None else now
        learn = float(np.mean([max(0.0, d) for d in r.drops])) if r.drops else 0.0
        return max(self.config.min_gain, drift + learn)

    def utility(self, dev: str, now: float) -> float:
        """Predicted gain per GPU-second (times the aging factor under ``utility_aging``)."""
        r = self._robots[dev]
        gain = self.predicted_gain(dev)
        cost = r.cost_s if r.cost_s and r.cost_s > 0 else 1.0
        u = gain / cost
        if self.config.policy == UTILITY_AGING and r.ready_since is not None and math.isfinite(u):
            u *= 1.0 + max(0.0, now - r.ready_since) / max(self.period_s, 1e-9)
        return u

    # ------------------------------------------------------------------ choosing
    def note_ready(self, ready: Iterable[str], now: float) -> None:
        """Mark when robots became ready (their wait starts then); robots no longer ready reset."""
        ready = set(ready)
        for d, r in self._robots.items():
            if d in ready:
                if r.ready_since is None:
                    r.ready_since = float(now)
            else:
                r.ready_since = None

    def pick(self, ready: Sequence[str], now: float) -> Optional[str]:
        """The robot whose phase runs next among ``ready`` (None when none is ready).

        Overdue robots (waited ``max_wait_s``) first, longest overdue first; otherwise the policy.
        """
        ready = [d for d in ready if d in self._robots]
        self.note_ready(ready, now)
        if not ready:
            return None
        overdue = [d for d in ready if now - self._robots[d].ready_since >= self.max_wait_s]
        if overdue:
            return min(overdue, key=lambda d: (self._robots[d].ready_since, self._order[d]))
        if self.config.policy == ROUND_ROBIN:
            return min(ready, key=lambda d: (self._robots[d].last_start, self._order[d]))
        # utility policies: the largest utility; ties to the one that waited longest, then order
        return min(ready, key=lambda d: (-self.utility(d, now), self._robots[d].last_start, self._order[d]))

    # ------------------------------------------------------------------ booking
    def start_phase(self, dev: str, now: float) -> None:
        """``dev``'s phase starts at ``now`` (call right after :meth:`pick`)."""
        r = self._robots[dev]
        if r.ready_since is not None:
            r.max_wait_seen = max(r.max_wait_seen, now - r.ready_since)
        r.ready_since = None
        r.last_start = float(now)
        r.err_before = self.error_now(dev)

    def end_phase(self, dev: str, start: float, end: float) -> None:
        """``dev``'s phase ran on the GPU from ``start`` to ``end``."""
        r = self._robots[dev]
        r.phases += 1
        dur = max(0.0, end - start)
        r.cost_s = dur if r.cost_s is None else 0.7 * r.cost_s + 0.3 * dur
        r.awaiting_after = True
        # the error before the phase is stale once the model changed: forget the frames measured before it
        r.errors.clear()
        self.record(dev, TRAIN, start, end)

    def record(self, dev: str, kind: str, start: float, end: float) -> None:
        """Book GPU time of ``dev`` (``label`` or ``train``) for the share."""
        if kind not in (LABEL, TRAIN):
            raise ValueError(f"GPU job kind {kind!r} is not valid; choose one of: {LABEL}, {TRAIN}")
        r = self._robots[dev]
        r.busy.append((float(start), float(end), kind))
        horizon = float(end) - self.config.share_window_s
        while r.busy and r.busy[0][1] < horizon:
            r.busy.popleft()

    def busy_s(self, dev: str, now: float, kind: str | None = None) -> float:
        """GPU-seconds of ``dev`` within the sliding window ending at ``now``."""
        lo = now - self.config.share_window_s
        return float(sum(max(0.0, min(e, now) - max(s, lo)) for s, e, k in self._robots[dev].busy
                         if kind is None or k == kind))

    def share(self, dev: str, now: float) -> float:
        """``dev``'s fraction of the GPU's time over the sliding window ending at ``now`` (0..1)."""
        window = self.config.share_window_s
        return min(1.0, self.busy_s(dev, now) / window) if window > 0 else 0.0

    def shares(self, now: float) -> dict[str, float]:
        return {d: self.share(d, now) for d in self.device_ids}

    def phases(self, dev: str) -> int:
        return self._robots[dev].phases

    def max_wait_seen(self, dev: str) -> float:
        """The longest a ready ``dev`` has waited for a phase so far."""
        return self._robots[dev].max_wait_seen


@torch.no_grad()
def student_error(model: nn.Module, entries: Sequence[BufferEntry], ignore_index: int = 255) -> float:
    """1 - mIoU of ``model`` against the teacher labels of ``entries`` (the scheduler's signal).

    One forward pass over a few of the newest labelled frames; NaN when there is none.
    """
    m = teacher_miou(model, entries, ignore_index)
    return float("nan") if not math.isfinite(m) else 1.0 - m
