"""rclpy API differences between the ROS 2 distributions ams_ros supports (Jazzy, Kilted).

- ``with rclpy.init(args=...)``: Kilted's rclpy (9.x) returns a context manager from ``init``;
  Jazzy's (7.x) returns None. :func:`ros_session` is the same ``with`` block on both: init on
  entry, ``try_shutdown`` on exit (also after an exception or a signal).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import rclpy


@contextmanager
def ros_session(args: list[str] | None = None) -> Iterator[None]:
    """``with rclpy.init(args=args):`` on every supported distribution."""
    rclpy.init(args=args)
    try:
        yield
    finally:
        rclpy.try_shutdown()
