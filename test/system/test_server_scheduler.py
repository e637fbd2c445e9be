"""Two robots on one server under the ``utility`` GPU scheduler (issue #16): both get their
updates, and each robot's ServerStatus carries its GPU share and the policy in force."""

from __future__ import annotations

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

DEVS = ("fleet_a", "fleet_b")


pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_two_robots_under_utility_policy_both_get_updates_and_a_gpu_share(tmp_path) -> None:
    params = write_overrides(tmp_path / "server.yaml", {
        "/**": {"device_ids": list(DEVS)},
        "teacher_labeler": {"teacher": "oracle"},
        "ams_trainer": {"input_width": 64, "input_height": 32, "iterations": 2, "batch_size": 2,
                        "torch_threads": 1, "scheduler_policy": "utility"},
    })
    rclpy.init()
    node = rclpy.create_node("server_scheduler_tester")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    updates: dict[str, list[ModelUpdate]] = {d: [] for d in DEVS}
    statuses: dict[str, list[ServerStatus]] = {d: [] for d in DEVS}
    pubs = {}
    for d in DEVS:
        node.create_subscription(ModelUpdate, f"/{d}/ams/model_update", updates[d].append, qos("reliable", 10))
        node.create_subscription(ServerStatus, f"/{d}/ams/server_status", statuses[d].append, qos("reliable", 10))
        pubs[d] = node.create_publisher(FrameBatch, f"/{d}/ams/frame_batch", qos("reliable", 10))
    proc = RosProcess("server", "ams_ros.nodes.server", [CONFIG / "server.yaml", params], None, tmp_path / "server.log")
    try:
        assert spin_until(ex, lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 60), \
            proc.output()[-3000:]
        for seed, d in enumerate(DEVS):
            world = SyntheticWorld(seed=seed, width=64, height=32)
            stamps = [float(t) for t in range(4)]
            enc = encode_frames([world.frame_at(t)[0] for t in stamps], stamps, bitrate_bps=200_000, period_s=4.0)
            msg = FrameBatch(device_id=d, batch_seq=0, codec="h264", width=64, height=32, sampling_rate=1.0,
                             update_period=4.0)
            msg.frame_stamps = [sec_to_stamp(t) for t in stamps]
            msg.data = enc.data
            msg.checksum = frame_batch_checksum(msg)
            pubs[d].publish(msg)
        assert spin_until(ex, lambda: all(statuses[d] for d in DEVS), 120), proc.output()[-3000:]
        for d in DEVS:
            assert updates[d] and updates[d][0].new_version == 1
            st = statuses[d][-1]
            assert st.scheduler_policy == "utility"
            assert 0.0 < st.gpu_share <= 1.0, (d, st.gpu_share)
    finally:
        stop_and_check(proc, ex, node)
