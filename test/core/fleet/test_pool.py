"""The session pool's rules without Ray or DDS (issue #12): the same PoolWorker as in a Ray actor,
in this process behind the actor interface, so a move, a death and the load rule are exact and quick.
With Ray: test_pool_ray.py; over DDS: test/system/test_server_ray_backend.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ams_ros.core.common.paths import SOURCE_ROOT

from ams_ros.core.fleet.pool_config import PoolConfig
from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.transports import in_process_factory
from ams_ros.core.server.session_store import SessionStore, session_state
from pool_helpers import ROBOTS, RobotChain, batch, decoded, state_differences, teacher_spec, worker_spec


def _pool(tmp_path, robots=ROBOTS, actors=2, store=None, clock=None, placement="utility"):
    kw = {"clock": clock} if clock else {}
    pool = SessionPool(in_process_factory(worker_spec(tmp_path)),
                       PoolConfig(backend="ray", actors=actors, placement=placement), store=store, **kw)
    reports = pool.start(list(robots))
    pool.set_teachers(teacher_spec(robots))
    return pool, reports


def _stream(pool, dev, t0, phases, chain=None):
    """``phases`` times: a batch, then a phase; returns the updates."""
    out = []
    for k in range(phases):
        pool.label(dev, *batch(int(dev[-1]) - 1, t0 + k))
        outcome = pool.run_phase(dev)
        assert outcome is not None, f"{dev}: no phase after a labelled batch"
        out.append(outcome.update)
        if chain is not None:
            chain.apply(outcome.update)
    return out


def test_robots_go_to_the_least_loaded_actor(tmp_path):
    now = [0.0]
    pool, reports = _pool(tmp_path, robots=("robot1", "robot2", "robot3"), clock=lambda: now[0])
    assert pool.assignment == {"robot1": 0, "robot2": 1, "robot3": 0}  # by robot count while no load is measured
    assert all("starting a new chain" in r["message"] for r in reports)
    with pool._cv:  # actor 0 measured busier than actor 1 (robot1: 12 s of the 30 s window)
        pool._record("robot1", 12.0)
        pool._record("robot2", 3.0)
    assert pool.actor_load(0) == pytest.approx(0.4) and pool.actor_load(1) == pytest.approx(0.1)
    assert pool._least_loaded() == 1


def test_a_moved_robot_keeps_its_whole_state_and_its_chain(tmp_path):
    """Moved between two actors mid-stream (with labelled samples not yet trained on), the robot's
    session on the new actor is bit for bit the one it left (weights, Adam state, buffer, random
    streams, rate control, version chain) and its next updates continue its chain."""
    pool, _ = _pool(tmp_path)
    chain = RobotChain()
    _stream(pool, "robot1", 0.0, 2, chain)
    pool.label("robot1", *batch(0, 2.0))  # labelled, not trained on yet: must travel
    before = pool.info["robot1"]
    left = session_state(pool.actors[0].worker.sessions["robot1"])
    event = pool.move("robot1", 1)
    assert event is not None and pool.assignment["robot1"] == 1 and event.version == 2
    assert "robot1" not in pool.actors[0].worker.sessions
    arrived = session_state(pool.actors[1].worker.sessions["robot1"])
    assert state_differences(left, arrived) == []
    kept = decoded(pool, "robot1")  # what a later recovery would restore
    assert kept.pop("pool_seq") == 3 and state_differences(left, kept) == []
    after = pool.info["robot1"]
    assert (after.version, after.chain_tag, after.buffered, after.new_samples) == \
        (before.version, before.chain_tag, before.buffered, before.new_samples)
    assert before.buffered == 9 and before.new_samples == 3
    assert pool.robots_on(0) == [] and pool.robots_on(1) == ["robot1", "robot2"]
    assert pool.move("robot1", 1) is None  # already there
    _stream(pool, "robot1", 3.0, 2, chain)
    assert chain.applied == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(KeyError, match="not served"):
        pool.call("robot9", "info")


def test_a_dead_actors_robots_resume_from_their_last_state_with_the_batches_since(tmp_path):
    """An actor dies after a phase and two more labelled batches: the monitor's ping restores its
    robot on the surviving actor from its last kept state and replays those batches (relabelled:
    the synthetic oracle's noise follows its own call count, so only the labels' noise may
    differ), and the next update continues the robot's chain."""
    pool, _ = _pool(tmp_path)
    chain = RobotChain()
    _stream(pool, "robot1", 0.0, 2, chain)
    for k in (2.0, 2.5):
        pool.label("robot1", *batch(0, k))
    dead = pool.actors[0]
    gone = session_state(dead.worker.sessions["robot1"])
    dead.kill()
    assert pool.kept_state("robot1")[1] == 2
    with pytest.raises(Exception):
        dead.call("ping")
    pool.check()  # the monitor's ping finds it dead
    assert pool.assignment == {"robot1": 1, "robot2": 1}  # on the survivor at once
    assert pool.wait_all_up(60), "the replacement actor did not come up"
    assert pool.actors[0] is not dead and pool.generation[0] == 1 and pool.robots_on(0) == []
    assert [e.kind for e in pool.events] == ["recover", "replace"], [e.message for e in pool.events]
    back = session_state(pool.actors[1].worker.sessions["robot1"])
    diffs = state_differences(gone, back)
    assert diffs and all(d.startswith(("/buffer/labels", "/rate/")) for d in diffs), diffs
    assert back["buffer"]["t"] == gone["buffer"]["t"] and back["new_samples"] == gone["new_samples"] == 6
    recov = [e for e in pool.events if e.kind == "recover"]
    assert [(e.device_id, e.version) for e in recov] == [("robot1", 2)], [e.message for e in recov]
    assert "+2 batches replayed" in recov[0].message
    chain.apply(pool.run_phase("robot1").update)
    # the robot's own resync request (it runs v3 of the chain) is answered on the new actor
    answer = pool.resync("robot1", chain.version, chain.tag, None)
    assert answer.kind == "snapshot" and "up to date" in answer.reason and answer.update.new_version == 3
    assert pool.move("robot1", 0) is not None  # onto the replacement
    chain.apply(pool.run_phase("robot1").update)


