"""Run-time parameter changes: applied where it is safe, refused with a reason everywhere else.

The nodes are built in this process and their parameters set directly (no spinning, no DDS
traffic needed): ``set_parameters`` runs the node's on-set callback synchronously, which is
what ``ros2 param set`` reaches through the parameter services.
"""

from __future__ import annotations

import threading

import pytest

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ams_ros.nodes.edge.camera_sampler import CameraSampler  # noqa: E402
from ams_ros.nodes.edge.state import EdgeState  # noqa: E402
from ams_ros.nodes.server.ams_trainer import AMSTrainerNode  # noqa: E402
from ams_ros.core.wire.encodings import DEFAULT_UPDATE_ENCODING  # noqa: E402
from ams_ros.nodes.server.asr_controller import ASRController  # noqa: E402
from ams_ros.nodes.server.state import ServerState  # noqa: E402

SMALL = [Parameter("device_ids", value=["r1", "r2"]), Parameter("input_width", value=32),
         Parameter("input_height", value=16), Parameter("student", value="lraspp_mobilenet_v3_large")]


pytestmark = pytest.mark.ros


@pytest.fixture()
def ros():
    rclpy.init()
    nodes = []
    yield nodes
    for n in nodes:
        n.destroy_node()
    rclpy.shutdown()


@pytest.fixture()
def server(ros):
    state = ServerState()
    trainer = AMSTrainerNode(state, parameter_overrides=SMALL)
    asr = ASRController(state, parameter_overrides=[Parameter("device_ids", value=["r1", "r2"])])
    ros += [asr, trainer]
    return state, trainer, asr


def _set(node, name, value):
    (result,) = node.set_parameters([Parameter(name, value=value)])
    return result


def test_a_new_learning_rate_and_gamma_reach_every_robots_trainer(server):
    state, trainer, _ = server
    assert _set(trainer, "lr", 0.0005).successful
    assert _set(trainer, "gamma", 0.1).successful
    assert _set(trainer, "update_encoding", "residual_zlib_q6").successful
    for session in state.sessions.values():
        assert session.trainer.config.lr == 0.0005 and session.trainer.config.gamma == 0.1
        assert session.config.update_encoding == "residual_zlib_q6"
    assert trainer.get_parameter("gamma").value == 0.1


def test_a_change_during_a_phase_waits_for_the_phase_to_end(server):
    state, trainer, _ = server
    session = state.sessions["r1"]
    in_phase, phase_done = threading.Event(), threading.Event()

    def phase() -> None:  # holds the phase lock as run_phase does, on the trainer's own thread
        with session.lock:
            in_phase.set()
            assert phase_done.wait(10)
            session._apply_pending()  # what the next run_phase does first

    worker = threading.Thread(target=phase)
    worker.start()
    assert in_phase.wait(10)
    assert _set(trainer, "iterations", 3).successful  # accepted at once (the service does not wait) ...
    assert session.trainer.config.iterations == 20     # ... but never applied in the middle of a phase
    assert state.sessions["r2"].trainer.config.iterations == 3  # a robot between phases has it already
    phase_done.set()
    worker.join(10)
    assert session.trainer.config.iterations == 3


@pytest.mark.parametrize("name, value, reason", [
    ("gamma", 1.5, "gamma must be in (0, 1]"),
    ("lr", -1.0, "lr must be > 0"),
    ("strategy", "best", "one of: gradient_guided"),
    ("update_encoding", "zip", "one of: paper_gzip_fp16"),
])
def test_an_invalid_training_value_is_refused_with_the_reason_and_changes_nothing(server, name, value, reason):
    state, trainer, _ = server
    before = trainer.get_parameter(name).value
    result = _set(trainer, name, value)
    assert not result.successful and reason in result.reason
    assert trainer.get_parameter(name).value == before
    assert getattr(state.sessions["r1"].trainer.config, name, before) == before or name == "update_encoding"
    assert state.sessions["r1"].config.update_encoding == DEFAULT_UPDATE_ENCODING


