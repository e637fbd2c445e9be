"""Shared helpers for tests that start ROS 2 nodes (DDS on loopback, private domain)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from ams_ros.nodes.common import local_dds
from ams_ros.core.common.paths import SOURCE_ROOT

REPO_ROOT = SOURCE_ROOT


def require_ros() -> None:
    """Skip the calling test module when the workspace is not built/sourced."""
    try:
        import rclpy  # noqa: F401
        import ams_msgs.msg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"ROS workspace not available ({exc}); run `make test` which builds it", allow_module_level=True)


@contextmanager
def ros_test_node(name: str) -> Iterator[tuple[Any, Any]]:
    """rclpy initialised, a node of the test and a SingleThreadedExecutor to spin it on demand
    (``spin_until``); all torn down after, in the order rclpy needs."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.remove_node(node)
        node.destroy_node()
        rclpy.shutdown()


def loopback_env(domain_id: int | None = None) -> dict[str, str]:
    """Environment for a child process that keeps DDS on loopback in a private domain."""
    env = local_dds.loopback_env(domain_id if domain_id is not None else int(os.environ["ROS_DOMAIN_ID"]))
    env["PYTHONPATH"] = f"{REPO_ROOT}:{env.get('PYTHONPATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_python(args: list[str], domain_id: int | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``python args...`` as a separate OS process with loopback DDS."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=loopback_env(domain_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        **kw,
    )


def spin_until(executor, predicate: Callable[[], bool], timeout: float) -> bool:
    """Spin ``executor`` until ``predicate()`` holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def fill_message(msg: Any, rng: random.Random, big_bytes: int = 0) -> Any:
    """Fill every field of a ROS message with random values (recursively).

    ``big_bytes`` sets the length of uint8[] fields, for large-payload tests.
    """
    for name, typ in msg.get_fields_and_field_types().items():
        setattr(msg, name, _random_value(typ, getattr(msg, name), rng, big_bytes))
    return msg


def _random_value(typ: str, current: Any, rng: random.Random, big_bytes: int) -> Any:
    from builtin_interfaces.msg import Time

    if typ.startswith("sequence<") or typ.endswith("[]"):
        inner = typ[len("sequence<"):-1] if typ.startswith("sequence<") else typ[:-2]
        if inner in ("uint8", "octet"):
            return rng.randbytes(big_bytes or rng.randint(1, 64))
        return [_random_value(inner, None, rng, big_bytes) for _ in range(rng.randint(1, 5))]
    if typ == "string":
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_-/") for _ in range(rng.randint(1, 24)))
    if typ == "boolean":
        return rng.random() < 0.5
    if typ in ("float", "double"):
        return float(rng.randint(-10000, 10000)) / 8.0  # exactly representable in float32
    if typ.startswith("uint") or typ == "octet":
        bits = 8 if typ == "octet" else int(typ[4:])
        return rng.getrandbits(min(bits, 63))
    if typ.startswith("int"):
        bits = int(typ[3:])
        return rng.randint(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if typ == "builtin_interfaces/Time":
        return Time(sec=rng.randint(0, 2**31 - 1), nanosec=rng.randint(0, 999_999_999))
    if current is not None and hasattr(current, "get_fields_and_field_types"):
        return fill_message(type(current)(), rng, big_bytes)
    # nested message type by name, e.g. std_msgs/Header
    pkg, _, cls = typ.partition("/")
    mod = __import__(f"{pkg}.msg", fromlist=[cls])
    return fill_message(getattr(mod, cls)(), rng, big_bytes)


def stop_and_check(proc: Any, executor: Any, node: Any) -> None:
    """End a test that ran a node process beside a local node: stop the process (SIGINT), free
    the local node and rclpy, then require a clean exit (code 0, no traceback in its output)."""
    import rclpy

    rc = proc.stop()
    executor.remove_node(node)
    node.destroy_node()
    rclpy.shutdown()
    assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert rc == 0


def wait_for_processes(pred: Callable[[], bool], timeout: float, what: str, procs) -> None:
    """Poll ``pred`` (every 0.2 s) until it holds; else fail with the tail of each process's log
    (``procs``: objects with ``name`` and ``output()``, e.g. the demo's RosProcess)."""
    import time

    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(f"--- {p.name}\n{p.output()[-4000:]}" for p in procs))


#: a robot's log line for each model it applies (the kind, its versions, its chain)
APPLIED = re.compile(r"applied (update|snapshot|catch-up) v(\d+)->v(\d+) of chain (\w+)")


#: (issue #29) the robot's swap watch off, for system tests of delivery (chains, resyncs, launch, shutdown)
#: whose student starts random: its first phases often label a whole frame with one class, which the
#: watch rightly steps back from, breaking the unbroken chain those tests check. The watch itself is
#: tested in test/core/edge/test_swap_watch.py, test/nodes/test_student_segmenter.py and, on, by the
#: end-to-end demo (a pretrained student; no step back asserted).
NO_SWAP_WATCH = {"swap_watch_frames": 0}


def demo_student_params(tmp_path) -> dict[str, Any]:
    """Save a demo-size student's first weights (seed 0) in ``tmp_path`` and return the
    parameters that make a server and its robots start from them (both sides the same w0)."""
    import torch

    from ams_ros.core.models.labels import get_label_space
    from ams_ros.core.models.weights import load_student, save_student_checkpoint

    torch.manual_seed(0)
    n_cls = len(get_label_space("synthetic").class_names)
    weights = save_student_checkpoint(load_student("deeplabv3_mobilenet_v2", n_cls), tmp_path / "w0.pt",
                                      "deeplabv3_mobilenet_v2", n_cls)
    return {"student": "deeplabv3_mobilenet_v2", "student_weights": str(weights), "label_space": "synthetic",
            "selected_classes": [""]}