class _CutOff:
    """An actor behind a link that went down: alive (its worker keeps its state) but every call
    times out, as Ray's ray.get(timeout=...) does for an actor on an unreachable node."""

    def __init__(self, actor) -> None:
        self.actor, self.name, self.timeouts, self.killed = actor, actor.name, [], False

    def call(self, method, *args, timeout=None):
        self.timeouts.append((method, timeout))
        raise TimeoutError(f"{method}: no answer within {timeout} s")

    def kill(self) -> None:
        self.killed = True
        self.actor.kill()


def test_an_actor_that_does_not_answer_a_ping_for_pool_unreachable_s_is_given_up_and_its_robots_restored(tmp_path):
    pool = SessionPool(in_process_factory(worker_spec(tmp_path)),
                       PoolConfig(backend="ray", actors=2, overload=1.0, unreachable_s=7.5))
    pool.start(list(ROBOTS))
    pool.set_teachers(teacher_spec())
    chain = RobotChain()
    _stream(pool, "robot1", 0.0, 2, chain)
    logged = []
    pool.log = lambda level, text: logged.append((level, text))
    cut = pool.actors[0] = _CutOff(pool.actors[0])
    pool.check()
    assert cut.timeouts == [("ping", 7.5)]  # the ping waited pool_unreachable_s, then gave the actor up
    assert cut.killed and pool.assignment == {"robot1": 1, "robot2": 1}
    assert any("did not answer a ping for 7.5 s (pool_unreachable_s)" in text for _, text in logged), logged
    assert [(e.kind, e.device_id, e.version) for e in pool.events][:1] == [("recover", "robot1", 2)]
    assert "actor 0 lost (silent for 7.5 s); restored on actor 1" in pool.events[0].message
    assert pool.wait_all_up(60) and pool.actors[0] is not cut
    _stream(pool, "robot1", 2.0, 1, chain)  # its chain continues on the survivor
    assert chain.applied[-1] == (2, 3)


def test_a_ping_that_fails_otherwise_is_not_taken_for_a_lost_actor(tmp_path):
    pool = SessionPool(in_process_factory(worker_spec(tmp_path)), PoolConfig(backend="ray", actors=2, overload=1.0))
    pool.start(list(ROBOTS))
    logged = []
    pool.log = lambda level, text: logged.append((level, text))
    actor = pool.actors[0]

    class Flaky:
        name = actor.name

        def call(self, method, *args, timeout=None):
            raise RuntimeError("object store full")

        def kill(self):
            raise AssertionError("a failing ping must not kill the actor")

    pool.actors[0] = Flaky()
    pool.check()
    assert pool.assignment == {"robot1": 0, "robot2": 1} and pool.events == []
    assert logged == [("warning", "actor 0: ping failed: RuntimeError: object store full")]
    pool.actors[0] = actor