@pytest.mark.parametrize("name, value", [("student", "deeplabv3_mobilenet_v2"), ("input_width", 64),
                                         ("device_ids", ["r3"]), ("signing_key_file", "/tmp/x.key"), ("seed", 3)])
def test_start_up_parameters_are_read_only_instead_of_silently_ignored(server, name, value):
    _, trainer, _ = server
    before = trainer.get_parameter(name).value
    result = _set(trainer, name, value)
    assert not result.successful and "read-only" in result.reason
    assert trainer.get_parameter(name).value == before
    assert trainer.describe_parameter(name).read_only


def test_rate_settings_apply_to_every_robot_and_keep_the_current_rate(server):
    state, _, asr = server
    for s in state.sessions.values():
        s.rate.rate = 0.8
    assert _set(asr, "r_max", 0.5).successful
    assert _set(asr, "eta_r", 3.0).successful
    for s in state.sessions.values():
        assert s.rate.r_max == 0.5 and s.rate.rate == 0.5 and s.rate.eta_r == 3.0  # clipped, not reset
        assert s.config.rate.r_max == 0.5
    result = _set(asr, "r_min", 0.9)  # above r_max
    assert not result.successful and "r_min <= r_max" in result.reason
    assert all(s.rate.r_min == 0.1 for s in state.sessions.values())


def test_a_new_server_version_goes_out_at_once_repeating_the_last_command(server):
    """(issue #13) between rate periods, a phase that shipped an update is announced on the next
    tick with the same rate and period, so a robot that lost the update notices in about a second."""
    state, _, asr = server
    sent = []
    asr.pubs["r1"].publish = sent.append
    asr.pubs["r2"].publish = lambda msg: None
    s = state.sessions["r1"]
    due = [(0.5, 10.0, 0.2)]  # one rate period is due, then none
    s.sampling_command = lambda now: due.pop() if due else None
    s.latest_t = 0.0
    asr._tick()  # the rate period: a command
    assert len(sent) == 1 and sent[0].server_version == s.version
    first = (sent[0].sampling_rate, sent[0].update_period)
    asr._tick()
    assert len(sent) == 1  # nothing new: nothing sent
    s.version += 1  # a phase shipped v+1
    s.latest_t = 0.5  # still inside the rate period
    asr._tick()
    assert len(sent) == 2 and sent[1].server_version == s.version
    assert (sent[1].sampling_rate, sent[1].update_period) == first and sent[1].chain_tag == s.chain_tag
    asr._tick()
    assert len(sent) == 2


def test_robots_whose_batches_arrive_together_are_told_once_to_shift_into_their_slots(server):
    """(issue #31) r1 and r2 send their batches within 0.2 s of each other: r2's next command carries
    the shift into its slot (6.18 s after r1's, the shorter way round: 3.8 s earlier); the next
    commands carry none until a second batch after the shift has arrived; r1, the reference, is never
    moved; with stagger_batches off nobody is."""
    state, _, asr = server
    sent = {"r1": [], "r2": []}
    for dev in sent:
        asr.pubs[dev].publish = sent[dev].append
        state.sessions[dev].latest_t = 0.0
        state.sessions[dev].sampling_command = lambda now: (0.5, 10.0, 0.2)  # a command due every tick
    state.note_arrival("r1", 10.0, at=100.0)
    state.note_arrival("r2", 10.0, at=100.2)
    asr._tick()
    assert sent["r1"][-1].period_shift == 0.0
    assert sent["r2"][-1].period_shift == pytest.approx(0.618034 * 10.0 - 10.0 - 0.2, abs=1e-3)
    asr._tick()  # nothing new arrived: not told again
    state.note_arrival("r2", 10.0, at=106.4)  # the batch that was on its way: still not
    asr._tick()
    assert [m.period_shift for m in sent["r2"][1:]] == [0.0, 0.0]
    state.note_arrival("r1", 10.0, at=110.0)
    state.note_arrival("r2", 10.0, at=116.1)  # the shifted one, in its slot (within 10 %): left alone
    asr._tick()
    assert sent["r2"][-1].period_shift == 0.0 and all(m.period_shift == 0.0 for m in sent["r1"])
    state.note_arrival("r2", 10.0, at=120.0)  # drifted back into r1's time
    assert _set(asr, "stagger_batches", False).successful
    asr._tick()
    assert sent["r2"][-1].period_shift == 0.0
    assert _set(asr, "stagger_batches", True).successful
    asr._tick()
    assert sent["r2"][-1].period_shift == pytest.approx(-3.82, abs=0.01)
    assert not _set(asr, "stagger_tolerance", 0.6).successful


