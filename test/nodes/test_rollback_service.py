"""An operator rolls one robot's model back through the base station's service (issue #29):
`/<robot>/ams/rollback_model` answers over DDS, publishes the rolled-back weights as the chain's next
version on the robot's update topic, saves the session, counts it in ServerStatus, and refuses a
version out of reach naming what can be reached (nothing changed). ServerStatus also carries the
phase gate's scores (gate_frames, gate_margin set as parameters)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ams_msgs.srv import RollbackModel  # noqa: E402
from ams_ros.core.server.session_store import SessionStore, decode_state  # noqa: E402
from ams_ros.core.sources.synthetic import world_from_spec  # noqa: E402
from ams_ros.nodes.common import topics  # noqa: E402
from ams_ros.nodes.common.conversions import msg_to_update  # noqa: E402
from ams_ros.core.fleet.phase_loop import Shipped  # noqa: E402
from ams_ros.nodes.server.ams_trainer import AMSTrainerNode, server_status  # noqa: E402
from ams_ros.nodes.server.state import ServerState  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture()
def server(tmp_path):
    rclpy.init()
    state = ServerState()
    # min_samples out of reach: the node's own phase loop never trains; the test runs the phases
    node = AMSTrainerNode(state, parameter_overrides=[
        Parameter("device_ids", value=["r1"]), Parameter("input_width", value=32), Parameter("input_height", value=16),
        Parameter("min_samples", value=10**6), Parameter("state_dir", value=str(tmp_path)),
        # the gate judges every phase but never discards one here (margin 100 points): its scores are reported
        Parameter("gate_frames", value=2), Parameter("gate_margin", value=100.0)])
    sent = []
    node.pubs["r1"].publish = sent.append  # what the node publishes on /r1/ams/model_update
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    yield state, node, sent, tmp_path
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    spin.join(timeout=10)


def _call(node, **fields) -> RollbackModel.Response:
    client = node.create_client(RollbackModel, topics.for_device("r1", topics.ROLLBACK_SERVICE))
    try:
        assert client.wait_for_service(timeout_sec=10.0), "the rollback service is not offered"
        future = client.call_async(RollbackModel.Request(**fields))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(60.0), "no answer from the rollback service"
        return future.result()
    finally:
        node.destroy_client(client)


def test_a_rollback_over_dds_publishes_the_next_version_saves_it_and_is_counted(server):
    state, node, sent, state_dir = server
    session = state.sessions["r1"]
    world = world_from_spec("synthetic:0", width=32, height=16)
    outcomes = []
    for t in range(6):
        session.add_labeled(float(t), *world.frame_at(float(t)))
        if t % 2:
            outcomes.append(session.run_phase(float(t)))
    assert session.version == 3
    assert outcomes[0].gate_scores is None and outcomes[2].gate_scores is not None  # judged once 4 frames are in
    status = server_status(state, "r1", session, Shipped("r1", outcomes[2], 5.0, 5.0, False))
    assert (status.gate_running_miou, status.gate_candidate_miou) == pytest.approx(outcomes[2].gate_scores)
    assert status.phases_discarded == 0 and status.last_discard == "" and status.rollbacks == 0
    assert status.phases_unjudged == 0 and status.last_unjudged == ""
    session.unjudged_phases, session.last_unjudged = 2, "phase 3 shipped unjudged: a scene change: ..."
    status = server_status(state, "r1", session, Shipped("r1", outcomes[2], 5.0, 5.0, False))
    assert status.phases_unjudged == 2 and status.last_unjudged.startswith("phase 3 shipped unjudged: a scene change")
    session.unjudged_phases, session.last_unjudged = 0, ""
    flat_before = np.concatenate([p.detach().cpu().numpy().ravel() for p in session.model.parameters()])

    refused = _call(node, version=9)
    assert not refused.success and "cannot roll back to v9: the robot's chain is at v3" in refused.message
    assert "v0 to v2" in refused.message and sent == [] and session.version == 3
    assert np.array_equal(flat_before, np.concatenate([p.detach().cpu().numpy().ravel()
                                                       for p in session.model.parameters()]))

    answer = _call(node, version=1)
    assert answer.success and answer.new_version == 4, answer.message
    assert "rolled back to the weights of v1 as v4" in answer.message
    (msg,) = sent
    update = msg_to_update(msg)
    assert (update.base_version, update.new_version, update.catch_up) == (3, 4, True)
    assert update.chain_tag == session.chain_tag
    with open(SessionStore(str(state_dir)).path("r1"), "rb") as f:
        saved = decode_state(f.read(), "r1", node.fingerprint)
    assert saved["version"] == 4 and saved["rollbacks"] == 1
    assert state.rollbacks["r1"] == 1 and state.last_rollback["r1"].startswith("rolled back to the weights of v1")

    assert _call(node, to_start=True).new_version == 5 and state.rollbacks["r1"] == 2
    status = server_status(state, "r1", session, Shipped("r1", outcomes[2], 5.0, 5.0, False))
    assert status.rollbacks == 2 and status.last_rollback.startswith("rolled back to the starting weights as v5")