def test_a_pool_of_one_restores_its_robots_on_the_replacement(tmp_path):
    pool, _ = _pool(tmp_path, robots=("robot1",), actors=1)
    chain = RobotChain()
    _stream(pool, "robot1", 0.0, 1, chain)
    pool.actors[0].kill()
    _stream(pool, "robot1", 1.0, 1, chain)  # the call finds it dead: waits for the replacement
    assert pool.generation == [1] and pool.robots_on(0) == ["robot1"] and chain.applied == [(0, 1), (1, 2)]


def test_an_overloaded_actor_hands_a_robot_to_a_less_busy_one(tmp_path):
    now = [100.0]
    pool, _ = _pool(tmp_path, robots=("robot1", "robot2", "robot3"), clock=lambda: now[0])
    chain = RobotChain()
    _stream(pool, "robot3", 0.0, 1, chain)
    with pool._cv:  # actor 0 (robot1, robot3) at 95 % of the window, actor 1 (robot2) at 10 %
        for q in pool._busy.values():  # only the booked load (not the streamed phase's real time)
            q.clear()
        pool._record("robot1", 0.55 * 30)
        pool._record("robot3", 0.40 * 30)
        pool._record("robot2", 0.10 * 30)
    assert pool.actor_load(0) > 0.9
    event = pool.rebalance()
    assert event is not None and event.kind == "move" and event.source == 0 and event.target == 1
    assert event.device_id == "robot3"  # the move that lowers the busier actor most (0.55 vs 0.50 left)
    assert pool.rebalance() is None  # now 0.55 / 0.50: no actor over 90 %
    _stream(pool, "robot3", 1.0, 1, chain)
    assert chain.applied == [(0, 1), (1, 2)]


def _book(pool, loads):
    """Set each robot's measured load (share of the 30 s window) to ``loads``."""
    with pool._cv:
        for q in pool._busy.values():
            q.clear()
        for dev, share in loads.items():
            pool._record(dev, share * 30)


@pytest.mark.parametrize("placement, moved", [("utility", "robot3"), ("load", "robot1")])
def test_an_overloaded_actor_hands_over_its_lowest_utility_robot_under_utility_placement(tmp_path, placement,
                                                                                          moved):
    """Actor 0 holds robot1 (45 % of the window, a scene that changes: high utility) and robot3
    (50 %, a static scene: low utility). Under ``load`` robot1 moves (it leaves the lower peak:
    50 % vs 60 %); under ``utility`` robot3 does, the robot that loses least by the move, and
    robot1 keeps training where it is. Either move relieves actor 0."""
    now = [100.0]
    pool, _ = _pool(tmp_path, robots=("robot1", "robot2", "robot3"), clock=lambda: now[0], placement=placement)
    pool.utility = {"robot1": 0.30, "robot2": 0.05, "robot3": 0.002}.__getitem__
    _book(pool, {"robot1": 0.45, "robot3": 0.50, "robot2": 0.10})
    event = pool.rebalance()
    assert event is not None and (event.source, event.target, event.device_id) == (0, 1, moved), event
    assert ("lowest utility" in event.message) == (placement == "utility"), event.message
    assert pool.rebalance() is None  # both actors under 90 % now


def test_utility_placement_never_picks_a_move_that_does_not_relieve_the_busy_actor(tmp_path):
    """The lowest-utility robot is not moved when its move would leave a higher peak (it is the
    busiest robot and the other actor is already half busy): the next-lowest one is."""
    now = [100.0]
    pool, _ = _pool(tmp_path, robots=("robot1", "robot2", "robot3"), clock=lambda: now[0])
    pool.utility = {"robot1": 0.30, "robot2": 0.05, "robot3": 0.002}.__getitem__
    _book(pool, {"robot1": 0.20, "robot3": 0.75, "robot2": 0.40})  # robot3 to actor 1: 1.15 > 0.95
    event = pool.rebalance()
    assert event is not None and event.device_id == "robot1", event