def test_a_robot_on_another_update_period_is_not_staggered_against_the_reference(server):
    state, _, asr = server
    sent = []
    asr.pubs["r1"].publish = lambda msg: None
    asr.pubs["r2"].publish = sent.append
    for dev in ("r1", "r2"):
        state.sessions[dev].latest_t = 0.0
        state.sessions[dev].sampling_command = lambda now: (0.5, 10.0, 0.2)
    state.note_arrival("r1", 10.0, at=100.0)
    state.note_arrival("r2", 20.0, at=100.1)  # the adaptive period made its period 20 s
    asr._tick()
    assert sent[-1].period_shift == 0.0


def test_the_asr_start_up_values_are_the_controllers_initial_state(ros):
    state = ServerState()
    trainer = AMSTrainerNode(state, parameter_overrides=SMALL)
    asr = ASRController(state, parameter_overrides=[Parameter("device_ids", value=["r1", "r2"]),
                                                    Parameter("r_init", value=0.4), Parameter("period_s", value=5.0)])
    ros += [asr, trainer]
    assert all(s.rate.rate == 0.4 and s.rate.period_s == 5.0 for s in state.sessions.values())


def test_a_value_outside_the_choices_is_a_start_up_error_naming_them(ros):
    with pytest.raises(ValueError, match="strategy='best' is not valid; choose one of: gradient_guided"):
        AMSTrainerNode(ServerState(), parameter_overrides=[*SMALL, Parameter("strategy", value="best")])


def test_nodes_of_one_server_must_name_the_same_robots(ros):
    state = ServerState()
    ros.append(AMSTrainerNode(state, parameter_overrides=SMALL))
    with pytest.raises(ValueError, match="set device_ids once"):
        ASRController(state, parameter_overrides=[Parameter("device_ids", value=["r1"])])


def test_the_uplink_encoder_settings_apply_from_the_next_batch(ros):
    node = CameraSampler(EdgeState(), parameter_overrides=[Parameter("source", value="synthetic:0"),
                                                           Parameter("source_width", value=32),
                                                           Parameter("source_height", value=16)])
    ros.append(node)
    assert _set(node, "bitrate_bps", 100_000).successful
    assert _set(node, "x264_preset", "veryfast").successful
    assert node.encoder_config.bitrate_bps == 100_000 and node.encoder_config.preset == "veryfast"
    result = _set(node, "x264_preset", "turbo")
    assert not result.successful and "one of: ultrafast" in result.reason
    assert node.encoder_config.preset == "veryfast"
    assert not _set(node, "train_width", 64).successful  # the sampler's buffer size is fixed at start-up


# ------------------------------------------------------------------------------------------
# Devices (issue #14)
# ------------------------------------------------------------------------------------------

