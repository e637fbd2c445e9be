"""Stopping, restarting and refusing to start under ``ros2 launch`` (issue #27).

- Ctrl-C to the terminal's process group, Ctrl-C to ``ros2 launch`` alone, and SIGTERM to it: with
  both cores busy, the server in the middle of a training phase and the robot in the middle of
  encoding a batch (and applying updates), every process exits 0 before launch's 5 s are up (launch
  says "failed to terminate ... escalating to 'SIGTERM'" when they are not).
- ``respawn``: the robot's process killed with -9 under launch comes back by itself and resyncs
  its model with the server's chain.
- A configuration error (a CUDA device that is not there, an unknown student, a missing video file,
  an unreadable key file) ends the node with one line naming the value and exit code 78, and launch
  does not restart it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from launch_helpers import CpuBurner, RosLaunch, RosClient, Subreaper, require_launch
from ros_helpers import NO_SWAP_WATCH, REPO_ROOT, require_ros

require_ros()
require_launch()

from ams_msgs.msg import EdgeStatus, ServerStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ams_ros.nodes.common.exit_codes import CONFIG_ERROR  # noqa: E402
from ams_ros.nodes.common.parameter_files import merge_parameter_files, write_parameter_file  # noqa: E402
from ams_ros.nodes.common.qos import qos  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def config(tmp_path, stem: str, changes: dict[str, dict], name: str | None = None) -> str:
    sections = merge_parameter_files([REPO_ROOT / "config" / f"{stem}.yaml"])
    for section, values in changes.items():
        sections.setdefault(section, {}).update(values)
    return str(write_parameter_file(tmp_path / (name or f"{stem}.yaml"), sections))


def busy_system(tmp_path, device_id: str):
    """A server whose phases run for many seconds (400 iterations) and a robot whose encoder is
    always busy (640x360 frames, veryslow x264, a batch every second), as two launches."""
    server = RosLaunch("server.launch.py", {"device_ids": f"[{device_id}]", "config_file": config(tmp_path, "server", {
        "/**/ams_trainer": {"input_width": 96, "input_height": 48, "iterations": 400, "batch_size": 4,
                            "update_period_s": 2.0, "torch_threads": 1}})}, tmp_path / "server.log")
    edge = RosLaunch("edge.launch.py", {"device_id": device_id, "source": "synthetic:0", "config_file": config(
        tmp_path, "edge", {
            "/**/camera_sampler": {"publish_rate": 10.0, "source_width": 640, "source_height": 360,
                                   "sampling_rate": 10.0, "update_period": 1.0, "train_width": 640,
                                   "train_height": 360, "x264_preset": "veryslow"},
            "/**/student_segmenter": {"input_width": 64, "input_height": 32, "torch_threads": 1}})},
        tmp_path / "edge.log")
    return server, edge


def busy_moment(server: RosLaunch, edge: RosLaunch) -> None:
    """Wait until the server is inside its first phase and the robot is encoding a batch."""
    server.wait_for(r"labelled batch 1", 180)  # the first phase started with batch 0
    edge.wait_for(r"batch 2:", 60)  # batches leave every second: one is being encoded now
    assert not re.search(r"update v0->v1", server.output()), "the phase ended before the stop: make it longer"


def assert_stopped_cleanly(run: RosLaunch, rc: int | None) -> None:
    out = run.output()
    assert rc == 0, out[-4000:]
    assert "failed to terminate" not in out, out[-4000:]  # launch did not have to escalate
    assert run.exits() and all(code == 0 for _, code in run.exits()), out[-4000:]
    assert not re.search(r"Traceback|terminate called", out), out[-4000:]


# (signal, to the group or to ros2 launch alone) for the server (mid-phase), then for the robot
# (mid-encode, applying updates): each way of sending each signal meets one side in the middle of its work
STOPS = {"sigint": ((signal.SIGINT, False), (signal.SIGINT, True)),
         "sigterm": ((signal.SIGTERM, True), (signal.SIGTERM, False))}


@pytest.mark.parametrize("case", sorted(STOPS))
def test_both_sides_stop_with_0_mid_phase_and_mid_encode_with_both_cores_busy(tmp_path, case):
    """SIGINT: ``ros2 launch`` forwards it and reports each node's exit, which must be 0 before its 5 s
    are up (no "failed to terminate ... escalating"). SIGTERM: upstream ``ros2 launch`` ends at once
    without stopping its processes (its own exit: killed by the signal); the nodes stop anyway, on
    their own SIGTERM (to the group) or on the one the kernel sends when their parent dies
    (``die_with_parent``), with exit 0 within 5 s and no orphan left."""
    with Subreaper() as reaper:
        server, edge = busy_system(tmp_path, f"robot_{case}")
        try:
            busy_moment(server, edge)
            nodes = {run.name: [p.pid for p in run.node_processes()] for run in (server, edge)}
            assert all(len(pids) == 1 for pids in nodes.values()), nodes
            with CpuBurner():
                time.sleep(1.0)
                for run, (sig, group) in zip((server, edge), STOPS[case]):
                    run.send(sig, group=group)
                if case == "sigint":  # launch waits for its nodes and reports their exits
                    for run in (server, edge):
                        assert_stopped_cleanly(run, run.proc.wait(timeout=20))
                else:  # launch is gone at once: the nodes are adopted here and their exits read
                    codes = {name: reaper.wait(pids[0], timeout=5.0) for name, pids in nodes.items()}
                    assert codes == {"server": 0, "edge": 0}, (codes, server.output()[-3000:], edge.output()[-3000:])
            assert "update v0->v1" not in server.output()  # stopped inside the phase, which was rolled back
        finally:
            server.close()
            edge.close()


def test_a_robot_killed_with_9_under_launch_comes_back_and_resyncs(tmp_path):
    server = RosLaunch("server.launch.py", {"device_ids": "[robot_respawn]", "config_file": config(tmp_path, "server", {
        "/**/ams_trainer": {"input_width": 96, "input_height": 48, "iterations": 5, "batch_size": 4,
                            "update_period_s": 3.0, "torch_threads": 1}})}, tmp_path / "server.log")
    edge = RosLaunch("edge.launch.py", {"device_id": "robot_respawn", "source": "synthetic:0", "config_file": config(
        tmp_path, "edge", {"/**/camera_sampler": {"source_width": 96, "source_height": 48, "train_width": 96,
                                                  "train_height": 48, "publish_rate": 5.0, "update_period": 3.0},
                           "/**/student_segmenter": {"input_width": 96, "input_height": 48, "torch_threads": 1,
                                                                    **NO_SWAP_WATCH}})},
        tmp_path / "edge.log")
    client = RosClient("respawn_test")
    labels = client.collect(Image, "/robot_respawn/segmentation/labels", qos("reliable", 10))
    status = client.collect(EdgeStatus, "/robot_respawn/ams/edge_status")
    server_status = client.collect(ServerStatus, "/robot_respawn/ams/server_status")
    try:
        assert client.spin_until(lambda: any(s.model_version >= 2 for s in status), 240), edge.output()[-3000:]
        [node] = edge.node_processes()
        node.kill()  # SIGKILL to the robot's process only: launch stays and respawns it
        killed_at = time.monotonic()
        del labels[:], status[:]
        assert client.spin_until(lambda: any(p.pid != node.pid for p in edge.node_processes()), 60)
        assert client.spin_until(lambda: bool(labels), 120), edge.output()[-3000:]
        first_label_s = time.monotonic() - killed_at
        # resynced: the respawned robot runs the server's chain at the server's version (no operator action)
        assert client.spin_until(lambda: status and server_status and status[-1].model_version >= 1
                                 and status[-1].model_version >= server_status[-1].model_version - 1, 120)
        print(f"respawn: first label map {first_label_s:.1f} s after kill -9, resynced at "
              f"v{status[-1].model_version}")
        assert re.search(r"process has died \[pid \d+, exit code -9", edge.output())
        assert len(re.findall(r"process started with pid", edge.output())) == 2
        for run in (edge, server):
            rc, _ = run.stop()
            assert rc == 0
    finally:
        client.close()
        edge.close()
        server.close()


def _unreadable_key(tmp_path) -> str:
    from ams_ros.core.security.signing import SigningKey

    path = tmp_path / "robot.key"
    SigningKey.generate().save(path)
    os.chmod(path, 0o644)  # others may read it: refused
    return str(path)


CONFIG_ERRORS = {
    "cuda-that-is-not-there": ({"device": "cuda:7"}, {}, r"cuda:7"),
    "unknown-label-space": ({"label_space": "klingon"}, {}, r"klingon"),
    "missing-video-file": ({"source": "/nonexistent/run1.mp4"}, {}, r"/nonexistent/run1\.mp4"),
    "unreadable-key-file": ({"robot_key_file": None}, {}, r"robot\.key"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_a_configuration_error_is_named_once_and_not_restarted(tmp_path, case):
    args, changes, named = CONFIG_ERRORS[case]
    args = {k: (_unreadable_key(tmp_path) if v is None else v) for k, v in args.items()}
    run = RosLaunch("edge.launch.py", {"device_id": "robot_bad", **args,
                                       "config_file": config(tmp_path, "edge", changes)}, tmp_path / "edge.log")
    try:
        try:
            rc = run.proc.wait(timeout=120)  # nothing else runs: launch ends once it gave up on the node
        except Exception:
            pytest.fail(f"launch still runs after a configuration error\n{run.output()[-4000:]}")
        out = run.output()
        assert run.exits() == [(run.exits()[0][0], CONFIG_ERROR)], out[-4000:]
        assert len(re.findall(r"process started with pid", out)) == 1, out[-4000:]  # not restarted
        fatal = [line for line in out.splitlines() if "configuration error, not starting" in line]
        assert len(fatal) == 1 and re.search(named, fatal[0]), out[-4000:]
        assert "not restarting it" in out
        assert "Traceback" not in out, out[-4000:]
        assert rc == 0  # ros2 launch's own exit code: it ended as designed
    finally:
        run.close()


def test_an_unknown_student_is_refused_by_launch_before_any_process_starts(tmp_path):
    """A value outside an argument's choices, given or read from config_file, stops ``ros2 launch``
    itself with the valid choices; no node process is started (nothing to restart)."""
    run = RosLaunch("edge.launch.py", {"config_file": config(tmp_path, "edge", {"/**": {"student": "resnet_huge"}})},
                    tmp_path / "edge.log")
    try:
        rc = run.proc.wait(timeout=60)
        out = run.output()
        assert rc != 0 and "process started" not in out, out[-3000:]
        assert re.search(r'"student" provided value "resnet_huge" is not valid.*deeplabv3_mobilenet_v2', out), out
    finally:
        run.close()
