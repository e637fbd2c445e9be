"""What the three server nodes of one base station share: the ROS-free
:class:`~ams_ros.core.fleet.base_station.BaseStation` (the robots, their sessions through the backend,
the batches waiting for the teacher, the counters, the condition variable and the stop flag), plus
the count of inputs the nodes rejected (reported in ServerStatus and on /diagnostics) and the
operators' rollbacks."""

from __future__ import annotations

from ams_ros.core.fleet.base_station import BaseStation
from ams_ros.nodes.common.reject_log import RejectionCounter


class ServerState(BaseStation):
    def __init__(self) -> None:
        super().__init__()
        # every input a server node rejected (ServerStatus inputs_rejected / last_input_rejection)
        self.rejections = RejectionCounter()
        # (issue #29) operator rollbacks per robot and the last one's message (ServerStatus)
        self.rollbacks: dict[str, int] = {}
        self.last_rollback: dict[str, str] = {}
