"""Rejected inputs: counted, logged without flooding, reported on /diagnostics (issue #13).

A robot must never go blind because of one bad message: every callback of every node catches
what it cannot use (:meth:`RejectLog.guard`), counts it in a :class:`RejectionCounter` that
EdgeStatus / ServerStatus report (``inputs_rejected``, ``last_input_rejection``), logs it, and
publishes a ``diagnostic_msgs/DiagnosticArray`` ERROR on ``/diagnostics``. rclpy's
``throttle_duration_sec`` throttles per call site, so a second, different reason from the same
place would be hidden; the log and the diagnostics are keyed on the reason instead: each
distinct reason at once, repeats of it at most every ``every_s``.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from ams_ros.nodes.common import topics
from ams_ros.nodes.common.qos import qos


@dataclass
class RejectionCounter:
    """Inputs a process rejected since start and the last reason (shared by its nodes)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    count: int = 0
    last: str = ""

    def add(self, reason: str) -> int:
        with self.lock:
            self.count += 1
            self.last = reason
            return self.count

    def read(self) -> tuple[int, str]:
        with self.lock:
            return self.count, self.last


class RejectLog:
    """Counts every rejection; logs each distinct reason at once, repeats at most every ``every_s``,
    and publishes the same (throttled) as a DiagnosticArray ERROR named after the node."""

    def __init__(self, node: Node, every_s: float = 5.0, counter: RejectionCounter | None = None,
                 hardware_id: str = "") -> None:
        self._node = node
        self._every = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self.counter = counter if counter is not None else RejectionCounter()
        self._hardware_id = hardware_id
        self._diag = node.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos("reliable", 10))

    def __call__(self, what: str, reason: str) -> None:
        total = self.counter.add(f"{what}: {reason}")
        now = time.monotonic()
        key = f"{what}:{reason[:80]}"
        with self._lock:
            if now - self._last.get(key, -1e9) < self._every:
                return
            self._last[key] = now
            if len(self._last) > 1000:  # bounded: forget the oldest reasons
                for k in sorted(self._last, key=self._last.get)[:500]:
                    del self._last[k]
        self._node.get_logger().warning(f"rejected {what}: {reason} ({total} inputs rejected so far)")
        self._publish(what, reason, total)

    def _publish(self, what: str, reason: str, total: int) -> None:
        st = DiagnosticStatus()
        st.level = DiagnosticStatus.ERROR
        st.name = f"ams_ros/{self._node.get_name()}"
        st.hardware_id = self._hardware_id
        st.message = f"rejected {what}: {reason}"[:400]
        st.values = [KeyValue(key="inputs_rejected", value=str(total)), KeyValue(key="input", value=what)]
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [st]
        try:
            self._diag.publish(arr)
        except Exception:  # the context may be shutting down; the count and the log remain
            pass

    def guard(self, what: str, fn: Callable[..., Any], fallback: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """``fn`` wrapped so that any exception it raises is a counted rejection of ``what``,
        never the end of the node. ``fallback(*args)`` gives the return value then (a service
        callback must still answer)."""
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:
                if self._node.context.ok():  # while shutting down, a publish races the context: no rejection
                    self(what, f"{type(exc).__name__}: {exc}")
                return fallback(*args, exc) if fallback is not None else None
        return wrapper
