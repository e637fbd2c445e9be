"""End to end over DDS (issue #12): the server with ``backend: ray`` serves two robots.

The demo's executables as OS processes: a server whose sessions and teachers run in two Ray
actors of a local Ray instance (bound to 127.0.0.1), and two robots, each playing its own
synthetic world. Both robots apply consecutive updates of their chains; then one actor's process
is killed (SIGKILL, as a crashed GPU worker): the pool replaces it, the robot on it resumes from
its last kept state on the surviving actor while a replacement starts, the pool then moves one
robot onto the replacement (the survivor holds both robots: over ``pool_overload``, set low), and
every robot's chain stays unbroken through the death and the move while the robots go on inferring. The pool's rules without DDS: test/core/fleet/test_pool.py, test_pool_ray.py.
"""

from __future__ import annotations

import importlib.util

import re
import signal
from pathlib import Path

import pytest

from ros_helpers import APPLIED, NO_SWAP_WATCH, demo_student_params, require_ros, wait_for_processes

require_ros()
if importlib.util.find_spec("ray") is None:  # not imported in this process (see test_session_pool_ray)
    pytest.skip("ray is not installed (requirements/common.txt)", allow_module_level=True)

import psutil  # noqa: E402

from ams_ros.nodes.common.processes import CONFIG, RosProcess, write_overrides  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

W, H = 64, 32
ROBOTS = {"robot1": "synthetic:0", "robot2": "synthetic:1"}


def _pool_workers(server: RosProcess) -> list[psutil.Process]:
    procs = psutil.Process(server.pid).children(recursive=True)
    return [p for p in procs if "PoolWorker" in " ".join(_cmdline(p))]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline() or [p.name()]
    except psutil.Error:
        return []


def _start(tmp_path: Path, pool: dict, procs: list) -> tuple[RosProcess, dict]:
    """A Ray-backed server (``pool``: its pool settings) and the two robots, as OS processes."""
    student = demo_student_params(tmp_path)
    server_params = write_overrides(tmp_path / "server.yaml", {
        "/**": {"device_ids": list(ROBOTS), **student},
        "teacher_labeler": {"teacher": "oracle:0", "device_teachers": ["robot2=oracle:1"]},
        "ams_trainer": {"input_width": W, "input_height": H, "iterations": 2, "batch_size": 2, "horizon_s": 30.0,
                        "update_period_s": 2.0, "gamma": 0.05, "torch_threads": 1, "backend": "ray",
                        "ray_address": "local", "pool_check_period_s": 0.5, **pool},
    })
    server = RosProcess("server", "ams_ros.nodes.server", [CONFIG / "server.yaml", server_params], None,
                        tmp_path / "server.log")
    procs.append(server)
    edges = {}
    for dev, source in ROBOTS.items():
        params = write_overrides(tmp_path / f"edge_{dev}.yaml", {
            "/**": {"device_id": dev, **student},
            "camera_sampler": {"source": source, "publish_rate": 5.0, "stamp_origin": "stream",
                               "source_width": W, "source_height": H, "train_width": W, "train_height": H,
                               "update_period": 2.0, "sampling_rate": 2.0},
            "student_segmenter": {"input_width": W, "input_height": H, "torch_threads": 1, **NO_SWAP_WATCH},
        })
        edges[dev] = RosProcess(f"edge_{dev}", "ams_ros.nodes.edge.main", [CONFIG / "edge.yaml", params], dev,
                                tmp_path / f"edge_{dev}.log")
        procs.append(edges[dev])
    return server, edges


def _chain_unbroken(dev: str, edge: RosProcess) -> None:
    chain = [(k, int(a), int(b), tag) for k, a, b, tag in APPLIED.findall(edge.output())]
    assert chain[0][1] == 0 and len({tag for *_, tag in chain}) == 1, (dev, chain)  # one chain throughout
    assert all(chain[i + 1][1] == chain[i][2] for i in range(len(chain) - 1)), (dev, chain)  # no gap
    log = edge.output()
    # the only rejection allowed: an update the robot already has (it arrived after the start-up
    # snapshot that carried its version: stale, refused, harmless)
    rejected = [line for line in log.splitlines() if "rejected update" in line or "rejected snapshot" in line]
    assert all("not newer than this model's" in line for line in rejected), "\n".join(rejected) or log[-3000:]
    assert re.search(r"Traceback", log) is None, log[-3000:]


