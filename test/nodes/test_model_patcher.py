"""The model patcher's resync requests (issue #13 rules): an answer that arrives after updates of the
same chain took the robot past the version it asked at is not needed (a slow start-up answer); it
is neither applied nor counted as a rejection, and asks for nothing more. Driven through the node's
own callbacks, deterministically."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ams_msgs.srv import GetModelSnapshot  # noqa: E402
from ams_ros.core.models.params import flatten_params  # noqa: E402
from ams_ros.core.wire.encodings import encode_snapshot, encode_update  # noqa: E402
from ams_ros.nodes.common.conversions import update_to_msg  # noqa: E402
from ams_ros.nodes.edge.model_patcher import ModelPatcher  # noqa: E402
from ams_ros.nodes.edge.state import EdgeState  # noqa: E402
from ams_ros.nodes.edge.student_segmenter import StudentSegmenter  # noqa: E402

pytestmark = [pytest.mark.ros]
TAG = "5eed5eed5eed5eed"


@pytest.fixture()
def patcher():
    rclpy.init()
    state = EdgeState()
    nodes = []
    try:  # the segmenter builds the student the patcher patches
        nodes.append(StudentSegmenter(state, parameter_overrides=[
            Parameter("input_width", value=32), Parameter("input_height", value=16), Parameter("device", value="cpu"),
            Parameter("inference_backend", value="torch")]))
        nodes.append(ModelPatcher(state, parameter_overrides=[Parameter("request_snapshot_on_start", value=False)]))
        yield state, nodes[-1]
    finally:
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.shutdown()


def _answer(update) -> SimpleNamespace:
    """A done service future holding ``update`` as the server's answer."""
    resp = GetModelSnapshot.Response(success=True, message="", snapshot=update_to_msg(update, "robot1"))
    return SimpleNamespace(result=lambda: resp)


def _next(model, base: int):
    flat = flatten_params(model).numpy()
    idx = np.arange(10)
    u = encode_update(model, idx, (flat[idx] + 0.5).astype(np.float16).astype(np.float32), base, base + 1,
                      "delta_lzma_fp16")
    u.chain_tag = TAG
    return u


def test_a_slow_answer_overtaken_by_updates_of_its_chain_is_not_needed(patcher):
    state, node = patcher
    holder = state.model.holder
    start = encode_snapshot(holder.active, 0)
    start.chain_tag = TAG
    node._snapshot_asked_at_version, node._need_snapshot = 0, True  # asked at start-up, v0
    node._on_update(update_to_msg(_next(holder.active, 0), "robot1"))  # v1 arrives on the topic first
    assert holder.version == 1 and node.chain.tag == TAG
    node._on_snapshot(_answer(start))  # then the answer to the start-up request: snapshot v0 of the same chain
    assert holder.version == 1 and node.stats.rejected == 0 and not node._need_snapshot


def test_an_answer_newer_than_the_running_version_is_applied(patcher):
    state, node = patcher
    holder = state.model.holder
    node._snapshot_asked_at_version, node._need_snapshot = 0, True
    node._on_update(update_to_msg(_next(holder.active, 0), "robot1"))
    assert holder.version == 1
    ahead = encode_snapshot(holder.active, 3)
    ahead.chain_tag = TAG
    node._on_snapshot(_answer(ahead))
    assert holder.version == 3 and node.stats.rejected == 0 and not node._need_snapshot