def test_robots_without_a_measured_utility_stay_and_a_failing_provider_falls_back_to_load(tmp_path):
    now = [100.0]
    pool, _ = _pool(tmp_path, robots=("robot1", "robot2", "robot3"), clock=lambda: now[0])
    pool.utility = {"robot1": float("inf"), "robot2": 0.05, "robot3": 0.01}.__getitem__  # robot1 never ran
    _book(pool, {"robot1": 0.45, "robot3": 0.50, "robot2": 0.10})
    assert pool.rebalance().device_id == "robot3"
    pool.move("robot3", 0)  # back, then past the once-per-window rule; a provider that fails: the load rule
    now[0] += 100.0
    logged = []
    pool.log = lambda level, text: logged.append((level, text))

    def broken(dev):
        raise KeyError(dev)

    pool.utility = broken
    _book(pool, {"robot1": 0.45, "robot3": 0.50, "robot2": 0.10})
    assert pool.rebalance().device_id == "robot1"
    assert any(level == "warning" and "placing by load" in text for level, text in logged), logged


def test_a_dead_actors_robots_come_back_highest_utility_first(tmp_path):
    pool, _ = _pool(tmp_path, robots=("robot1", "robot2", "robot3"))
    assert pool.robots_on(0) == ["robot1", "robot3"]
    pool.utility = {"robot1": 0.01, "robot2": 0.05, "robot3": 0.40}.__getitem__
    pool.actors[0].kill()
    pool.check()
    assert [e.device_id for e in pool.events if e.kind == "recover"] == ["robot3", "robot1"]
    assert pool.wait_all_up(60)


def test_states_kept_after_each_phase_persist_in_state_dir_and_resume(tmp_path):
    store = SessionStore(str(tmp_path / "state"))
    pool, _ = _pool(tmp_path, store=store)
    _stream(pool, "robot2", 0.0, 2)
    tag = pool.info["robot2"].chain_tag
    assert os.path.exists(store.path("robot2")) and not os.path.exists(store.path("robot1"))
    with open(store.path("robot1"), "wb") as f:
        f.write(b"AMS-SESSION\n{torn")
    again, reports = _pool(tmp_path, store=store)
    assert again.info["robot2"].version == 2 and again.info["robot2"].chain_tag == tag
    assert "resumed chain " + tag in reports[1]["message"]
    assert reports[0]["warning"] and "corrupt" in reports[0]["message"] and again.info["robot1"].version == 0
    assert any(n.startswith("robot1.session.corrupt-") for n in os.listdir(store.state_dir))


@pytest.mark.parametrize("kw, text", [
    ({"backend": "dask"}, "backend='dask' is not valid; choose one of: local, ray"),
    ({"actors": 0}, "pool_actors must be >= 1"),
    ({"overload": 1.5}, "pool_overload must be in (0, 1]"),
    ({"ray_address": " "}, "use local"),
    ({"unreachable_s": 0}, "pool_unreachable_s must be > 0"),
])
def test_bad_pool_settings_name_the_value_and_the_fix(kw, text):
    with pytest.raises(ValueError) as exc:
        PoolConfig(**kw)
    assert text in str(exc.value)


