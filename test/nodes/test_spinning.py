"""How an executable ends: 0 after Ctrl-C or SIGTERM with every node destroyed (rclpy's signal
handlers while the nodes spin, the process's own before and after: a second signal never kills it), 78 with one line when start-up fails on a parameter's value
(not restarted), 1 with the traceback when start-up fails otherwise, 1 when a node on its own
executor thread raises (before, that thread died and the process went on silently)."""

from __future__ import annotations

import signal
import time

import pytest

from ams_ros.core.common.paths import SOURCE_ROOT

from ams_ros.nodes.common.exit_codes import CONFIG_ERROR

from ros_helpers import require_ros, start_python

require_ros()

PEER = str(SOURCE_ROOT / "test" / "spinning_peer.py")


pytestmark = pytest.mark.ros


def _wait_for(proc, *texts: str, timeout: float = 60.0) -> list[str]:
    """Read the peer's output until every one of ``texts`` was printed (in any order)."""
    lines: list[str] = []
    missing = set(texts)
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        missing = {t for t in missing if t not in line}
    if missing:
        raise AssertionError(f"{sorted(missing)} not seen; output:\n{''.join(lines)}")
    return lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_destroys_every_node_and_exits_0(sig):
    proc = start_python([PEER, "ok"])
    try:
        _wait_for(proc, "lane_peer spinning", "shared_peer spinning")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "lane_peer destroyed" in out and "shared_peer destroyed" in out
    assert "Traceback" not in out
    # rclpy's signal thread is joined before any executor frees the guard conditions it walks
    assert out.index("signal handling stopped") < out.index("executor shut down"), out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_while_the_nodes_stop_does_not_kill_the_process(sig):
    """Launch's SIGTERM to the group and then the kernel's when launch dies (die_with_parent)
    reach a node twice: the second, mid-stop, is ignored and the process still exits 0."""
    proc = start_python([PEER, "slow_stop"])
    try:
        _wait_for(proc, "lane_peer spinning", "shared_peer spinning")
        proc.send_signal(sig)
        _wait_for(proc, "shared_peer stopping")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "shared_peer destroyed" in out and "Traceback" not in out


def test_a_signal_just_after_rclpys_handlers_are_uninstalled_is_ignored_and_the_process_exits_0():
    """Uninstalling rclpy's handlers (to join its signal thread before the executors free what it
    walks) puts back the process's own, installed before rclpy.init, not the defaults: a SIGTERM in
    that moment once killed the robot on Kilted (-15)."""
    proc = start_python([PEER, "signal_after_uninstall"])
    try:
        _wait_for(proc, "lane_peer spinning", "shared_peer spinning")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "signalled after uninstalling" in out and "shared_peer destroyed" in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_nodes_are_built_stops_the_process_at_once_with_0(sig):
    proc = start_python([PEER, "slow_start"])
    try:
        _wait_for(proc, "building")
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert took < 25.0, f"the build went on for {took:.1f} s after the signal"  # it sleeps 30 s
    assert "spinning" not in out, out


def test_a_configuration_error_at_start_up_is_one_line_and_exits_78():
    """A parameter the process cannot start with (a ValueError while building the nodes): one line
    naming the value and the choices, exit code 78, which the launch files do not restart (issue #27)."""
    proc = start_python([PEER, "startup"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == CONFIG_ERROR
    assert "configuration error, not starting: parameter x=3 is not valid; choose one of: 1, 2" in out
    assert "Traceback" not in out


def test_any_other_start_up_failure_is_logged_with_its_traceback_and_exits_1():
    proc = start_python([PEER, "startup_crash"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "start-up failed" in out and "Traceback" in out and "the driver crashed" in out


def test_a_raising_callback_on_a_dedicated_executor_ends_the_process_with_1():
    proc = start_python([PEER, "raise"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "boom in a callback" in out and "shutting the process down" in out
    assert "shared_peer destroyed" in out


def test_a_worker_thread_that_dies_ends_the_process_with_1():
    """issue #13: the server's trainer / labeler threads dying must not leave a process that looks
    healthy; it exits 1 (a supervisor restarts it) after destroying its nodes."""
    proc = start_python([PEER, "worker"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "worker thread 'worker_peer_thread' died" in out and "worker boom" in out
    assert "worker_peer destroyed" in out and "shared_peer destroyed" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_guarded_callback_that_raises_is_counted_and_the_process_keeps_running(sig):
    proc = start_python([PEER, "guarded"])
    try:
        lines = _wait_for(proc, "guarded_peer rejected 5", "shared_peer spinning")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert "rejected tick: ValueError: bad input 0" in out
    assert "guarded_peer destroyed after" in out and "Traceback" not in out


def test_a_thread_pool_job_that_raises_ends_the_process_with_1():
    """The sampler's H.264 encoder runs on a thread pool; its exception must not vanish."""
    proc = start_python([PEER, "pool"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "pool_peer job failed" in out and "encoder boom" in out and "pool_peer destroyed" in out
