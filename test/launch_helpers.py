"""Helpers for tests that run ``ros2 launch`` and the ROS 2 CLI the way robots do (issue #27).

``RosLaunch`` is ``ros2 launch ams_ros FILE ARGS`` in a process group of its own (as a terminal
starts it), DDS on loopback in the test's private domain, its output in a file. ``ros2()`` runs a
CLI verb in the same domain. ``RosClient`` is the test process's own node: parameters read back
through the nodes' parameter services, messages waited for on topics.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from typing import Any, Callable

import pytest

from ams_ros.nodes.common.processes import RosLaunch  # noqa: F401 (re-exported for the tests)
from ams_ros.nodes.common.processes import cli_environment
from ros_helpers import REPO_ROOT


def launch_missing() -> str | None:
    """Why ``ros2 launch`` cannot run here, or None."""
    for module in ("launch", "launch_ros", "ros2launch", "ros2cli", "launch_testing"):
        if importlib.util.find_spec(module) is None:
            return (f"ros2 launch is not installed ({module} missing): `make setup` installs it from "
                    f"../shared/vendor/ros2-jazzy, or source a ROS 2 installation")
    if importlib.util.find_spec("composition_interfaces") is None:
        return "composition_interfaces is not built: run `make setup`"
    if shutil.which("ros2") is None:
        return "the ros2 command is not on PATH: source .env.sh"
    return None


def require_launch() -> None:
    """Skip the calling test module when ``ros2 launch`` is not installed (with the reason)."""
    reason = launch_missing()
    if reason:
        pytest.skip(reason, allow_module_level=True)


def cli_env(domain_id: int | None = None) -> dict[str, str]:
    """The environment of a ``ros2`` CLI process in this test run's domain, DDS on loopback."""
    return cli_environment(domain_id)


def ros2(*args: str, timeout: float = 60.0, domain_id: int | None = None) -> subprocess.CompletedProcess:
    """``ros2 ARGS`` in the test's domain on loopback; output and exit code returned, never raised
    (a verb that hangs past ``timeout`` gives exit code None and what it printed)."""
    try:
        return subprocess.run(["ros2", *args], env=cli_env(domain_id), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, None, exc.stdout or "", exc.stderr or "")


def ros2_until(done: Callable[[subprocess.CompletedProcess], bool], *args: str,
               timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``ros2 ARGS`` again until ``done(result)`` (discovery is asynchronous: the CLI's daemon, just
    started, does not know every node yet); the last result either way."""
    deadline = time.monotonic() + timeout
    while True:
        out = ros2(*args, timeout=timeout)
        if done(out) or time.monotonic() > deadline:
            return out
        time.sleep(1.0)


class RosClient:
    """The test process's node: reads other nodes' parameters, waits for messages."""

    def __init__(self, name: str = "launch_test_client") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def parameters(self, node: str, names: list[str], timeout: float = 30.0) -> dict[str, Any]:
        """``{name: value}`` of ``node`` (fully qualified) through its get_parameters service."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{node}/get_parameters")
        try:
            if not self.spin_until(client.service_is_ready, timeout):
                pytest.fail(f"no parameter service of {node} within {timeout:g} s")
            future = client.call_async(GetParameters.Request(names=list(names)))
            if not self.spin_until(future.done, timeout):
                pytest.fail(f"{node} did not answer get_parameters within {timeout:g} s")
            values = future.result().values
        finally:
            self.node.destroy_client(client)
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list:
        """A list that fills with every ``msg_type`` message on ``topic`` from now on."""
        got: list = []
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def close(self) -> None:
        import rclpy

        self.executor.remove_node(self.node)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


class Subreaper:
    """While inside, this process adopts its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``),
    so the exit code of a node whose ``ros2 launch`` died can still be read (:meth:`wait`)."""

    def __enter__(self) -> "Subreaper":
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        if self._libc.prctl(36, 1, 0, 0, 0) != 0:
            pytest.skip("PR_SET_CHILD_SUBREAPER is not available here")
        return self

    def wait(self, pid: int, timeout: float) -> int | None:
        """Exit code of adopted process ``pid`` (negative: killed by that signal), None if still running."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not adopted yet: its parent is still alive
                done, status = 0, 0
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._libc.prctl(36, 0, 0, 0, 0)


class CpuBurner:
    """Busy loops on every core (both cores busy, as during a build), as separate processes."""

    def __init__(self, processes: int | None = None) -> None:
        n = processes or os.cpu_count() or 2
        self.procs = [subprocess.Popen(["python3", "-c", "while True: pass"]) for _ in range(n)]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()

    def __enter__(self) -> "CpuBurner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
