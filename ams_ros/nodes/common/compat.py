"""rclpy differences between the ROS 2 distributions ams_ros runs on.

ams_ros runs on Jazzy (rclpy 7.x, the default) and Kilted (rclpy 9.x) with one code base. The
one difference its code can meet:

* ``with rclpy.init(args=...):`` works on Kilted only. Kilted's ``rclpy.init`` returns an
  ``InitContextManager`` whose exit shuts the context down; Jazzy's returns ``None``, so the
  ``with`` statement raises ``TypeError`` (and ``Node``, publishers, timers etc. are context
  managers on Kilted only, too). :func:`ros_init` is ``rclpy.init`` that is a context manager on
  both: it initialises at once (so it may also be called as a plain function, as
  ``rclpy.init`` is) and, used with ``with``, shuts the context down on exit.
"""

from __future__ import annotations

from typing import Any, List, Optional

import rclpy
from rclpy.utilities import get_default_context


def init_returns_context_manager() -> bool:
    """True where ``rclpy.init`` itself returns a context manager (Kilted's rclpy 9.x on)."""
    return hasattr(rclpy, "InitContextManager")


class _InitContext:
    """What :func:`ros_init` returns: shuts down what it initialised on ``__exit__``, through
    Kilted's own ``InitContextManager`` where there is one, and without failing when rclpy's
    signal thread shut the context down at the same moment (see the module docstring)."""

    def __init__(self, context: Any, inner: Any = None) -> None:
        self.context = context
        self.inner = inner  # Kilted's InitContextManager, None on Jazzy

    def __enter__(self) -> "_InitContext":
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        try:
            self._shut_down()
        except RuntimeError:  # rclpy's RCLError is one
            if self.context.ok():
                raise  # not the race: the context is still up
            self._shut_down()  # shut down meanwhile; now finds it so and finishes the clean-up

    def _shut_down(self) -> None:
        if self.inner is not None:
            self.inner.__exit__(None, None, None)
            return
        # As Kilted's InitContextManager: the default context is shut down through
        # try_shutdown(context=None), which replaces it so that rclpy.init() works again.
        default = self.context is get_default_context()
        rclpy.try_shutdown(context=None if default else self.context)


def ros_init(args: Optional[List[str]] = None, *, context: Any = None,
             domain_id: Optional[int] = None, signal_handler_options: Any = None) -> Any:
    """``rclpy.init(args=..., ...)`` that can be used as ``with ros_init(args=...):`` on every distro."""
    kwargs: dict[str, Any] = {"args": args, "context": context, "domain_id": domain_id}
    if signal_handler_options is not None:
        kwargs["signal_handler_options"] = signal_handler_options
    result = rclpy.init(**kwargs)
    inner = result if result is not None and hasattr(result, "__exit__") else None  # Kilted on
    return _InitContext(get_default_context() if context is None else context, inner)
