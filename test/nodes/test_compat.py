"""ams_ros.nodes.common.compat: `with ros_init(args=...)` works on Jazzy (rclpy 7.x) and Kilted (9.x)."""

from __future__ import annotations

import os

import pytest

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402

from ams_ros.nodes.common.compat import init_returns_context_manager, ros_init  # noqa: E402


pytestmark = pytest.mark.ros


def _distro_major() -> tuple[str, int]:
    from importlib.metadata import version

    return os.environ.get("ROS_DISTRO", ""), int(version("ros-rclpy").split(".")[0])


def test_rclpy_init_context_manager_support_is_as_documented():
    """Jazzy's rclpy.init returns None (no `with`), Kilted's an InitContextManager."""
    distro, major = _distro_major()
    assert init_returns_context_manager() == (major >= 8)
    if distro == "jazzy":
        assert major == 7 and not init_returns_context_manager()
    if distro == "kilted":
        assert major == 9 and init_returns_context_manager()
    if init_returns_context_manager():
        with rclpy.init(args=["ams_compat_test"]):
            assert rclpy.ok()
        assert not rclpy.ok()
    else:
        result = rclpy.init(args=["ams_compat_test"])
        try:
            assert result is None
            with pytest.raises((TypeError, AttributeError)):
                with result:  # what `with rclpy.init(...)` does on Jazzy
                    pass
        finally:
            rclpy.shutdown()
        assert not rclpy.ok()


def test_ros_init_as_context_manager_twice_with_ros_args():
    for _ in range(2):  # the default context is replaced on exit, so a second init works
        with ros_init(args=["ams_compat_test", "--ros-args", "-r", "__ns:=/compat"]):
            assert rclpy.ok()
            node = rclpy.create_node("ams_compat_node")
            try:
                assert node.get_namespace() == "/compat"
            finally:
                node.destroy_node()
        assert not rclpy.ok()


def test_ros_init_shuts_down_on_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with ros_init(args=None):
            assert rclpy.ok()
            raise RuntimeError("boom")
    assert not rclpy.ok()


def test_ros_init_with_own_context_and_as_plain_call():
    ctx = Context()
    with ros_init(context=ctx):
        assert ctx.ok() and not rclpy.ok()
    assert not ctx.ok()
    ros_init()  # a plain call, as rclpy.init() is used today
    try:
        assert rclpy.ok()
    finally:
        rclpy.try_shutdown()
    assert not rclpy.ok()


def _race_with_the_signal_thread(monkeypatch) -> list[str]:
    """Make the next Context.try_shutdown lose the race a stop signal can start: rclpy's signal
    thread shuts the rcl context down (from C++) between try_shutdown's ok() check and its own
    shutdown, which then raises (Jazzy: RCLError 'rcl_shutdown already called'; Kilted:
    RuntimeError 'Context already shutdown')."""
    real = Context.try_shutdown
    calls: list[str] = []

    def racing(self: Context) -> None:
        if calls:
            return real(self)
        calls.append("raced")
        rcl_context = self._Context__context
        assert rcl_context.ok()  # try_shutdown's check passes ...
        rcl_context.shutdown()   # ... the signal thread shuts it down ...
        rcl_context.shutdown()   # ... and try_shutdown's own call raises

    monkeypatch.setattr(Context, "try_shutdown", racing)
    return calls


def test_ros_init_exit_absorbs_the_context_shut_down_by_the_signal_thread_meanwhile(monkeypatch):
    calls = _race_with_the_signal_thread(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # the stop signal's own exception, not RCLError
        with ros_init(args=["ams_compat_test"]):
            raise KeyboardInterrupt
    assert calls == ["raced"]
    assert not rclpy.ok()
    with ros_init(args=["ams_compat_test"]):  # the default context was replaced: init works again
        assert rclpy.ok()
    assert not rclpy.ok()


def test_the_race_itself_raises_rcl_error_without_ros_init(monkeypatch):
    """The failure the test above guards against (so that test can fail)."""
    _race_with_the_signal_thread(monkeypatch)
    rclpy.init(args=["ams_compat_test"])
    with pytest.raises(RuntimeError, match="already"):
        rclpy.try_shutdown()
    rclpy.try_shutdown()  # the second call finds it shut down and replaces the default context
    assert not rclpy.ok()


def test_ros_init_exit_reraises_an_rcl_error_while_the_context_is_still_up(monkeypatch):
    from rclpy.impl.implementation_singleton import rclpy_implementation

    def failing(self: Context) -> None:
        raise rclpy_implementation.RCLError("failed to shutdown: something else")

    manager = ros_init(args=["ams_compat_test"])
    try:
        monkeypatch.setattr(Context, "try_shutdown", failing)
        with pytest.raises(rclpy_implementation.RCLError, match="something else"):
            manager.__exit__(None, None, None)
        assert rclpy.ok()
    finally:
        monkeypatch.undo()
        manager.__exit__(None, None, None)
    assert not rclpy.ok()
