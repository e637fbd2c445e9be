"""The edge process over DDS (issue #13): a sampling command that shows a newer server version
makes the robot ask at once for ONE catch-up update (not a snapshot), and a server that lost its
state (a new chain behind the robot) gets the robot resynced with its versions still going up.

The server side here is the core RobotSession driven by this test (the server node's service
calls the same ``resync``); the robot is the real ``edge`` executable.
"""

from __future__ import annotations

import pytest

import copy
import re
from contextlib import contextmanager
from types import SimpleNamespace


from ros_helpers import NO_SWAP_WATCH, require_ros, spin_until

require_ros()

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from ams_msgs.msg import EdgeStatus, ModelUpdate, SamplingCommand  # noqa: E402
from ams_msgs.srv import GetModelSnapshot  # noqa: E402
from ams_ros.core.models.labels import get_label_space  # noqa: E402
from ams_ros.core.models.weights import load_student, save_student_checkpoint  # noqa: E402
from ams_ros.core.server.session import RobotSession, SessionConfig  # noqa: E402
from ams_ros.core.sources.synthetic import world_from_spec  # noqa: E402
from ams_ros.core.server.trainer_config import TrainerConfig  # noqa: E402
from ams_ros.nodes.common.processes import CONFIG, RosProcess, write_overrides  # noqa: E402
from ams_ros.nodes.common.conversions import update_to_msg  # noqa: E402
from ams_ros.nodes.common.qos import qos  # noqa: E402

DEV = "robot_sync"
NS = f"/{DEV}"
STUDENT = "deeplabv3_mobilenet_v2"
SIZE = (48, 24)


pytestmark = [pytest.mark.ros, pytest.mark.slow]


@contextmanager
def robot_and_test_server(tmp_path, patcher: dict | None = None):
    """The real ``edge`` executable and this test as its server (a RobotSession behind the
    snapshot service); ``patcher``: extra model_patcher parameters."""
    n_cls = len(get_label_space("synthetic").class_names)
    base = load_student(STUDENT, num_classes=n_cls, weights=None)
    ckpt = save_student_checkpoint(base, tmp_path / "student.pt", STUDENT, n_cls, get_label_space("synthetic"))
    params = write_overrides(tmp_path / "edge.yaml", {
        "/**": {"device_id": DEV, "student": STUDENT, "student_weights": str(ckpt), "label_space": "synthetic"},
        "camera_sampler": {"source": "topic", "sampling_rate": 1.0},
        "student_segmenter": {"input_width": SIZE[0], "input_height": SIZE[1], "status_period_s": 0.2, **NO_SWAP_WATCH},
        "model_patcher": {"snapshot_timeout_s": 5.0, "lost_update_grace_s": 0.3, **(patcher or {})},
    })
    world = world_from_spec("synthetic:1", width=SIZE[0], height=SIZE[1])
    cfg = SessionConfig(trainer=TrainerConfig(iterations=2, batch_size=2, gamma=0.01, input_size=SIZE, horizon_s=60.0))
    server = {"session": RobotSession(DEV, copy.deepcopy(base), cfg), "answers": []}

    def phase(session, t0):
        for t in range(t0, t0 + 3):
            session.add_labeled(float(t), *world.frame_at(float(t)))
        return session.run_phase(float(t0 + 2))

    rclpy.init()
    node = rclpy.create_node("resync_tester")
    ex = SingleThreadedExecutor()
    ex.add_node(node)

    def serve(req, resp):
        answer = server["session"].resync(int(req.have_version), req.have_chain_tag)
        server["answers"].append((int(req.have_version), req.have_chain_tag, answer))
        resp.success, resp.message = True, answer.reason
        resp.snapshot = update_to_msg(answer.update, DEV)
        return resp

    node.create_service(GetModelSnapshot, f"{NS}/ams/get_model_snapshot", serve)
    statuses: list[EdgeStatus] = []
    node.create_subscription(EdgeStatus, f"{NS}/ams/edge_status", statuses.append, qos("reliable", 50))
    updates = node.create_publisher(ModelUpdate, f"{NS}/ams/model_update", qos("reliable", 10))
    commands = node.create_publisher(SamplingCommand, f"{NS}/ams/sampling_command", qos("reliable", 10))
    proc = RosProcess("edge", "ams_ros.nodes.edge.main", [CONFIG / "edge.yaml", params], DEV, tmp_path / "edge.log")

    def version_is(v):
        return lambda: bool(statuses) and statuses[-1].model_version == v

    def command(session):
        msg = SamplingCommand(device_id=DEV, sampling_rate=1.0, update_period=10.0, phi=0.1,
                              server_version=int(session.version), chain_tag=session.chain_tag)
        commands.publish(msg)

    try:
        # start-up: a snapshot of the server's chain
        assert spin_until(ex, lambda: server["answers"] and statuses, 90), proc.output()[-3000:]
        assert server["answers"][0][2].kind == "snapshot"
        # applied, not only answered: an update sent before the snapshot lands would race it
        assert spin_until(ex, lambda: statuses[-1].updates_applied >= 1, 30), proc.output()[-3000:]
        yield SimpleNamespace(ex=ex, proc=proc, server=server, statuses=statuses, updates=updates, phase=phase,
                              command=command, version_is=version_is, base=base, cfg=cfg)
    finally:
        rc = proc.stop()
        node.destroy_node()
        rclpy.shutdown()
    assert rc == 0, proc.output()[-3000:]


