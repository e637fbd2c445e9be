"""A separate OS process for the interface test: echoes every ams_msgs type and serves the
snapshot service, so the test sees each message cross DDS twice between two processes."""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

import ams_msgs.msg as M
import ams_msgs.srv as S

TYPES = ["FrameBatch", "ModelUpdate", "SamplingCommand", "EdgeStatus", "ServerStatus", "LabelInfo"]


class EchoPeer(Node):
    def __init__(self) -> None:
        super().__init__("ams_interface_echo_peer")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {}
        for t in TYPES:
            cls = getattr(M, t)
            self._pubs[t] = self.create_publisher(cls, f"echo_out/{t}", qos)
            self.create_subscription(cls, f"echo_in/{t}", self._make_cb(t), qos)
        self.create_service(S.GetModelSnapshot, "get_model_snapshot", self._snapshot)
        self._last_update: M.ModelUpdate | None = None

    def _make_cb(self, t: str):
        def cb(msg) -> None:
            if t == "ModelUpdate":
                self._last_update = msg
            self._pubs[t].publish(msg)

        return cb

    def _snapshot(self, req, resp):
        resp.success = self._last_update is not None
        resp.message = f"{req.device_id}|{req.model_fingerprint}|{req.have_version}|{req.encoding}"
        if self._last_update is not None:
            resp.snapshot = self._last_update
        return resp


def main() -> None:
    rclpy.init(args=sys.argv)
    node = EchoPeer()
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    print("peer ready", flush=True)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ex.remove_node(node)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