def test_a_ray_backed_server_serves_two_robots_through_an_actor_killed_and_a_move_mid_stream(tmp_path: Path):
    procs: list[RosProcess] = []
    try:
        # utility placement on the scheduler's utilities (the node hands them to the pool); any
        # actor holding two robots is overloaded, so only the survivor of the death hands one over
        server, edges = _start(tmp_path, {"pool_actors": 2, "pool_overload": 0.05, "scheduler_policy": "utility",
                                          "pool_placement": "utility"}, procs)

        def applied(dev):
            return APPLIED.findall(edges[dev].output())

        def updates(dev):
            return sum(k == "update" for k, *_ in applied(dev))

        wait_for_processes(lambda: all(updates(d) >= 2 for d in ROBOTS), 240, "two updates on each robot", procs)
        out = server.output()
        assert "started a local Ray instance on 127.0.0.1" in out, out[-3000:]
        assert "2 Ray actor(s)" in out and "actor 0: robot1; actor 1: robot2" in out, out[-3000:]
        workers = _pool_workers(server)
        assert len(workers) == 2, [_cmdline(p) for p in psutil.Process(server.pid).children(recursive=True)]
        # every socket the server's Ray processes listen on is on loopback
        family = {server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))}
        outside = [(c.pid, c.laddr) for c in psutil.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN and c.pid in family
                   and c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
        assert outside == [], outside

        before = {d: updates(d) for d in ROBOTS}
        workers[0].send_signal(signal.SIGKILL)  # one actor's process dies mid-stream
        wait_for_processes(lambda: "died; restored on actor" in server.output(), 120, "the actor's replacement",
                  procs)
        wait_for_processes(lambda: all(updates(d) >= before[d] + 2 for d in ROBOTS), 180,
                  "two more updates on each robot after the actor died", procs)
        wait_for_processes(lambda: re.search(r"actor \d replaced by ams-pool-\d\.1", server.output()), 120,
                  "the replacement actor", procs)
        moved = re.compile(r"(robot\d): moved from actor (\d) to actor (\d) at v(\d+)")
        wait_for_processes(lambda: moved.search(server.output()), 120, "a robot moved onto the replacement", procs)
        dev, src, dst, _ = moved.search(server.output()).groups()
        assert src != dst and re.search(rf"actor {dst} replaced by", server.output()), server.output()[-3000:]
        before = {d: updates(d) for d in ROBOTS}
        wait_for_processes(lambda: all(updates(d) >= before[d] + 2 for d in ROBOTS), 180,
                  f"two more updates on each robot after {dev} moved", procs)
        out = server.output()
        assert len(moved.findall(out)) == 1, out[-4000:]  # and it stays: each actor holds one robot
        for dev in ROBOTS:
            _chain_unbroken(dev, edges[dev])
        assert len(re.findall(r"died; restored on actor", out)) == 1, out[-4000:]
        assert re.search(r"Traceback", out) is None, out[-4000:]
        assert server.stop(timeout=60) == 0, server.output()[-3000:]
        assert not [p for p in workers[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for dev in ROBOTS:
            assert edges[dev].stop() == 0, edges[dev].output()[-3000:]
    finally:
        for p in procs:
            if p.alive():
                p.stop()


def test_robots_on_one_actor_train_in_fused_phases_over_dds(tmp_path: Path):
    """pool_fuse with one actor: the two robots' phases run as one fused step on it, and both
    robots apply unbroken chains of the updates (ams_trainer's phase loop with fused groups)."""
    procs: list[RosProcess] = []
    try:
        # phases longer than the 2 s period, so both robots are ready when the actor frees up
        server, edges = _start(tmp_path, {"pool_actors": 1, "pool_fuse": True, "iterations": 60}, procs)

        def updates(dev):
            return sum(k == "update" for k, *_ in APPLIED.findall(edges[dev].output()))

        wait_for_processes(lambda: all(updates(d) >= 3 for d in ROBOTS), 240, "three updates on each robot", procs)
        out = server.output()
        assert "fused phase of robot" in out and "on actor 0" in out, out[-3000:]
        assert re.search(r"Traceback", out) is None, out[-4000:]
        for dev in ROBOTS:
            _chain_unbroken(dev, edges[dev])
        assert server.stop(timeout=60) == 0, server.output()[-3000:]
        for dev in ROBOTS:
            assert edges[dev].stop() == 0, edges[dev].output()[-3000:]
    finally:
        for p in procs:
            if p.alive():
                p.stop()
