"""The session pool on a local Ray instance (issue #12): small CPU actors, a demo-size student.

Ray binds every service to 127.0.0.1 (checked on the sockets its processes listen on); a robot
moved between two actors while batches and phases stream keeps an unbroken chain and every
labelled sample; an actor killed with ``ray.kill`` mid-stream is replaced and its robot resyncs
on the replacement. The same rules in-process: test_pool.py; over DDS:
test/system/test_server_ray_backend.py."""

from __future__ import annotations

import os
import threading
import time

import importlib.util

import pytest

if importlib.util.find_spec("ray") is None:  # not imported here: connect_ray must import it first (loopback)
    pytest.skip("ray is not installed (requirements/common.txt)", allow_module_level=True)

from ams_ros.core.fleet.pool_config import PoolConfig  # noqa: E402
from ams_ros.core.fleet.pool import SessionPool  # noqa: E402
from ams_ros.core.fleet.transports import connect_ray, ray_actor_factory  # noqa: E402
from pool_helpers import ROBOTS, RobotChain, batch, teacher_spec, worker_spec  # noqa: E402

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.fixture(scope="module")
def ray_local():
    connect_ray("local", num_cpus=2)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture
def pool(ray_local, tmp_path):
    # overload 1.0: never rebalance, so the moves and recoveries below are the only ones (on a busy machine an
    # actor can pass 90 % and the monitor would move a robot of its own accord)
    config = PoolConfig(backend="ray", actors=2, check_period_s=0.5, overload=1.0)
    p = SessionPool(ray_actor_factory(worker_spec(tmp_path, torch_threads=1), config), config)
    p.start(list(ROBOTS))
    p.set_teachers(teacher_spec())
    yield p
    p.shutdown(save=False)


def test_a_local_ray_instance_listens_on_loopback_only(ray_local):
    import psutil

    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listening) >= 3, f"found no Ray services listening: {listening}"  # gcs, raylet, the driver's worker
    outside = [(c.pid, c.laddr) for c in listening if c.laddr.ip not in LOOPBACK]
    assert outside == [], f"Ray listens beyond loopback: {outside}"
    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"


class Stream:
    """A robot streaming into the pool: one thread sends a batch every 50 ms, another runs phases
    and applies each update to the robot's chain."""

    def __init__(self, pool: SessionPool, dev: str) -> None:
        self.pool, self.dev, self.chain = pool, dev, RobotChain()
        self.frames = 0
        self.acknowledged: list[float] = []  # stamps of the frames the pool said it labelled
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True) for f in (self._send, self._train)]

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def _send(self) -> None:
        t = 0.0
        while not self.stop.is_set():
            args = batch(ROBOTS.index(self.dev), t, frames=2)
            n = self.pool.label(self.dev, *args)
            assert n in (0, len(args[-1])), f"the pool labelled {n} of a batch of {len(args[-1])}"
            self.frames += n
            self.acknowledged += args[-1][:n]
            t += 0.5
            self.stop.wait(0.05)

    def _train(self) -> None:
        while not self.stop.is_set():
            outcome = self.pool.run_phase(self.dev) if self.pool.info[self.dev].new_samples else None
            if outcome is not None:
                self.chain.apply(outcome.update)
            else:
                self.stop.wait(0.05)

    def __enter__(self) -> "Stream":
        for t in self.threads:
            t.start()
        return self

    def wait_versions(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.chain.version < n and time.monotonic() < deadline and not self.errors:
            time.sleep(0.05)
        assert not self.errors, self.errors
        assert self.chain.version >= n, f"{self.dev} reached only v{self.chain.version} (wanted v{n}) in {timeout} s"

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60.0)


def test_a_robot_moved_between_ray_actors_mid_stream_keeps_its_chain_and_samples(pool):
    pids = {i: pool.actors[i].call("ping").pid for i in (0, 1)}
    assert pids[0] != pids[1]  # two actor processes
    with Stream(pool, "robot1") as s:
        s.wait_versions(2)
        assert pool.move("robot1", 1) is not None
        s.wait_versions(s.chain.version + 2)
        assert pool.move("robot1", 0) is not None
        s.wait_versions(s.chain.version + 1)
    assert not s.errors, s.errors
    assert [e.kind for e in pool.events] == ["move", "move"]
    applied = s.chain.applied
    assert all(b == a + 1 for a, b in applied) and applied[0][0] == 0, applied
    assert all(applied[i + 1][0] == applied[i][1] for i in range(len(applied) - 1)), applied
    # every frame the pool acknowledged is in the robot's buffer unless it left the 30 s horizon (stream
    # time runs 10x faster than the clock, so a slow machine streams past the horizon before the moves end)
    info = pool.call("robot1", "info")
    in_horizon = [t for t in s.acknowledged if info.latest_t - info.horizon_s <= t <= info.latest_t]
    assert s.frames == len(s.acknowledged) and max(s.acknowledged) == info.latest_t, (s.frames, info)
    assert info.buffered == len(in_horizon), (len(in_horizon), s.frames, info)
    assert pool.actors[0].call("ping").robots == ("robot1",)


def test_an_actor_killed_mid_stream_is_replaced_and_its_robot_resyncs(pool, ray_local):
    victim = pool.assignment["robot2"]
    old_pid = pool.actors[victim].call("ping").pid
    pool.start_monitor()
    with Stream(pool, "robot2") as s:
        s.wait_versions(2)
        ray_local.kill(pool.actors[victim].handle)
        killed = time.monotonic()
        s.wait_versions(s.chain.version + 2)
    assert not s.errors, s.errors
    recov = [e for e in pool.events if e.kind == "recover" and e.device_id == "robot2"]
    assert len(recov) == 1, [e.message for e in pool.events]
    survivor = 1 - victim
    assert recov[0].target == survivor and pool.assignment == {"robot1": survivor, "robot2": survivor}
    assert float(recov[0].message.rsplit(" in ", 1)[1].rstrip(" s")) < 5.0, recov[0].message  # warm: no start-up
    assert pool.wait_all_up(120), "the replacement actor did not come up"
    assert pool.actors[victim].call("ping").pid != old_pid
    assert pool.actors[victim].call("ping").robots == ()
    applied = s.chain.applied
    assert all(b == a + 1 for a, b in applied) and all(applied[i + 1][0] == applied[i][1]
                                                       for i in range(len(applied) - 1)), applied
    # the robot asks to resync naming what it runs: the replacement answers on the same chain
    answer = pool.resync("robot2", s.chain.version, s.chain.tag, None)
    assert answer.update.chain_tag == s.chain.tag and answer.update.new_version == s.chain.version, answer.reason
    assert time.monotonic() - killed < 60


def test_the_pool_benchmark_measures_robot_periods_on_ray_actors(ray_local):
    from ams_ros.bench.pool import measure

    res = measure((1,), seconds=2.0, width=64, height=32, iterations=1, frames=2, update_period_s=10.0)
    row = res["rows"][0]
    assert row["actors"] == 1 and row["robots_driven"] == 2 and row["robot_periods"] >= 1, res
    assert row["robots_served_at_T_update"] == int(row["robot_periods_per_s"] * 10.0)
    assert row["phase_s_per_period"] > 0 and row["label_s_per_period"] > 0
    assert ray_local.is_initialized()  # it left the instance it did not start running
