"""`edge` executable: camera_sampler + student_segmenter + model_patcher in one process.

They share the student (a double buffer) and counters. The segmenter spins on an executor and
thread of its own, so inference never waits for the dispatch of patching or sampling work; the
sampler and patcher share a MultiThreadedExecutor, with separate callback groups.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.node import Node

from ams_ros.nodes.camera_sampler import CameraSampler, EdgeCounters
from ams_ros.nodes.common import declare, spin_nodes, string_list
from ams_ros.nodes.edge_model import build_edge_model
from ams_ros.nodes.model_patcher import ModelPatcher
from ams_ros.nodes.student_segmenter import PARAMS as SEGMENTER_PARAMS
from ams_ros.nodes.student_segmenter import StudentSegmenter


def _segmenter_settings() -> dict:
    """Read the student settings with a throw-away node so the model is built once per process."""
    probe = Node("student_segmenter")
    keys = ("student", "student_weights", "label_space", "selected_classes", "input_width", "input_height")
    values = declare(probe, {k: SEGMENTER_PARAMS[k] for k in keys})
    probe.destroy_node()
    return values


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        s = _segmenter_settings()
        model = build_edge_model(s["student"], s["student_weights"], s["label_space"],
                                 string_list(s["selected_classes"]), (int(s["input_width"]), int(s["input_height"])))
        counters = EdgeCounters()
        sampler = CameraSampler(counters)
        patcher = ModelPatcher(model, counters)
        segmenter = StudentSegmenter(model, counters, patch_stats=patcher.stats)
    except Exception as exc:
        print(f"[edge] start-up failed: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(1)
    spin_nodes([sampler, patcher], threads=3, dedicated=[segmenter])


if __name__ == "__main__":
    main()
