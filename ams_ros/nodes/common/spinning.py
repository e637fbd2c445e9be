"""Running a process's nodes: executors, callback-group lanes, start-up failures, clean exit.

Every executable's ``main`` is ``run_process(name, build, args)``: ``build()`` constructs the
process's nodes inside ``with rclpy.init(...)`` (:func:`~ams_ros.nodes.common.compat.ros_init`) and
says which share one MultiThreadedExecutor and which get an executor thread of their own; rclpy's own signal handlers turn Ctrl-C and
SIGTERM into a shutdown of the context, after which every node is destroyed (each node's
``destroy_node`` stops and joins its own worker threads) and the process exits 0. A parameter
the process cannot start with (a ``ValueError`` or a file that cannot be opened, raised while
building the nodes) is logged as one line naming the value and exits ``CONFIG_ERROR`` (78), which
the launch files do not restart; any other start-up failure is logged with its traceback and
exits 1 (restarted). Exit codes: :mod:`ams_ros.nodes.common.exit_codes`.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

import rclpy
import rclpy.signals
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from ams_ros.nodes.common import exit_codes
from ams_ros.nodes.common.compat import ros_init

_CALLBACK_FAILED = threading.Event()  # set when a callback raised: the process exits 1
# set while run_process's own SIGINT/SIGTERM handlers sit under rclpy's (uninstalling rclpy's is safe)
_OWN_STOP_HANDLERS = threading.Event()
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class ProcessNodes:
    """The nodes of one process: ``shared`` spin on one MultiThreadedExecutor (callback groups
    keep them apart); each of ``dedicated`` gets a SingleThreadedExecutor on a thread of its own."""

    shared: Sequence[Node]
    dedicated: Sequence[Node] = field(default_factory=tuple)
    threads: int | None = None


def spin_nodes(nodes: ProcessNodes) -> None:
    """Spin until the context shuts down (Ctrl-C, SIGTERM, ``rclpy.shutdown``), then destroy the nodes.

    Why dedicated executors: rclpy's MultiThreadedExecutor dispatches every callback from one
    Python loop, which delayed camera images by seconds while updates arrived or batches left;
    on its own executor the segmenter keeps pace with the camera (measurements: docs/results.md,
    "The demo").
    """
    executor = MultiThreadedExecutor(num_threads=nodes.threads)
    for n in nodes.shared:
        executor.add_node(n)
    lanes: list[tuple[SingleThreadedExecutor, threading.Thread]] = []
    for n in nodes.dedicated:
        lane = SingleThreadedExecutor()
        lane.add_node(n)
        lanes.append((lane, threading.Thread(target=_spin_lane, args=(lane, n), name=f"executor:{n.get_name()}",
                                             daemon=True)))
    try:
        for _, thread in lanes:
            thread.start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if executor.context.ok():  # a callback failed; while shutting down, a publish can race the context
            rclpy.logging.get_logger("spin").fatal(f"callback raised; shutting the process down:\n{traceback.format_exc()}")
            _CALLBACK_FAILED.set()
    finally:
        # The order matters (a wrong one crashed the process with SIGSEGV about one stop in ten):
        # rclpy's signal thread is joined before any executor frees its guard conditions,
        # shutting the context down wakes every executor, each lane's thread is left to return
        # from its wait before its executor frees the wait's guard conditions, and no node is
        # destroyed while an executor thread may still be inside one of its callbacks.
        stop_signal_handling()
        executor.context.try_shutdown()
        busy: list[Node] = []  # nodes an executor thread may still be inside: never destroyed under it
        for (lane, thread), node in zip(lanes, nodes.dedicated):
            thread.join(timeout=10.0)
            if thread.is_alive() or not lane.shutdown(timeout_sec=1.0):
                busy.append(node)
        if not _shutdown_within(executor, 10.0):  # a callback still runs (a starved CPU): wait, then leave it
            busy.extend(nodes.shared)
        for n in [*nodes.dedicated, *nodes.shared]:
            if n in busy:
                n.get_logger().warning("still inside a callback at shutdown: not destroyed (the process exit ends it)")
                continue
            try:
                n.destroy_node()
            except Exception as exc:  # keep shutting the others down
                n.get_logger().error(f"error while shutting down: {exc}")


def stop_signal_handling() -> None:
    """Join rclpy's signal-handling thread before any executor is shut down (when the process's
    own stop handlers are in place to take its place; see :func:`run_process`).

    Why (a Ctrl-C under ``ros2 launch`` with both cores busy ended the robot's process once with
    SIGSEGV, exit -11, in some hundreds of such stops): rclpy's C handler wakes a thread of its own
    that walks a global list of every executor's signal guard condition, triggering each. Shutting
    an executor down frees its guard condition and swaps and frees that list, with no lock between
    the two: a signal thread preempted in the middle of its walk (a starved CPU) while this thread
    shuts the executors down touches freed memory. ``uninstall_signal_handlers`` joins that thread,
    after its walk, and puts back the handlers that were there before ``rclpy.init``: the process's
    own (:func:`run_process` installs them first), which ignore a signal while the nodes stop. Were
    they the defaults, a second SIGTERM in that moment (launch's to the group, then the kernel's
    when launch dies, :func:`die_with_parent`) would kill the process half-stopped: that happened
    on Kilted (exit -15) when this ran without them."""
    if _OWN_STOP_HANDLERS.is_set() and threading.current_thread() is threading.main_thread():
        rclpy.signals.uninstall_signal_handlers()


def _shutdown_within(executor, timeout_s: float) -> bool:
    """``executor.shutdown`` until its callbacks have returned (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not executor.shutdown(timeout_sec=1.0):
        if time.monotonic() > deadline:
            return False
    return True


def _spin_lane(executor: SingleThreadedExecutor, node: Node) -> None:
    """A dedicated executor's thread: spins until the executor or the context shuts down.

    A callback that raises must not leave the process silently without this node (the segmenter
    would stop publishing and the process would look healthy): the error is logged with its
    traceback and the whole process is shut down, so a supervisor sees it exit non-zero."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not executor.context.ok():  # shutting down: a publish raced the context going away
            return
        node.get_logger().fatal(f"callback raised; shutting the process down:\n{traceback.format_exc()}")
        _CALLBACK_FAILED.set()
        rclpy.try_shutdown()



def fail_process(logger, what: str) -> None:
    """A part of the process died (a worker thread, a lane): log it with the traceback and shut
    the process down, so it exits 1 and a supervisor (``respawn`` in the launch files) restarts
    it, instead of staying up without that part."""
    logger.fatal(f"{what} died; shutting the process down:\n{traceback.format_exc()}")
    _CALLBACK_FAILED.set()
    rclpy.try_shutdown()


def worker_thread(target: Callable[[], None], name: str, logger) -> threading.Thread:
    """A node's worker thread (the server's trainer and labeler, ...) whose death is not silent:
    an exception escaping ``target`` ends the process with exit code 1 (:func:`fail_process`).
    The node still stops and joins it in ``destroy_node`` (before rclpy and the interpreter
    shut down)."""
    def run() -> None:
        try:
            target()
        except Exception:
            if not rclpy.ok():  # shutting down: a publish raced the context going away, not a failure
                return
            fail_process(logger, f"worker thread '{name}'")
    return threading.Thread(target=run, name=name, daemon=True)


def watch_future(future, what: str, logger) -> None:
    """A job on a node's thread pool (the sampler's H.264 encoder) that raised ends the process
    with 1 like a dying worker thread (its exception would otherwise vanish into the future)."""
    def done(f) -> None:
        if f.cancelled() or f.exception() is None or not rclpy.ok():
            return
        exc = f.exception()
        logger.fatal(f"{what} failed; shutting the process down:\n"
                     + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        _CALLBACK_FAILED.set()
        rclpy.try_shutdown()
    future.add_done_callback(done)


def process_failed() -> bool:
    """True once a callback, a lane or a worker thread failed (the process will exit 1)."""
    return _CALLBACK_FAILED.is_set()


# Start-up failures that are the parameters' fault: a value the code refuses (every check raises a
# ValueError subclass naming the value and the choices), a value of the wrong type for its declared
# parameter (rclpy's ParameterException), or a file named by a parameter that cannot be opened.
# Restarting would fail the same way.
CONFIG_ERRORS = (ValueError, ParameterException, FileNotFoundError, PermissionError, IsADirectoryError,
                 NotADirectoryError)


def config_error_message(exc: BaseException) -> str:
    """One line for a configuration error: its text, with the file for an OSError."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: '{exc.filename}'"
    return " ".join(str(exc).split()) or type(exc).__name__


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux; elsewhere nothing).

    Why (issue #27): upstream ``ros2 launch`` ends at once on SIGTERM without stopping what it
    started ("using SIGTERM can result in orphaned processes"), so a robot whose launch was
    terminated kept running, unsupervised, and a second launch started a duplicate node of the
    same name. With this, the node stops as on Ctrl-C (exit 0) when its launch (or any parent)
    goes away."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_process(name: str, build: Callable[[], ProcessNodes], args: list[str] | None = None) -> int:
    """``main`` of an executable: init, build the nodes, spin, shut down. Returns the exit code:
    0 after Ctrl-C / SIGTERM, ``CONFIG_ERROR`` (78) when the parameters cannot work
    (:data:`CONFIG_ERRORS`), 1 when building a node failed otherwise or a callback raised.

    Ctrl-C and SIGTERM: the process's own handlers are installed first, before ``rclpy.init``, so
    that rclpy's (which shut the context down, and the spin ends by itself) chain to them instead of
    the defaults, and so that uninstalling rclpy's while the nodes stop (:func:`stop_signal_handling`)
    puts these back, never a default that kills. While starting they stop the process at once (exit
    0); once the nodes spin, and after, they leave it to the stop under way, so a second signal
    (launch's SIGTERM to the group, then the kernel's when launch dies) cannot end the process
    half-stopped or before its exit code. Python's default SIGINT handler would also raise
    KeyboardInterrupt at whatever bytecode the main thread is on; on Kilted that once landed inside
    rclpy's ``Task.__init__`` and left a half-built Task whose ``__del__`` printed a traceback at exit.
    The handlers are left in place when this returns: the process is ending."""
    die_with_parent()
    # A crash in native code (DDS, an inference runtime, the H.264 encoder) prints every thread's
    # Python stack to stderr (the launch log) before the process dies, instead of a bare exit -11.
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    starting = threading.Event()
    starting.set()

    def on_stop_signal(signum: int, frame: Any) -> None:
        if starting.is_set():  # start-up: stop at once
            raise KeyboardInterrupt
        # spinning: rclpy's handler shuts the context down; stopping or stopped: under way already

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    _OWN_STOP_HANDLERS.set()
    try:
        with ros_init(args=args if args is not None else sys.argv):
            try:
                nodes = build()
            except CONFIG_ERRORS as exc:
                logger = rclpy.logging.get_logger(name)
                logger.debug(f"start-up failed:\n{traceback.format_exc()}")
                logger.fatal(f"configuration error, not starting: {config_error_message(exc)}")
                return exit_codes.CONFIG_ERROR
            except Exception:
                rclpy.logging.get_logger(name).fatal(f"start-up failed:\n{traceback.format_exc()}")
                return exit_codes.FAILED
            starting.clear()
            spin_nodes(nodes)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        starting.clear()
    return exit_codes.FAILED if _CALLBACK_FAILED.is_set() else exit_codes.OK


def exit_process(code: int) -> NoReturn:
    """End an executable with ``code`` once :func:`run_process` has shut everything down, without
    Python's and C++'s exit-time destructors.

    Why (issue #27): a server stopped in the middle of a backward pass ends the pass by raising
    from a gradient hook on the trainer's thread (:func:`~ams_ros.core.server.trainer.stop_hooks`); the
    phase is rolled back and the thread joined, but on this deeplabv3 student PyTorch's autograd
    engine then aborted the process at exit ("terminate called without an active exception", exit
    -6; a minimal reproduction in docs/results.md, "Stopping under launch"). By the time this runs
    the nodes are destroyed, rclpy is shut down (DDS participants deleted), the sessions saved and
    Ray shut down, so only buffered output is left to flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
