"""What the three server nodes of one base station share.

Per robot: its :class:`~ams_ros.core.server.session.RobotSession` (buffer, trainer, version
chain, rate control; with ``backend: ray`` a :class:`~ams_ros.core.fleet.pooled_session.PooledSession`
handle to it in a pool actor), the frame batches waiting for the teacher and the counters ServerStatus
reports. One condition variable wakes the labeler and the trainer threads; ``stop()`` ends both.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ams_ros.core.fleet.scheduling import GpuScheduler
from ams_ros.core.server.session import RobotSession
from ams_ros.nodes.common.reject_log import RejectionCounter


class ServerState:
    def __init__(self) -> None:
        self.device_ids: list[str] = []
        self.sessions: dict[str, RobotSession] = {}  # or PooledSession handles (backend ray)
        self.pending: dict[str, deque] = {}
        self.received: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.cv = threading.Condition()
        self.stopping = False
        self.scheduler: GpuScheduler | None = None  # issue 16: set by ams_trainer; used under cv
        # issue 12: with backend ray, the pool of actors the sessions (PooledSession handles) live in
        self.pool: Any = None
        # every input a server node rejected (ServerStatus inputs_rejected / last_input_rejection)
        self.rejections = RejectionCounter()

    def bind_devices(self, ids: list[str], node_name: str) -> None:
        """The first node sets the robots served; every other node must name the same ones."""
        if not self.device_ids:
            self.device_ids = list(ids)
            for d in ids:
                self.pending[d], self.received[d], self.dropped[d], self.last_error[d] = deque(), 0, 0, ""
            self._bound_by = node_name
        elif list(ids) != self.device_ids:
            raise ValueError(f"{node_name} has device_ids {ids} but {self._bound_by} has {self.device_ids}: "
                             f"set device_ids once, in the '/**' section of the parameter file")

    def stop(self) -> None:
        """Wake and end the labeler and trainer threads (they finish the batch or phase in hand)."""
        with self.cv:
            self.stopping = True
            self.cv.notify_all()

    def count_error(self, dev: str, error: str, dropped: bool = False) -> None:
        with self.cv:
            self.last_error[dev] = error
            if dropped:
                self.dropped[dev] += 1
