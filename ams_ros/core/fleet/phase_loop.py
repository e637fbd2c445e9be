"""Which robot trains next, and its phase: the base station's training loop, without ROS.

One thread per lane of the :class:`~ams_ros.core.fleet.backend.Backend` (one locally, one per pool
actor) runs :meth:`PhaseLoop.run`: wait until a robot is ready (enough new labelled samples) and
its lane is free, let the GPU scheduler (``scheduler_policy``: in turn, or by predicted mIoU gain
per GPU-second, a bounded wait either way) pick among the ready ones, run the phase (with
``pool_fuse``, every robot of that lane that is due, in one fused step), book its GPU time and hand
each outcome to ``ship`` (the node publishes the update and the status). A slow phase stretches
the robot's period instead of queueing phases. The utility policies' signal, the student's error on
each ready robot's newest labelled frames, is measured here too (booked as that robot's GPU time).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ams_ros.core.fleet.backend import Backend, Outcome
from ams_ros.core.fleet.base_station import BaseStation
from ams_ros.core.fleet.scheduling import LABEL, ROUND_ROBIN, GpuScheduler
from ams_ros.core.server.session import PhaseOutcome


@dataclass(frozen=True)
class Shipped:
    """A phase's outcome with the period it ran in: what the node publishes."""

    robot: str
    outcome: PhaseOutcome
    requested_s: float  # the robot's T_update
    effective_s: float  # the period it got: stretched by a phase longer than T_update or a wait for the GPU
    stretched: bool


class PhaseLoop:
    """Runs phases for a base station's robots, on ``backend.lanes`` threads (:meth:`run`)."""

    def __init__(self, station: BaseStation, backend: Backend, scheduler: GpuScheduler,
                 ship: Callable[[Shipped], bool], failed: Callable[[str, Exception], None],
                 log: Callable[[str, str], None] = lambda level, text: None) -> None:
        self.station, self.backend, self.scheduler = station, backend, scheduler
        self.ship, self.failed, self.log = ship, failed, log
        self.phase_started: dict[str, float] = {}
        self.trained_upto: dict[str, float] = {}  # stream time of each robot's newest trained-on frame
        self.measured: dict[str, float] = {}
        self.effective: dict[str, float] = {r: float(backend.sessions[r].update_period_s) for r in station.robots}
        #: each robot's utility as of the scheduler's last choice (the pool's placement reads it
        #: without taking the station's lock: replaced whole, never changed in place)
        self.utilities: dict[str, float] = {}

    def utility(self, robot: str) -> float:
        return self.utilities.get(robot, math.inf)

    def run(self) -> None:
        """A lane's thread: phases until the station stops."""
        while True:
            robot = self.next_robot()
            if robot is None:
                return
            if not self._phase(robot):
                return

    def next_robot(self) -> Optional[str]:
        """Wait for a ready robot whose lane is free, let the scheduler choose, claim its lane."""
        st, backend, sched = self.station, self.backend, self.scheduler
        while True:
            with st.cv:
                while not st.stopping and not (ready := [r for r in st.robots if backend.sessions[r].ready()]):
                    st.cv.wait(timeout=0.5)
                if st.stopping:
                    return None
            self.measure_errors(ready)  # outside the lock: forward passes
            with st.cv:
                ready = [r for r in ready if backend.sessions[r].ready() and backend.lane_free(r)]
                if not ready:  # one phase at a time per lane: robots on a busy one wait
                    st.cv.wait(timeout=0.5)
                    continue
                sched.period_s = max(float(backend.sessions[r].update_period_s) for r in st.robots)
                now = time.monotonic()
                robot = sched.pick(ready, now)
                self.utilities = {} if sched.policy == ROUND_ROBIN else {r: sched.utility(r, now) for r in st.robots}
                if robot is not None and not st.stopping and backend.claim(robot):
                    return robot

    def measure_errors(self, ready: list[str]) -> None:
        """The student's error vs the teacher on each ready robot's newest labelled frames (once
        per new frame; booked as that robot's GPU time). Only the utility policies use it."""
        sched = self.scheduler
        if sched.policy == ROUND_ROBIN:
            return
        for robot in ready:
            latest = self.backend.sessions[robot].latest_t
            if latest is None or latest <= self.measured.get(robot, float("-inf")):
                continue
            t0 = time.monotonic()
            err = self.backend.student_error(robot, sched.config.error_frames)
            if err is None:
                continue
            self.measured[robot] = latest
            with self.station.cv:
                sched.observe_error(robot, latest, err)
                sched.record(robot, LABEL, t0, time.monotonic())

    def fused_group(self, robot: str) -> list[str]:
        """``robot`` and, with fusing, every other robot of its lane that is ready or holds labelled
        frames newer than its last phase (the lane is claimed, so none of them is training). (A
        robot's count of new samples starts again after its phase, so with phases longer than
        T_update robots of one lane would otherwise never be ready at the same moment.)"""
        backend = self.backend
        if not backend.fuse:
            return [robot]
        lane = backend.lane_of(robot)
        with self.station.cv:
            others = [r for r in self.station.robots if r != robot and backend.lane_of(r) == lane
                      and (backend.sessions[r].ready() or self._untrained_frames(r))]
        return [robot, *others]

    def _untrained_frames(self, robot: str) -> bool:
        latest = self.backend.sessions[robot].latest_t
        return latest is not None and latest > self.trained_upto.get(robot, float("-inf"))

    def _phase(self, robot: str) -> bool:
        """Run the claimed robot's phase (and its fused group's); False once shutting down."""
        group = self.fused_group(robot)
        started = time.monotonic()
        prev: dict[str, Optional[float]] = {}
        lane = self.backend.lane_of(robot)
        with self.station.cv:
            for r in group:
                prev[r] = self.phase_started.get(r)
                self.phase_started[r] = started
                self.scheduler.start_phase(r, started)
        if len(group) > 1:
            self.log("info", f"fused phase of {', '.join(group)} on actor {lane}")
        try:
            outcomes: list[Outcome] = self.backend.run_phases(group)
        finally:
            with self.station.cv:
                for r in group:
                    self.scheduler.end_phase(r, started, time.monotonic())
                self.backend.release(lane)
                self.station.cv.notify_all()
        for r, outcome in zip(group, outcomes):
            if isinstance(outcome, Exception):
                self.station.count_error(r, f"training failed: {outcome}")
                self.failed(r, outcome)
            elif outcome is not None and not self._ship(r, outcome, started, prev[r]):
                return False
        return True

    def _ship(self, robot: str, outcome: PhaseOutcome, started: float, prev: Optional[float]) -> bool:
        requested = float(self.backend.sessions[robot].update_period_s)
        self.effective[robot] = max(requested, outcome.wall_s, (started - prev) if prev else 0.0)
        self.trained_upto[robot] = float(outcome.result.now)
        if self.station.stopping:
            return False
        return self.ship(Shipped(robot, outcome, requested, self.effective[robot], outcome.wall_s > requested))
