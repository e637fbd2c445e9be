"""Helpers shared by the nodes: parameter declaration, QoS from parameters, stamps, spinning."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Iterable

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
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


def stamp_to_ns(stamp: Time) -> int:
    """A stamp as integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def sec_to_stamp(t: float) -> Time:
    sec = int(t // 1)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=sec, nanosec=nsec)


def spin_nodes(nodes: list[Node], threads: int | None = None, dedicated: Iterable[Node] = ()) -> None:
    """Spin ``nodes`` until Ctrl-C / SIGTERM, then shut down cleanly.

    ``nodes`` share one MultiThreadedExecutor (callback groups keep them apart); each node in
    ``dedicated`` gets a SingleThreadedExecutor on a thread of its own. Why: rclpy's
    MultiThreadedExecutor dispatches every callback from one Python loop, and while other work is
    in flight (a model update arriving, a batch going out) that loop delayed the camera-image
    callback by 0.4-2.4 s in 9 of 18 demo runs on 2 cores. With the segmenter on its own
    executor the longest gap between two inferences was 212-228 ms at 5 frames/s (10 runs).
    """
    dedicated = list(dedicated)
    executor = MultiThreadedExecutor(num_threads=threads)
    for n in nodes:
        executor.add_node(n)
    lanes: list[tuple[SingleThreadedExecutor, threading.Thread]] = []
    for n in dedicated:
        lane = SingleThreadedExecutor()
        lane.add_node(n)
        thread = threading.Thread(target=_spin_lane, args=(lane,), name=f"executor:{n.get_name()}", daemon=True)
        lanes.append((lane, thread))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for _, thread in lanes:
            thread.start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for lane, thread in lanes:
            lane.shutdown(timeout_sec=1.0)
            if thread.is_alive():
                thread.join(timeout=5.0)
        for n in [*dedicated, *nodes]:
            close = getattr(n, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # keep shutting the others down
                    print(f"[{n.get_name()}] error while closing: {exc}", file=sys.stderr)
            if n in nodes:
                executor.remove_node(n)
            n.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.try_shutdown()


def _spin_lane(executor: SingleThreadedExecutor) -> None:
    """A dedicated executor's thread: spins until the executor or the context shuts down."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


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
