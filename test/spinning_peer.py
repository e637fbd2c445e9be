"""A tiny process for test_spinning.py: ``run_process`` with one shared and one dedicated node.

    python spinning_peer.py ok|raise|startup
``ok`` spins until a signal; ``raise`` has the dedicated node's timer raise; ``startup`` fails
while building the nodes. Every node prints when ``destroy_node`` runs.
"""

from __future__ import annotations

import sys

from rclpy.node import Node

from ams_ros.nodes.spinning import ProcessNodes, run_process


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


def build(mode: str) -> ProcessNodes:
    if mode == "startup":
        raise ValueError("parameter x=3 is not valid; choose one of: 1, 2")
    return ProcessNodes(shared=[Peer("shared_peer")], dedicated=[Peer("lane_peer", fail=mode == "raise")])


if __name__ == "__main__":
    mode = sys.argv[1]
    sys.exit(run_process("peer", lambda: build(mode), sys.argv[:1]))
