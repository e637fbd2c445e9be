"""The server rejects garbage, truncated and corrupted (checksum) frame batches with a clear log
line and keeps serving: a good batch afterwards still produces a model update."""

from __future__ import annotations

import numpy as np
import pytest

from ros_helpers import require_ros, spin_until, stop_and_check

require_ros()

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from ams_msgs.msg import FrameBatch, ModelUpdate, ServerStatus  # noqa: E402
from ams_ros.core.wire.frame_codec import encode_frames  # noqa: E402
from ams_ros.core.sources.synthetic import SyntheticWorld  # noqa: E402
from ams_ros.nodes.common.processes import CONFIG, RosProcess, write_overrides  # noqa: E402
from ams_ros.nodes.common.conversions import frame_batch_checksum, sec_to_stamp  # noqa: E402
from ams_ros.nodes.common.qos import qos  # noqa: E402

DEV = "robot_srv"


pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("server_bad")
    params = write_overrides(out / "server.yaml", {
        "/**": {"device_ids": [DEV]},
        "teacher_labeler": {"teacher": "oracle"},
        "ams_trainer": {"input_width": 64, "input_height": 32, "iterations": 2,
                        "batch_size": 2, "torch_threads": 1},
    })
    rclpy.init()
    node = rclpy.create_node("server_bad_input_tester")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    updates: list[ModelUpdate] = []
    statuses: list[ServerStatus] = []
    node.create_subscription(ModelUpdate, f"/{DEV}/ams/model_update", updates.append, qos("reliable", 10))
    node.create_subscription(ServerStatus, f"/{DEV}/ams/server_status", statuses.append, qos("reliable", 10))
    pub = node.create_publisher(FrameBatch, f"/{DEV}/ams/frame_batch", qos("reliable", 10))
    proc = RosProcess("server", "ams_ros.nodes.server", [CONFIG / "server.yaml", params], None, out / "server.log")
    assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 60), proc.output()[-3000:]
    yield dict(node=node, ex=ex, proc=proc, pub=pub, updates=updates, statuses=statuses)
    stop_and_check(proc, ex, node)


def _batch(seq: int, data: bytes, stamps: list[float], w=64, h=32, checksum_of: bytes | None = None) -> FrameBatch:
    """A batch as the edge sends it, with the checksum of ``checksum_of`` (as sent), then ``data``
    (as received)."""
    msg = FrameBatch(device_id=DEV, batch_seq=seq, codec="h264", width=w, height=h, sampling_rate=1.0,
                     update_period=4.0)
    msg.frame_stamps = [sec_to_stamp(t) for t in stamps]
    if checksum_of is not None:
        msg.data = checksum_of
        msg.checksum = frame_batch_checksum(msg)
    msg.data = data
    return msg


def test_garbage_then_truncated_then_good_batch(server):
    world = SyntheticWorld(seed=0, width=64, height=32)
    stamps = [float(t) for t in range(4)]
    frames = [world.frame_at(t)[0] for t in stamps]
    good = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=4.0)
    flipped = bytearray(good.data)
    flipped[len(flipped) // 2] ^= 0x10  # one bit in the middle of the stream
    server["pub"].publish(_batch(0, np.random.default_rng(0).bytes(5000), stamps))
    server["pub"].publish(_batch(1, good.data[: len(good.data) // 3], stamps))
    server["pub"].publish(_batch(2, bytes(flipped), stamps, checksum_of=good.data))
    shifted = _batch(3, good.data, stamps, checksum_of=good.data)
    shifted.frame_stamps[1].nanosec += 1  # frames right, one stamp 1 ns off
    server["pub"].publish(shifted)
    server["pub"].publish(_batch(4, good.data, stamps, checksum_of=good.data))
    assert spin_until(server["ex"], lambda: len(server["updates"]) >= 1, 120), server["proc"].output()[-3000:]
    log = server["proc"].output()
    assert "rejected batch 0" in log
    assert "rejected batch 1" in log
    assert "rejected batch 2: checksum mismatch" in log
    assert "rejected batch 3: checksum mismatch" in log
    assert "frame batches carry no checksum" in log  # batches 0 and 1 had none
    assert server["proc"].alive()
    assert spin_until(server["ex"], lambda: len(server["statuses"]) >= 1, 10)
    st = server["statuses"][-1]
    assert st.batches_received == 5
    assert st.batches_dropped >= 4
    assert server["updates"][0].new_version == 1 and server["updates"][0].base_version == 0


def test_batches_declaring_too_many_or_too_large_frames_and_a_bomb_are_counted_and_reported(server):
    """issue #13: the declared count and size are checked before decoding; an H.264 bomb is
    rejected; each rejection is counted in ServerStatus and reported on /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from ams_ros.fuzz.batches import solid_h264

    diags: list[DiagnosticArray] = []
    server["node"].create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos("reliable", 50))
    many = _batch(10, b"\x00" * 100, [float(t) for t in range(601)])
    huge = _batch(11, b"\x00" * 100, [0.0, 1.0], w=4000, h=3000)
    bomb = _batch(12, solid_h264(200, 640, 360), [float(t) for t in range(4)])
    bomb.checksum = frame_batch_checksum(bomb)
    for m in (many, huge, bomb):
        server["pub"].publish(m)
    n0 = len(server["statuses"])
    world = SyntheticWorld(seed=1, width=64, height=32)
    stamps = [float(t) for t in range(10, 14)]
    good = encode_frames([world.frame_at(t)[0] for t in stamps], stamps, bitrate_bps=200_000, period_s=4.0)
    server["pub"].publish(_batch(13, good.data, stamps, checksum_of=good.data))
    assert spin_until(server["ex"], lambda: len(server["statuses"]) > n0 and server["statuses"][-1].inputs_rejected >= 7,
                      120), server["proc"].output()[-3000:]
    log = server["proc"].output()
    assert "rejected batch 10: frame batch declares 601 frames, more than max_batch_frames=600" in log
    assert "rejected batch 11: frame batch declares 4000x3000 frames" in log
    assert "rejected batch 12: decoded frame is 640x360, the batch declares 64x32" in log
    st = server["statuses"][-1]
    assert "batch 12" in st.last_input_rejection or "batch 1" in st.last_input_rejection
    assert spin_until(server["ex"], lambda: any(s.level == DiagnosticStatus.ERROR and "batch 10" in s.message
                                                for d in diags for s in d.status), 10)
    assert server["proc"].alive()
