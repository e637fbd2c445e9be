"""`edge` executable: camera_sampler + student_segmenter + model_patcher in one process.

They share the student (a double buffer) and counters (:class:`~ams_ros.nodes.edge.state.EdgeState`).
The segmenter builds the student from its own parameters and spins on an executor and thread of
its own, so inference never waits for the dispatch of patching or sampling work; the sampler
and patcher share a MultiThreadedExecutor, with separate callback groups.
"""

from __future__ import annotations

import sys

from ams_ros.nodes.edge.camera_sampler import CameraSampler
from ams_ros.nodes.edge.state import EdgeState
from ams_ros.nodes.edge.model_patcher import ModelPatcher
from ams_ros.nodes.common.spinning import ProcessNodes, exit_process, run_process
from ams_ros.nodes.edge.student_segmenter import StudentSegmenter


def build_edge() -> ProcessNodes:
    state = EdgeState()
    segmenter = StudentSegmenter(state)   # builds the student once for the process
    patcher = ModelPatcher(state)
    sampler = CameraSampler(state)
    return ProcessNodes(shared=[sampler, patcher], dedicated=[segmenter], threads=3)


def main(args: list[str] | None = None) -> int:
    exit_process(run_process("edge", build_edge, args))


if __name__ == "__main__":
    sys.exit(main())
