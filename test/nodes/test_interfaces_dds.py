"""Every ams_msgs interface crosses DDS between two OS processes with every field intact."""

from __future__ import annotations

import random
import signal
import time
import zlib

import pytest

from ams_ros.core.common.paths import SOURCE_ROOT

from ros_helpers import ros_test_node, fill_message, require_ros, spin_until, start_python

require_ros()

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

import ams_msgs.msg as M  # noqa: E402
import ams_msgs.srv as S  # noqa: E402

TYPES = ["FrameBatch", "ModelUpdate", "SamplingCommand", "EdgeStatus", "ServerStatus", "LabelInfo"]


pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def peer_and_node():
    peer = start_python([str(SOURCE_ROOT / "test" / "interface_echo_peer.py")])
    try:
        with ros_test_node("ams_interface_test") as (node, ex):
            yield peer, node, ex
    finally:
        peer.send_signal(signal.SIGINT)
        try:
            out, _ = peer.communicate(timeout=10)
        except Exception:
            peer.kill()
            out, _ = peer.communicate()
        assert "Traceback" not in (out or ""), out


def _roundtrip(node, ex, type_name: str, msg, timeout: float = 20.0, resend_s: float = 1.0):
    """Publish ``msg`` to the peer and return its echo.

    Matching is one-sided: this process may see the peer's endpoints before the peer has matched
    this publisher (or the peer's echo publisher this subscription), and a volatile sample sent
    in that window is lost (seen once in CI). So the message is sent again every ``resend_s``
    until an echo comes back; the echo must still equal it field by field.
    """
    cls = getattr(M, type_name)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received = []
    pub = node.create_publisher(cls, f"echo_in/{type_name}", qos)
    sub = node.create_subscription(cls, f"echo_out/{type_name}", received.append, qos)
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, timeout), (
            f"peer process never matched {type_name} topics"
        )
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            pub.publish(msg)
            spin_until(ex, lambda: len(received) > 0, min(resend_s, max(0.0, deadline - time.monotonic())))
        assert received, f"{type_name} did not come back within {timeout:g} s"
        return received[0]
    finally:
        node.destroy_publisher(pub)
        node.destroy_subscription(sub)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_field_survives_two_process_round_trip(peer_and_node, type_name):
    _, node, ex = peer_and_node
    msg = fill_message(getattr(M, type_name)(), random.Random(zlib.crc32(type_name.encode())))
    back = _roundtrip(node, ex, type_name, msg)
    assert back is not msg
    for field in msg.get_fields_and_field_types():
        assert getattr(back, field) == getattr(msg, field), field


@pytest.mark.parametrize("type_name,field", [("FrameBatch", "data"), ("ModelUpdate", "values")])
def test_one_megabyte_payload_intact(peer_and_node, type_name, field):
    _, node, ex = peer_and_node
    msg = fill_message(getattr(M, type_name)(), random.Random(7), big_bytes=1_000_003)
    assert len(getattr(msg, field)) == 1_000_003
    back = _roundtrip(node, ex, type_name, msg)
    assert bytes(getattr(back, field)) == bytes(getattr(msg, field))
    assert back == msg


def test_snapshot_service_between_processes(peer_and_node):
    _, node, ex = peer_and_node
    update = fill_message(M.ModelUpdate(), random.Random(3), big_bytes=200_000)
    _roundtrip(node, ex, "ModelUpdate", update)  # the peer remembers it as its snapshot
    client = node.create_client(S.GetModelSnapshot, "get_model_snapshot")
    try:
        assert spin_until(ex, client.service_is_ready, 20.0), "snapshot service never appeared"
        req = S.GetModelSnapshot.Request(device_id="robot_7", model_fingerprint="abc", have_version=41, encoding="x")
        fut = client.call_async(req)
        assert spin_until(ex, fut.done, 20.0)
        resp = fut.result()
        assert resp.success
        assert resp.message == "robot_7|abc|41|x"
        assert resp.snapshot == update
    finally:
        node.destroy_client(client)
