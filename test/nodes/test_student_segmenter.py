"""The robot's nodes keep a bad model from running (issue #29): the segmenter steps back from an update
whose first frames collapse to one class, reports it in EdgeStatus, and the patcher holds that version;
freeze_model (set at run time, as `ros2 param set` does) holds every update and asks for a catch-up
when it is cleared. Driven through the nodes' own callbacks, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ams_msgs.msg import EdgeStatus  # noqa: E402
from ams_ros.core.models.params import flatten_params, param_layout  # noqa: E402
from ams_ros.core.wire.encodings import encode_update  # noqa: E402
from ams_ros.nodes.common.conversions import numpy_to_imgmsg, update_to_msg  # noqa: E402
from ams_ros.nodes.edge.model_patcher import ModelPatcher  # noqa: E402
from ams_ros.nodes.edge.state import EdgeState  # noqa: E402
from ams_ros.nodes.edge.student_segmenter import StudentSegmenter  # noqa: E402

pytestmark = [pytest.mark.ros]

# 128x64: large enough that the seeded random student's label maps are varied (at 32x16 its 2x1 feature
# map often labels a whole frame with one class, which is what the segmenter watches for)
EDGE = [Parameter("input_width", value=128), Parameter("input_height", value=64), Parameter("device", value="cpu"),
        Parameter("inference_backend", value="torch"), Parameter("request_snapshot_on_start", value=False),
        Parameter("collapse_frames", value=2)]


@pytest.fixture()
def edge():
    torch.manual_seed(0)  # the student is randomly initialised: the same one every run
    rclpy.init()
    state = EdgeState()
    seg = StudentSegmenter(state, parameter_overrides=[p for p in EDGE if p.name != "request_snapshot_on_start"])
    patcher = ModelPatcher(state, parameter_overrides=[p for p in EDGE if p.name in ("device", "request_snapshot_on_start")])
    statuses: list[EdgeStatus] = []
    seg.status_pub.publish = statuses.append  # the status the node would publish, read here
    yield state, seg, patcher, statuses
    for node in (patcher, seg):
        node.destroy_node()
    rclpy.shutdown()


def frames(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        msg = numpy_to_imgmsg(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8), "rgb8")
        msg.header.stamp.sec = i
        yield msg


def shifted(model, base: int, tensor: int, value: float | None = None, shift: float = 0.0):
    """An update of one parameter tensor: set to ``value``, or moved by ``shift``."""
    slot = param_layout(model)[tensor]
    idx = np.arange(slot.offset, slot.offset + slot.numel)
    old = flatten_params(model).numpy()[idx]
    vals = np.full(idx.size, value, np.float32) if value is not None else old + np.float32(shift)
    return update_to_msg(encode_update(model, idx, vals.astype(np.float16).astype(np.float32), base, base + 1,
                                       "delta_lzma_fp16"), "robot1")


def last_bias(model) -> int:
    return len(param_layout(model)) - 1  # the classifier's bias: one value per class


def test_an_update_whose_labels_collapse_is_stepped_back_from_and_held(edge):
    state, seg, patcher, statuses = edge
    holder = state.model.holder
    for msg in frames(12):
        seg._on_image(msg)  # the varied label maps of the starting model: the baseline
    assert np.median(seg.watch._shares) < 0.9  # (the precondition: they are varied)
    patcher._on_update(shifted(holder.active, 0, 0, shift=0.001))
    assert holder.version == 1
    for msg in frames(12, seed=1):
        seg._on_image(msg)  # a sound update: nothing happens
    assert holder.version == 1 and state.patch_stats.steps_back == 0
    bias = np.zeros(len(state.model.label_space.class_names), np.float32)
    idx_vals = flatten_params(holder.active).numpy()
    slot = param_layout(holder.active)[last_bias(holder.active)]
    bias[:] = idx_vals[slot.offset:slot.offset + slot.numel]
    bias[2] += 1000.0  # class 2 wins on every pixel: the model collapsed
    bad = update_to_msg(encode_update(holder.active, np.arange(slot.offset, slot.offset + slot.numel),
                                      bias.astype(np.float16).astype(np.float32), 1, 2, "delta_lzma_fp16"), "robot1")
    patcher._on_update(bad)
    assert holder.version == 2
    for msg in frames(2, seed=2):
        seg._on_image(msg)
    assert holder.version == 1 and state.patch_stats.steps_back == 1  # back to v1 after two collapsed frames
    assert "stepped back from v2 to v1: v2 labels 100.0% of the pixels with one class" in state.patch_stats.last_step_back
    patcher._on_update(bad)  # the same version again: held, not a fault
    assert holder.version == 1 and state.patch_stats.held == 1 and state.patch_stats.rejected == 0
    seg._publish_status()
    s = statuses[-1]
    assert s.steps_back == 1 and s.updates_held == 1 and s.model_version == 1 and not s.model_frozen
    assert s.last_step_back == state.patch_stats.last_step_back and s.inference_backend == "torch"


def test_freeze_model_holds_updates_and_unfreezing_asks_for_a_catch_up(edge):
    state, seg, patcher, statuses = edge
    holder = state.model.holder
    patcher.set_parameters([Parameter("freeze_model", value=True)])  # as `ros2 param set` does
    patcher._maybe_request_snapshot()
    upd = shifted(holder.active, 0, 0, shift=0.1)
    patcher._on_update(upd)
    assert holder.version == 0 and state.patch_stats.held == 1 and state.patch_stats.rejected == 0
    seg._publish_status()
    assert statuses[-1].model_frozen and statuses[-1].updates_held == 1
    assert not patcher._need_snapshot  # a frozen robot asks the server for nothing
    patcher.set_parameters([Parameter("freeze_model", value=False)])
    patcher._maybe_request_snapshot()
    assert patcher._need_snapshot  # it asks to be caught up
    patcher._on_update(upd)
    assert holder.version == 1
    seg._publish_status()
    assert not statuses[-1].model_frozen
