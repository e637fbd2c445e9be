"""`server` executable: the three base-station nodes in one process, sharing a ServerState."""

from __future__ import annotations

import sys

from ams_ros.nodes.server.ams_trainer import AMSTrainerNode
from ams_ros.nodes.server.asr_controller import ASRController
from ams_ros.nodes.server.state import ServerState
from ams_ros.nodes.server.teacher_labeler import TeacherLabeler
from ams_ros.nodes.common.spinning import ProcessNodes, exit_process, run_process


def build_server() -> ProcessNodes:
    state = ServerState()
    trainer = AMSTrainerNode(state)      # builds the robots' sessions
    labeler = TeacherLabeler(state)
    asr = ASRController(state)           # configures the sessions' rate control
    return ProcessNodes(shared=[labeler, trainer, asr], threads=4)


def main(args: list[str] | None = None) -> int:
    exit_process(run_process("server", build_server, args))


if __name__ == "__main__":
    sys.exit(main())
