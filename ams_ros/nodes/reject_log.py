"""Logging rejected inputs without flooding: each distinct reason at once, repeats rarely.

rclpy's ``throttle_duration_sec`` throttles per call site, so a second, different reason from
the same place would be hidden; this keys the throttle on the reason instead.
"""

from __future__ import annotations

import time

from rclpy.node import Node


class RejectLog:
    """Logs each distinct rejection reason at once, repeats of it at most every ``every_s``."""

    def __init__(self, node: Node, every_s: float = 5.0) -> None:
        self._node = node
        self._every = every_s
        self._last: dict[str, float] = {}

    def __call__(self, what: str, reason: str) -> None:
        now = time.monotonic()
        key = reason[:80]
        if now - self._last.get(key, -1e9) >= self._every:
            self._last[key] = now
            self._node.get_logger().warning(f"rejected {what}: {reason}")
