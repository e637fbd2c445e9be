"""issue #13: `server` and `edge` exit 0 on SIGINT and SIGTERM at any moment, here the hard ones:
the server in the middle of a training phase (its trainer thread was never joined and torch's
backward pass aborted the interpreter with -6), the edge in the middle of encoding a batch and
of patching snapshots; each in a process of its own. The demo fails on a non-zero exit."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from ros_helpers import NO_SWAP_WATCH, require_ros, ros_test_node, spin_until

require_ros()


from ams_msgs.msg import FrameBatch, ModelUpdate  # noqa: E402
from ams_ros.core.wire.frame_codec import encode_frames  # noqa: E402
from ams_ros.core.models.weights import load_student  # noqa: E402
from ams_ros.core.sources.synthetic import SyntheticWorld  # noqa: E402
from ams_ros.core.wire.encodings import encode_snapshot  # noqa: E402
from ams_ros.nodes.common.processes import CONFIG, RosProcess, write_overrides  # noqa: E402
from ams_ros.demo.runner import exit_problems  # noqa: E402
from ams_ros.nodes.common.conversions import frame_batch_checksum, sec_to_stamp, update_to_msg  # noqa: E402
from ams_ros.nodes.common.qos import qos  # noqa: E402

SIGNALS = [signal.SIGINT, signal.SIGTERM]


pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def ros():
    with ros_test_node("shutdown_tester") as (node, ex):
        yield node, ex


def _wait_text(proc: RosProcess, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output():
            return True
        if not proc.alive():
            return False
        time.sleep(0.05)
    return False


def _signal_and_wait(proc: RosProcess, sig: int, timeout: float = 90.0) -> int:
    proc.proc.send_signal(sig)
    try:
        proc.proc.wait(timeout=timeout)
    finally:
        rc = proc.stop()
    return rc


def _assert_clean_exit(proc: RosProcess, rc: int) -> str:
    """Exit code 0 and no abort or traceback in the process's output; returns the output."""
    out = proc.output()
    assert rc == 0, out[-3000:]
    assert "terminate called" not in out and "Traceback" not in out, out[-3000:]
    return out


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_server_stopped_in_the_middle_of_a_training_phase_exits_0(ros, tmp_path, sig):
    node, ex = ros
    dev = f"robot_stop_{int(sig)}"
    params = write_overrides(tmp_path / "server.yaml", {
        "/**": {"device_ids": [dev]},
        "teacher_labeler": {"teacher": "oracle"},
        "ams_trainer": {"input_width": 96, "input_height": 48, "iterations": 400, "batch_size": 4,
                        "torch_threads": 1, "min_samples": 1},
    })
    pub = node.create_publisher(FrameBatch, f"/{dev}/ams/frame_batch", qos("reliable", 10))
    proc = RosProcess("server", "ams_ros.nodes.server", [CONFIG / "server.yaml", params], None, tmp_path / "server.log")
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 60), proc.output()[-3000:]
        world = SyntheticWorld(seed=0, width=96, height=48)
        stamps = [float(t) for t in range(4)]
        enc = encode_frames([world.frame_at(t)[0] for t in stamps], stamps, bitrate_bps=200_000, period_s=4.0)
        msg = FrameBatch(device_id=dev, batch_seq=0, codec="h264", width=96, height=48, sampling_rate=1.0,
                         update_period=4.0, data=enc.data)
        msg.frame_stamps = [sec_to_stamp(t) for t in stamps]
        msg.checksum = frame_batch_checksum(msg)
        pub.publish(msg)
        assert _wait_text(proc, "labelled batch 0", 60), proc.output()[-3000:]
        time.sleep(1.0)  # the phase (400 iterations) has started and runs for several seconds
        assert "update v0->v1" not in proc.output(), "the phase ended before the signal: make it longer"
        rc = _signal_and_wait(proc, sig)
    finally:
        proc.stop()
        node.destroy_publisher(pub)
    out = _assert_clean_exit(proc, rc)
    assert "update v0->v1" not in out  # the phase was stopped between iterations and rolled back, not finished


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_edge_stopped_while_encoding_a_batch_and_patching_exits_0(ros, tmp_path, sig):
    node, ex = ros
    dev = f"robot_estop_{int(sig)}"
    student = "deeplabv3_mobilenet_v2"
    params = write_overrides(tmp_path / "edge.yaml", {
        "/**": {"device_id": dev, "student": student, "label_space": "synthetic"},
        # frames at 640x360, veryslow x264, a batch every second: the encoder is always busy
        "camera_sampler": {"source": "synthetic:0", "publish_rate": 10.0, "source_width": 640, "source_height": 360,
                           "sampling_rate": 10.0, "update_period": 1.0, "train_width": 640, "train_height": 360,
                           "x264_preset": "veryslow"},
        "student_segmenter": {"input_width": 64, "input_height": 32, "torch_threads": 1, **NO_SWAP_WATCH},
        "model_patcher": {"request_snapshot_on_start": False},
    })
    pub = node.create_publisher(ModelUpdate, f"/{dev}/ams/model_update", qos("reliable", 10))
    proc = RosProcess("edge", "ams_ros.nodes.edge.main", [CONFIG / "edge.yaml", params], dev, tmp_path / "edge.log")
    try:
        assert _wait_text(proc, "batch 0:", 90), proc.output()[-3000:]  # batch 1 is being encoded now
        assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 30)
        model = load_student(student, num_classes=7, weights=None)
        rng = np.random.default_rng(0)
        for v in (1, 2, 3):  # full snapshots: each is a patch of every parameter
            with __import__("torch").no_grad():
                for p in model.parameters():
                    p.add_(float(rng.normal(0, 1e-3)))
            pub.publish(update_to_msg(encode_snapshot(model, v), dev))
        assert _wait_text(proc, "applied update v0->v1", 30), proc.output()[-3000:]
        rc = _signal_and_wait(proc, sig)
    finally:
        proc.stop()
        node.destroy_publisher(pub)
    _assert_clean_exit(proc, rc)


def test_the_demo_fails_on_a_non_zero_exit_of_either_process():
    assert exit_problems({"edge": 0, "server": 0}, []) == []
    problems = exit_problems({"edge": 0, "server": -6}, [])
    assert len(problems) == 1 and "server process was killed by signal 6" in problems[0]
    assert "exited with code 1" in exit_problems({"edge": 1, "server": 0}, [])[0]
    assert "traceback" in exit_problems({"edge": 0, "server": 0}, ["edge"])[0]
