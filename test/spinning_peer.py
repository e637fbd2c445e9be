"""A tiny process for test_spinning.py: ``run_process`` with one shared and one dedicated node.

    python spinning_peer.py ok|raise|startup|startup_crash|worker|guarded|pool|slow_stop|slow_start|signal_after_uninstall
``ok`` spins until a signal; ``raise`` has the dedicated node's timer raise; ``startup`` fails
while building the nodes on a bad value, ``startup_crash`` for another reason; ``worker`` has a node's worker thread die; ``guarded`` has a timer
wrapped by RejectLog.guard raise on every tick (counted, the process keeps running); ``pool``
has a watched thread-pool job raise (as the sampler's encoder might); ``slow_stop`` takes 1.5 s to
destroy its shared node (a second signal can arrive meanwhile); ``slow_start`` takes 30 s to build
its nodes; ``signal_after_uninstall`` sends itself SIGTERM and SIGINT just after rclpy's signal
handlers are uninstalled. Every node prints when
``destroy_node`` runs, and the process prints when rclpy's signal handling stops and when an
executor shuts down (their order is checked).
"""

from __future__ import annotations

import sys

from rclpy.node import Node

from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.common.spinning import ProcessNodes, run_process, watch_future, worker_thread


class Peer(Node):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name)
        self._fail = fail
        self.create_timer(0.1, self._tick)
        self._ticks = 0

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks == 1:
            print(f"{self.get_name()} spinning", flush=True)
        if self._fail and self._ticks == 3:
            raise RuntimeError("boom in a callback")

    def destroy_node(self) -> None:
        print(f"{self.get_name()} destroyed", flush=True)
        super().destroy_node()


class WorkerPeer(Peer):
    """A node with a worker thread that dies after a moment (as a trainer thread might)."""

    def __init__(self) -> None:
        super().__init__("worker_peer")
        self._thread = worker_thread(self._work, "worker_peer_thread", self.get_logger())
        self._thread.start()

    def _work(self) -> None:
        import time

        time.sleep(0.5)
        raise RuntimeError("worker boom")

    def destroy_node(self) -> None:
        self._thread.join(timeout=5.0)
        super().destroy_node()


class PoolPeer(Peer):
    """Submits one job to a thread pool, watched; the job raises."""

    def __init__(self) -> None:
        super().__init__("pool_peer")
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1)
        self.create_timer(0.3, self._submit_once)
        self._submitted = False

    def _submit_once(self) -> None:
        if not self._submitted:
            self._submitted = True
            watch_future(self._pool.submit(self._job), "pool_peer job", self.get_logger())

    @staticmethod
    def _job() -> None:
        raise RuntimeError("encoder boom")

    def destroy_node(self) -> None:
        self._pool.shutdown(wait=True)
        super().destroy_node()


class SlowStopPeer(Peer):
    """Takes 1.5 s to stop (as a node finishing an encode or a phase does)."""

    def destroy_node(self) -> None:
        import time

        print(f"{self.get_name()} stopping", flush=True)
        time.sleep(1.5)
        super().destroy_node()


class GuardedPeer(Node):
    """A timer whose every tick raises, guarded: each is a counted rejection."""

    def __init__(self) -> None:
        super().__init__("guarded_peer")
        self.rejects = RejectLog(self, every_s=0.0)
        self.create_timer(0.05, self.rejects.guard("tick", self._tick))

    def _tick(self) -> None:
        n = self.rejects.counter.count
        if n == 5:
            print("guarded_peer rejected 5", flush=True)
        raise ValueError(f"bad input {n}")

    def destroy_node(self) -> None:
        print(f"guarded_peer destroyed after {self.rejects.counter.count} rejections", flush=True)
        super().destroy_node()


def build(mode: str) -> ProcessNodes:
    if mode == "startup":
        raise ValueError("parameter x=3 is not valid; choose one of: 1, 2")
    if mode == "startup_crash":
        raise RuntimeError("the driver crashed")
    if mode == "worker":
        return ProcessNodes(shared=[Peer("shared_peer"), WorkerPeer()])
    if mode == "pool":
        return ProcessNodes(shared=[Peer("shared_peer"), PoolPeer()])
    if mode == "slow_start":
        import time

        print("building", flush=True)
        time.sleep(30.0)  # a model loading: a stop signal arrives meanwhile
    if mode == "slow_stop":
        return ProcessNodes(shared=[SlowStopPeer("shared_peer")], dedicated=[Peer("lane_peer")])
    if mode == "guarded":
        return ProcessNodes(shared=[Peer("shared_peer")], dedicated=[GuardedPeer()])
    return ProcessNodes(shared=[Peer("shared_peer")], dedicated=[Peer("lane_peer", fail=mode == "raise")])


def _announce(owner, name: str, text: str) -> None:
    """Print ``text`` each time ``owner.name`` runs."""
    real = getattr(owner, name)

    def announced(*args, **kwargs):
        print(text, flush=True)
        return real(*args, **kwargs)
    setattr(owner, name, announced)


def _signal_right_after(owner, name: str) -> None:
    """Once ``owner.name`` has run, the process sends itself SIGTERM and SIGINT (the second signal
    of a stop, landing in the moment just after rclpy's handlers are gone) and gives them time to
    be handled."""
    import os
    import signal
    import time

    real = getattr(owner, name)

    def then_signalled(*args, **kwargs):
        result = real(*args, **kwargs)
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
            time.sleep(0.2)  # Python runs its handler between bytecodes of this thread
        print("signalled after uninstalling", flush=True)
        return result
    setattr(owner, name, then_signalled)


if __name__ == "__main__":
    import rclpy.executors
    import rclpy.signals

    _announce(rclpy.signals, "uninstall_signal_handlers", "signal handling stopped")
    _announce(rclpy.executors.Executor, "shutdown", "executor shut down")
    mode = sys.argv[1]
    if mode == "signal_after_uninstall":
        _signal_right_after(rclpy.signals, "uninstall_signal_handlers")
    sys.exit(run_process("peer", lambda: build(mode), sys.argv[:1]))
