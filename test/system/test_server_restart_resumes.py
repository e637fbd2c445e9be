"""End to end over DDS (issue #13): a server restarted from its state_dir continues the robot's chain.

The demo's two executables, as OS processes: the robot streams and applies updates; the server
is stopped (Ctrl-C: it saves every session at shutdown) and started again on the same
state_dir; the robot, which kept running, goes on with sparse updates of the same chain, with
no snapshot. The core rules (exact round trip, torn files, catch-up, robot ahead) are in
core/server/test_session_store.py.
"""

from __future__ import annotations

import pytest

import os
from pathlib import Path


from ros_helpers import APPLIED, NO_SWAP_WATCH, demo_student_params, require_ros, wait_for_processes

require_ros()

from ams_ros.nodes.common.processes import CONFIG, RosProcess, write_overrides  # noqa: E402

W, H = 64, 32


pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_a_server_restarted_from_its_state_dir_continues_the_robots_chain_with_sparse_updates(tmp_path: Path):
    student = demo_student_params(tmp_path)
    edge_params = write_overrides(tmp_path / "edge.yaml", {
        "/**": {"device_id": "robot1", **student},
        "camera_sampler": {"source": "synthetic:0", "publish_rate": 5.0, "stamp_origin": "stream",
                           "source_width": W, "source_height": H, "train_width": W, "train_height": H,
                           "update_period": 1.5, "sampling_rate": 2.0},
        "student_segmenter": {"input_width": W, "input_height": H, "torch_threads": 1, **NO_SWAP_WATCH},
    })
    state_dir = tmp_path / "state"
    server_params = write_overrides(tmp_path / "server.yaml", {
        "/**": {"device_ids": ["robot1"], **student},
        "teacher_labeler": {"teacher": "oracle:0"},
        "ams_trainer": {"input_width": W, "input_height": H, "iterations": 2, "batch_size": 2, "horizon_s": 30.0,
                        "update_period_s": 1.5, "gamma": 0.05, "torch_threads": 1, "state_dir": str(state_dir)},
    })
    os.environ.setdefault("ROS_DOMAIN_ID", "0")

    def server(n: int) -> RosProcess:
        return RosProcess(f"server{n}", "ams_ros.nodes.server", [CONFIG / "server.yaml", server_params], None,
                          tmp_path / f"server{n}.log")

    procs: list[RosProcess] = []
    try:
        first = server(1)
        procs.append(first)
        edge = RosProcess("edge", "ams_ros.nodes.edge.main", [CONFIG / "edge.yaml", edge_params], "robot1",
                          tmp_path / "edge.log")
        procs.append(edge)

        def applied():
            return APPLIED.findall(edge.output())

        wait_for_processes(lambda: sum(k == "update" for k, *_ in applied()) >= 2, 90, "two updates before the restart", procs)
        assert first.stop() == 0, first.output()[-3000:]
        assert (state_dir / "robot1.session").exists()
        before = applied()
        _, _, v_before, tag = before[-1]
        assert "saved 1 session(s)" in first.output()

        second = server(2)
        procs.append(second)
        wait_for_processes(lambda: len(applied()) > len(before), 90, "an update after the restart", procs)
        after = applied()[len(before):]
        kind, base, new, tag_after = after[0]
        assert "resumed chain " + tag in second.output(), second.output()[-3000:]
        assert (kind, tag_after) == ("update", tag), after  # sparse, same chain: no snapshot
        assert int(base) == int(v_before) and int(new) == int(v_before) + 1
        assert "ahead" not in edge.output() and "served snapshot" not in second.output()
        assert second.stop() == 0
        assert edge.stop() == 0
    finally:
        for p in procs:
            if p.alive():
                p.stop()
