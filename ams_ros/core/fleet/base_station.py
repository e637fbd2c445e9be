"""A base station's shared state, without ROS: the robots it serves, their frame batches waiting for
the teacher, their counters, and one condition variable that wakes the labelling and training threads.

The server's three nodes share one :class:`BaseStation` (the ROS side adds its rejection counter);
the labelling threads take batches from :meth:`next_batch`, the phase loop
(:mod:`~ams_ros.core.fleet.phase_loop`) takes robots from the scheduler, both through the
:class:`~ams_ros.core.fleet.backend.Backend`; :meth:`stop` ends them all.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Optional

from ams_ros.core.fleet.backend import Backend, RobotHandle
from ams_ros.core.fleet.scheduling import LABEL, GpuScheduler
from ams_ros.core.fleet.stagger import Arrival


#: batches of one robot waiting for the teacher beyond which the oldest is dropped (counted): the teacher
#: labeler's ``max_pending_batches`` and the fleet model's ``fleet_max_pending``
MAX_PENDING_BATCHES = 4


class BaseStation:
    def __init__(self) -> None:
        self.robots: list[str] = []
        self.backend: Optional[Backend] = None  # set once the sessions are built
        self.scheduler: Optional[GpuScheduler] = None  # used under cv
        self.pending: dict[str, deque] = {}
        self.received: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        # (issue #31) each robot's last batch: the ASR controller staggers the robots' batches from
        # these (ams_ros/core/fleet/stagger.py)
        self.arrivals: dict[str, Arrival] = {}
        self.cv = threading.Condition()
        self.stopping = False
        self._labelling: set[str] = set()  # robots whose batch a labelling thread has in hand
        self._bound_by = ""

    @property
    def sessions(self) -> dict[str, RobotHandle]:
        if self.backend is None:
            raise RuntimeError("the robots' sessions are not built yet: build the ams_trainer of this process first")
        return self.backend.sessions

    def bind(self, robots: list[str], who: str) -> None:
        """The first part (node) sets the robots served; every other must name the same ones."""
        if not self.robots:
            self.robots = list(robots)
            for r in robots:
                self.pending[r], self.received[r], self.dropped[r], self.last_error[r] = deque(), 0, 0, ""
            self._bound_by = who
        elif list(robots) != self.robots:
            raise ValueError(f"{who} has device_ids {robots} but {self._bound_by} has {self.robots}: "
                             f"set device_ids once, in the '/**' section of the parameter file")

    def stop(self) -> None:
        """Wake and end the labelling and training threads (they finish the batch or phase in hand)."""
        with self.cv:
            self.stopping = True
            self.cv.notify_all()

    def count_error(self, robot: str, error: str, dropped: bool = False) -> None:
        with self.cv:
            self.last_error[robot] = error
            if dropped:
                self.dropped[robot] += 1

    def count_received(self, robot: str) -> None:
        with self.cv:
            self.received[robot] += 1

    def note_arrival(self, robot: str, period_s: float, at: Optional[float] = None) -> None:
        """A batch of ``robot`` covering ``period_s`` seconds arrived (now, or at ``at``)."""
        with self.cv:
            count = self.arrivals[robot].count + 1 if robot in self.arrivals else 1
            self.arrivals[robot] = Arrival(time.monotonic() if at is None else float(at), float(period_s), count)

    # ------------------------------------------------------------------ batches for the teacher
    def enqueue(self, robot: str, batch: Any, max_pending: int) -> list[Any]:
        """Queue a robot's batch for the teacher; returns the oldest ones dropped (counted) to keep
        at most ``max_pending`` waiting."""
        dropped = []
        with self.cv:
            q = self.pending[robot]
            q.append(batch)
            while len(q) > max_pending:
                dropped.append(q.popleft())
                self.dropped[robot] += 1
            self.cv.notify_all()
        return dropped

    def next_batch(self) -> tuple[Optional[str], Any]:
        """The oldest batch of the robot with the longest queue among those no thread is labelling
        (each robot's batches go in order, one at a time); waits; (None, None) when stopping."""
        with self.cv:
            while not self.stopping and not any(self.pending[r] for r in self.robots if r not in self._labelling):
                self.cv.wait(timeout=0.5)
            if self.stopping:
                return None, None
            robot = max((r for r in self.robots if self.pending[r] and r not in self._labelling),
                        key=lambda r: len(self.pending[r]))
            self._labelling.add(robot)
            return robot, self.pending[robot].popleft()

    def labelled(self, robot: str, started: float) -> None:
        """A labelling thread is done with ``robot``'s batch (teacher time is its share of the GPU)."""
        with self.cv:
            self._labelling.discard(robot)
            if self.scheduler is not None:
                self.scheduler.record(robot, LABEL, started, time.monotonic())
            self.cv.notify_all()