def test_a_lost_update_is_caught_up_from_the_command_and_a_robot_ahead_of_a_new_chain_resyncs(tmp_path):
    with robot_and_test_server(tmp_path) as r:
        ex, proc, server, statuses, version_is = r.ex, r.proc, r.server, r.statuses, r.version_is
        session = server["session"]
        outs = [r.phase(session, 3 * i) for i in range(3)]
        r.updates.publish(update_to_msg(outs[0].update, DEV))  # v1 arrives, v2 and v3 are lost
        assert spin_until(ex, version_is(1), 30), proc.output()[-3000:]
        r.command(session)  # says v3: the robot notices and asks for a catch-up
        assert spin_until(ex, version_is(3), 30), proc.output()[-3000:]
        have, tag, answer = server["answers"][-1]
        assert (have, tag, answer.kind) == (1, session.chain_tag, "catch_up")
        assert len(server["answers"]) == 2  # one request: no snapshot on the way
        assert re.search(r"applied catch-up v1->v3 of chain " + session.chain_tag, proc.output())

        # the server loses its state: a new chain, behind the robot
        lost = RobotSession(DEV, copy.deepcopy(r.base), r.cfg)
        r.phase(lost, 20)
        server["session"] = lost
        r.command(lost)  # chain Y at v1; the robot runs v3 of chain X
        assert spin_until(ex, version_is(4), 30), proc.output()[-3000:]
        have, tag, answer = server["answers"][-1]
        assert (have, tag) == (3, session.chain_tag) and "ahead" in answer.warning  # the server's warning
        assert answer.update.new_version == 4 and lost.version == 4
        # the robot's warning: its log reaches the file through a pipe, after the status topic said v4
        assert spin_until(ex, lambda: "robot is ahead" in proc.output() or "switching from chain" in proc.output(),
                          10), proc.output()[-3000:]
        assert statuses[-1].model_version == 4  # never went back to v1
        nxt = r.phase(lost, 30)  # the new chain goes on from there with sparse updates
        r.updates.publish(update_to_msg(nxt.update, DEV))
        assert spin_until(ex, version_is(5), 30), proc.output()[-3000:]


def test_duplicated_and_replayed_updates_are_refused_as_already_applied_without_a_resync(tmp_path):
    """Every update delivered twice (the patcher's test-only fault link at 100 %), then a genuine
    old update played again: the robot applies each version once and asks for nothing."""
    with robot_and_test_server(tmp_path, {"fault_duplicate_updates": 1.0, "fault_seed": 3}) as r:
        session = r.server["session"]
        outs = [r.phase(session, 3 * i) for i in range(2)]
        for i, out in enumerate(outs):
            r.updates.publish(update_to_msg(out.update, DEV))
            assert spin_until(r.ex, r.version_is(i + 1), 30), r.proc.output()[-3000:]
            assert spin_until(r.ex, lambda: r.statuses[-1].updates_rejected >= i + 1, 10), r.proc.output()[-3000:]
        r.updates.publish(update_to_msg(outs[0].update, DEV))  # v0->v1 again, at v2: twice more
        assert spin_until(r.ex, lambda: r.statuses[-1].updates_rejected >= 4, 10), r.proc.output()[-3000:]
        # the log reaches its file through a pipe: wait for it rather than race the status topic
        assert spin_until(r.ex, lambda: r.proc.output().count("fault injection: duplicate update") == 3
                          and "update v0->v1 is not newer than this model's v2" in r.proc.output(), 10), \
            r.proc.output()[-3000:]
        assert len(r.server["answers"]) == 1  # only the start-up snapshot: no resync was asked for
        assert r.statuses[-1].model_version == 2 and r.statuses[-1].updates_applied == 3  # snapshot, v1, v2