@pytest.mark.ros  # imports the server's nodes
def test_backend_local_never_imports_ray():
    pytest.importorskip("rclpy")
    code = ("import sys; import ams_ros.core.fleet.pool, ams_ros.core.fleet.pooled_session, ams_ros.core.fleet.worker; "
            "import ams_ros.nodes.server.main; assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_replay_is_bounded_and_trimmed_by_each_kept_state(tmp_path):
    pool, _ = _pool(tmp_path, robots=("robot1",), actors=1)
    for k in range(3):
        pool.label("robot1", *batch(0, float(k)))
    assert [s for s, _ in pool._replay["robot1"]] == [1, 2, 3]
    pool.run_phase("robot1")
    assert list(pool._replay["robot1"]) == [] and pool.kept_state("robot1")[2] == 3
    assert np.isfinite(pool.student_error("robot1"))


def test_the_sizing_table_packs_whole_robots_per_gpu_at_the_stated_costs():
    from ams_ros.bench.pool import robots_per_gpu, sizing_table

    # 1 frame/s: 10 frames x 0.25 s + 20 steps x 0.1 s = 4.5 GPU-s per 10 s period -> 2 robots per GPU
    assert robots_per_gpu(10.0, 1.0, 0.25, 0.1, 20) == (4.5, 2)
    rows = {r["frames_per_s"]: r for r in sizing_table()}
    assert rows[1.0]["gpus"] == {"10": 5, "50": 25, "200": 100}
    assert rows[0.1]["robots_per_gpu"] == 4 and rows[0.1]["gpus"]["200"] == 50  # 2.25 GPU-s per period
    with pytest.raises(ValueError, match="more than one GPU"):
        sizing_table(rates=(5.0,))


def test_actors_sign_with_the_key_file_they_are_given(tmp_path):
    """A live key does not travel to an actor: the spec carries its path, the actor loads it."""
    from dataclasses import replace

    from ams_ros.core.fleet.worker import WorkerSpec
    from ams_ros.core.security.signing import SigningKey, SignatureError, TrustedKeys, verify_update

    key = SigningKey.generate()
    path = key.save(tmp_path / "base.pem")
    spec = worker_spec(tmp_path)
    with pytest.raises(ValueError, match="signing_key_file"):
        WorkerSpec(spec.student, replace(spec.session, signing_key=key))
    spec = replace(spec, signing_key_file=str(path))
    pool = SessionPool(in_process_factory(spec), PoolConfig(backend="ray", actors=1))
    pool.start(["robot1"])
    pool.set_teachers(teacher_spec(("robot1",)))
    update = _stream(pool, "robot1", 0.0, 1)[0]
    trusted = TrustedKeys.parse([key.public_text])
    verify_update(update, "robot1", trusted)
    with pytest.raises(SignatureError):
        verify_update(update, "robot2", trusted)  # signed for its robot only


def test_robots_on_one_actor_train_in_one_fused_phase_and_keep_their_chains(tmp_path):
    """pool_fuse: two robots on one actor get one fused phase each (one call to the actor), their
    chains continue, the pool keeps each robot's state after it; robots on two actors, or one
    robot, fall back to one phase after another."""
    pool, _ = _pool(tmp_path, actors=1)
    chains = {dev: RobotChain() for dev in ROBOTS}
    worker = pool.actors[0].worker
    calls = []
    real = worker.run_phases
    worker.run_phases = lambda devs: calls.append(list(devs)) or real(devs)
    for k in range(2):
        for i, dev in enumerate(ROBOTS):
            pool.label(dev, *batch(i, float(k)))
        outcomes = pool.run_phases(list(ROBOTS))
        for dev, outcome in zip(ROBOTS, outcomes):
            assert outcome is not None and not isinstance(outcome, Exception), (dev, outcome)
            chains[dev].apply(outcome.update)
            assert pool.kept_state(dev)[1] == outcome.update.new_version  # kept for a recovery
    assert calls == [list(ROBOTS)] * 2 and all(c.applied == [(0, 1), (1, 2)] for c in chains.values())
    two, _ = _pool(tmp_path / "two", actors=2)
    for i, dev in enumerate(ROBOTS):
        two.label(dev, *batch(i, 0.0))
    assert [o.update.new_version for o in two.run_phases(list(ROBOTS))] == [1, 1]  # on two actors: one by one


def test_an_operators_rollback_runs_on_the_robots_actor_is_kept_and_travels_with_a_move(tmp_path):
    """(issue #29) A rollback forwarded to the robot's actor continues its chain and is kept as its
    newest state; after a move the values it needs to roll back further travelled with it."""
    pool, _ = _pool(tmp_path)
    chain = RobotChain()
    _stream(pool, "robot1", 0.0, 3, chain)
    answer = pool.rollback("robot1", 1)
    assert answer.kind == "rollback" and "to the weights of v1 as v4" in answer.reason
    chain.apply(answer.update)
    assert pool.info["robot1"].version == 4 and pool.kept_state("robot1")[1] == 4
    assert pool.move("robot1", 1) is not None
    chain.apply(pool.rollback("robot1", 3).update)  # back to before the rollback, on the new actor
    with pytest.raises(ValueError, match="cannot roll back to v9"):
        pool.rollback("robot1", 9)
    _stream(pool, "robot1", 3.0, 1, chain)
    assert chain.applied == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
