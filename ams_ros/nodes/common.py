"""Helpers shared by the nodes: parameter declaration, QoS from parameters, stamps, spinning."""

from __future__ import annotations

import signal
import sys
from typing import Any, Iterable

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Topic names, relative to the robot's namespace (the server prefixes /<device_id>/).
IMAGE = "image_raw"
LABELS = "segmentation/labels"
MASK_COLOR = "segmentation/mask_color"
OVERLAY = "segmentation/overlay"
LABEL_INFO = "segmentation/label_info"
FRAME_BATCH = "ams/frame_batch"
MODEL_UPDATE = "ams/model_update"
SAMPLING_COMMAND = "ams/sampling_command"
EDGE_STATUS = "ams/edge_status"
SERVER_STATUS = "ams/server_status"
SNAPSHOT_SERVICE = "ams/get_model_snapshot"


def declare(node: Node, spec: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare every parameter in ``spec`` (name -> (default, description)) and read them."""
    values = {}
    for name, (default, description) in spec.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=description))
        values[name] = node.get_parameter(name).value
    return values


def string_list(values: Iterable[str] | None) -> list[str]:
    """A YAML string list without the [""] placeholder ROS needs to type an empty list."""
    return [v for v in (values or []) if v]


def qos(reliability: str = "reliable", depth: int = 10, transient_local: bool = False) -> QoSProfile:
    """QoS from parameter values; ``reliability`` is 'reliable' or 'best_effort'."""
    rel = reliability.strip().lower()
    if rel not in ("reliable", "best_effort"):
        raise ValueError(f"QoS reliability must be 'reliable' or 'best_effort', got '{reliability}'")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, int(depth)),
        reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    sec = int(t // 1)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=sec, nanosec=nsec)


def spin_nodes(nodes: list[Node], threads: int | None = None) -> None:
    """Spin ``nodes`` on one MultiThreadedExecutor until Ctrl-C / SIGTERM; shut down cleanly."""
    executor = MultiThreadedExecutor(num_threads=threads)
    for n in nodes:
        executor.add_node(n)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for n in nodes:
            close = getattr(n, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # keep shutting the others down
                    print(f"[{n.get_name()}] error while closing: {exc}", file=sys.stderr)
            executor.remove_node(n)
            n.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.try_shutdown()


class RejectLog:
    """Logs each distinct rejection reason at once, repeats of it at most every ``every_s``."""

    def __init__(self, node: Node, every_s: float = 5.0) -> None:
        self._node = node
        self._every = every_s
        self._last: dict[str, float] = {}

    def __call__(self, what: str, reason: str) -> None:
        import time

        now = time.monotonic()
        key = reason[:80]
        if now - self._last.get(key, -1e9) >= self._every:
            self._last[key] = now
            self._node.get_logger().warning(f"rejected {what}: {reason}")
