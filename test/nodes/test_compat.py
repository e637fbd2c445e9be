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
