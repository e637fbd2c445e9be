"""A tiny process for test_spinning.py: ``run_process`` with one shared and one dedicated node.

    python spinning_peer.py ok|raise|startup|startup_crash|worker|guarded|pool
``ok`` spins until a signal; ``raise`` has the dedicated node's timer raise; ``startup`` fails
while building the nodes on a bad value, ``startup_crash`` for another reason; ``worker`` has a node's worker thread die; ``guarded`` has a timer
wrapped by RejectLog.guard raise on every tick (counted, the process keeps running); ``pool``
has a watched thread-pool job raise (as the sampler's encoder might). Every node
prints when ``destroy_node`` runs.
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
    if mode == "guarded":
        return ProcessNodes(shared=[Peer("shared_peer")], dedicated=[GuardedPeer()])
    return ProcessNodes(shared=[Peer("shared_peer")], dedicated=[Peer("lane_peer", fail=mode == "raise")])


if __name__ == "__main__":
    mode = sys.argv[1]
    sys.exit(run_process("peer", lambda: build(mode), sys.argv[:1]))