EDGE_SMALL = [Parameter("input_width", value=32), Parameter("input_height", value=16),
              Parameter("student", value="lraspp_mobilenet_v3_large")]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_where_there_is_none_fails_at_start_up_naming_what_torch_sees(ros):
    from ams_ros.core.common.devices import DeviceError
    from ams_ros.nodes.edge.student_segmenter import StudentSegmenter

    with pytest.raises(DeviceError, match=r"device 'cuda'.*CUDA devices visible: 0.*fix:"):
        StudentSegmenter(EdgeState(), parameter_overrides=[*EDGE_SMALL, Parameter("device", value="cuda")])
    with pytest.raises(DeviceError, match=r"device 'cuda:1'.*built with CUDA"):
        AMSTrainerNode(ServerState(), parameter_overrides=[*SMALL, Parameter("device", value="cuda:1")])


def test_auto_device_puts_the_edge_student_and_the_servers_copies_on_what_torch_sees(ros):
    import torch

    from ams_ros.core.common.devices import resolve_device
    from ams_ros.nodes.edge.model_patcher import ModelPatcher
    from ams_ros.nodes.edge.student_segmenter import StudentSegmenter

    expected = resolve_device("auto")
    state = EdgeState()
    seg = StudentSegmenter(state, parameter_overrides=EDGE_SMALL)
    patcher = ModelPatcher(state, parameter_overrides=[Parameter("request_snapshot_on_start", value=False)])
    ros += [patcher, seg]
    assert state.model.holder.device == expected == seg.inference.device
    sstate = ServerState()
    ros.append(AMSTrainerNode(sstate, parameter_overrides=SMALL))
    for session in sstate.sessions.values():
        assert all(p.device == expected for p in session.model.parameters())
        assert session.trainer.m.device == expected and session.trainer.m.dtype == torch.float32


def test_a_patcher_on_another_device_than_the_student_is_refused(ros):
    from ams_ros.nodes.edge.model_patcher import ModelPatcher
    from ams_ros.nodes.edge.student_segmenter import StudentSegmenter

    state = EdgeState()
    ros.append(StudentSegmenter(state, parameter_overrides=[*EDGE_SMALL, Parameter("device", value="cpu")]))
    state.model.holder.__class__ = type("OnCuda", (type(state.model.holder),), {"device": property(
        lambda self: __import__("torch").device("cuda", 0))})  # as if the student had been put on a GPU
    with pytest.raises(ValueError, match="differs from the student's"):
        ModelPatcher(state, parameter_overrides=[Parameter("device", value="cpu")])


def test_train_precision_changes_at_run_time_for_every_robot(server):
    state, trainer, _ = server
    assert _set(trainer, "train_precision", "bfloat16").successful
    assert {s.trainer.config.train_precision for s in state.sessions.values()} == {"bfloat16"}
    assert not _set(trainer, "train_precision", "int8").successful


def test_segmenter_computes_mask_and_overlay_only_for_topics_with_subscribers(ros):
    import time

    import numpy as np
    from sensor_msgs.msg import Image

    from ams_ros.nodes.common import topics
    from ams_ros.nodes.common.conversions import numpy_to_imgmsg
    from ams_ros.nodes.edge.student_segmenter import StudentSegmenter

    seg = StudentSegmenter(EdgeState(), parameter_overrides=EDGE_SMALL)
    ros.append(seg)
    asked = []
    run = seg.inference.run
    seg.inference.run = lambda net, frame, mask=False, overlay=False, alpha=0.5: (
        asked.append((mask, overlay)), run(net, frame, mask=mask, overlay=overlay, alpha=alpha))[1]
    frame = numpy_to_imgmsg(np.zeros((16, 32, 3), dtype=np.uint8), "rgb8")
    seg._on_image(frame)
    listener = rclpy.create_node("mask_listener")
    ros.append(listener)
    got = []
    listener.create_subscription(Image, seg.mask_pub.topic_name, got.append, 10)
    deadline = time.monotonic() + 10.0
    while seg.mask_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    seg._on_image(frame)
    assert asked == [(False, False), (True, False)]
    assert seg.frames_segmented == 2 and topics.MASK_COLOR in seg.mask_pub.topic_name
