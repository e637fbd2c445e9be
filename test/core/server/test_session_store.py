"""Persisted sessions, chain tags, catch-up updates and the robot-ahead rule (issue #13), core only.

A server restarted from its state_dir must continue each robot's chain exactly (weights, Adam
state, version, tag, buffer), set aside a torn or foreign file instead of half-loading it, answer
a robot a few versions behind with one catch-up update, and never take a robot's version
backwards when it is ahead of the server's chain. (Issue #29) An operator's rollback to a kept
version or to the starting weights is the next version of the chain, and the robot ends up with
those weights (as float16 carries them, like every catch-up).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from ams_ros.core.edge.chain_sync import ChainFollower, ResyncNeeded
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.session import START, RobotSession, SessionConfig
from ams_ros.core.server.session_store import SessionStore
from ams_ros.core.sources.synthetic import world_from_spec
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.wire.update import VersionGapError, encoded_size
from ams_ros.core.wire.encodings import encode_snapshot

SIZE = (48, 24)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(1)
    n_cls = len(get_label_space("synthetic").class_names)
    return load_student("deeplabv3_mobilenet_v2", num_classes=n_cls, weights=None)


@pytest.fixture(scope="module")
def world():
    return world_from_spec("synthetic:1", width=SIZE[0], height=SIZE[1])


def _config(**kw) -> SessionConfig:
    return SessionConfig(trainer=TrainerConfig(iterations=2, batch_size=2, gamma=0.01, lr=2e-3, input_size=SIZE,
                                               horizon_s=60.0, update_period_s=5.0), **kw)


def _flat(model) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def _phase(session: RobotSession, world, t0: int):
    for t in range(t0, t0 + 5):
        rgb, lab = world.frame_at(float(t))
        session.add_labeled(float(t), rgb, lab)
    return session.run_phase(float(t0 + 4))


def _trained(student, world, phases: int, **kw) -> tuple[RobotSession, list]:
    session = RobotSession("robot1", copy.deepcopy(student), _config(**kw))
    outs = [_phase(session, world, 5 * i) for i in range(phases)]
    return session, outs


def test_save_and_load_restore_weights_adam_state_version_tag_and_buffer_exactly(tmp_path, student, world):
    session, _ = _trained(student, world, 2)
    session.rate._phis.append(0.25)
    # (issue #29) the gate's counts, and why the last
    session.discarded_phases, session.last_discard = 3, "phase 2 discarded: ..."
    session.unjudged_phases, session.last_unjudged = 1, "phase 1 shipped unjudged: a scene change: ..."
    store = SessionStore(str(tmp_path))
    store.save(session)
    loaded = store.load("robot1", student, _config())
    assert loaded.resumed and not loaded.warning, loaded.message
    back = loaded.session
    assert np.array_equal(_flat(back.model), _flat(session.model))
    assert torch.equal(back.trainer.m, session.trainer.m) and torch.equal(back.trainer.v, session.trainer.v)
    assert torch.equal(back.trainer.u, session.trainer.u) and back.trainer.step == session.trainer.step
    assert (back.version, back.chain_tag, back.trainer.phase) == (2, session.chain_tag, 2)
    assert [v for v, _, _ in back.history] == [1, 2]
    assert all(np.array_equal(a, b) and np.array_equal(before_a, before_b)  # changed indices, their values before
               for (_, a, before_a), (_, b, before_b) in zip(back.history, session.history))
    src, dst = session.trainer.buffer._entries, back.trainer.buffer._entries
    assert len(dst) == len(src) == 10
    assert all(a.t == b.t and np.array_equal(a.frame, b.frame) and np.array_equal(a.label, b.label)
               for a, b in zip(src, dst))
    assert list(back.rate._phis) == list(session.rate._phis) and back.latest_t == session.latest_t
    assert (back.discarded_phases, back.last_discard) == (3, "phase 2 discarded: ...")
    assert (back.unjudged_phases, back.last_unjudged) == (1, "phase 1 shipped unjudged: a scene change: ...")
    # the resumed session trains the next phase exactly as the original would
    a, b = _phase(session, world, 10), _phase(back, world, 10)
    assert np.array_equal(a.result.indices, b.result.indices) and np.array_equal(_flat(back.model), _flat(session.model))
    assert (a.update.base_version, a.update.new_version, a.update.chain_tag) == (2, 3, session.chain_tag)
    assert b.update.chain_tag == session.chain_tag and b.update.checksum == a.update.checksum
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the temporary file was renamed


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "not_a_session"])
def test_a_torn_or_corrupt_state_file_is_set_aside_and_a_fresh_chain_starts_with_a_warning(tmp_path, student, world,
                                                                                          damage):
    session, _ = _trained(student, world, 1)
    store = SessionStore(str(tmp_path))
    store.save(session)
    path = store.path("robot1")
    data = open(path, "rb").read()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped_byte":
        data = bytearray(data)
        data[-100] ^= 0xFF
        data = bytes(data)
    else:
        data = b"hello"
    open(path, "wb").write(data)
    loaded = store.load("robot1", student, _config())
    assert not loaded.resumed and loaded.warning and "corrupt" in loaded.message and "set it aside" in loaded.message
    assert loaded.session.version == 0 and loaded.session.chain_tag != session.chain_tag
    assert len(loaded.session.trainer.buffer) == 0 and np.array_equal(_flat(loaded.session.model), _flat(student))
    assert not os.path.exists(path) and open(loaded.set_aside, "rb").read() == data


def test_a_foreign_state_file_is_set_aside_never_loaded(tmp_path, student, world):
    session, _ = _trained(student, world, 1)
    store = SessionStore(str(tmp_path))
    store.save(session)
    other = load_student("deeplabv3_mobilenet_v2", num_classes=3, weights=None)  # another fingerprint
    loaded = store.load("robot1", other, _config())
    assert not loaded.resumed and loaded.warning and ".foreign-" in loaded.set_aside
    assert "student" in loaded.message and loaded.session.version == 0
    # another robot's file under this robot's name is foreign too
    store.save(session)
    os.replace(store.path("robot1"), store.path("robot2"))
    loaded = store.load("robot2", student, _config())
    assert not loaded.resumed and ".foreign-" in loaded.set_aside and "robot1" in loaded.message


def test_a_catch_up_for_a_robot_three_versions_behind_applies_and_yields_exactly_the_servers_weights(student, world):
    session = RobotSession("robot1", copy.deepcopy(student), _config())
    edge = DoubleBufferedModel(copy.deepcopy(student))
    edge.apply_update(session.snapshot())
    follower = ChainFollower()
    follower.accepted(session.snapshot())
    outs = [_phase(session, world, 5 * i) for i in range(5)]
    for out in outs[:2]:  # the robot got v1 and v2, then lost v3..v5
        follower.admit(out.update, edge.version)
        edge.apply_update(out.update)
    with pytest.raises(VersionGapError):
        edge.apply_update(outs[4].update)
    answer = session.resync(edge.version, follower.tag)
    assert answer.kind == "catch_up" and not answer.warning
    u = answer.update
    assert (u.base_version, u.new_version, u.catch_up, u.full_snapshot) == (2, 5, True, False)
    union = np.unique(np.concatenate([o.result.indices for o in outs[2:]]))
    assert u.num_selected == union.size
    follower.admit(u, edge.version)
    edge.apply_update(u)
    assert edge.version == 5 and np.array_equal(_flat(edge.active), _flat(session.model))
    # the snapshot it would have cost (encoded, not served: a served one is the robot's new base)
    snap = encode_snapshot(session.model, session.version, session.config.snapshot_encoding)
    assert encoded_size(u) < encoded_size(snap) / 3
    # the next regular update applies on top of the catch-up
    nxt = _phase(session, world, 25)
    edge.apply_update(nxt.update)
    assert np.array_equal(_flat(edge.active), _flat(session.model))


def test_a_robot_too_far_behind_or_on_another_chain_gets_a_snapshot(student, world):
    session, _ = _trained(student, world, 4, catch_up_versions=2)
    assert session.resync(1, session.chain_tag).kind == "snapshot"  # 3 behind, history keeps 2
    assert session.resync(2, session.chain_tag).kind == "catch_up"
    answer = session.resync(2, "0123456789abcdef")
    assert answer.kind == "snapshot" and answer.update.new_version == 4 and not answer.warning


def test_the_checksum_covers_the_catch_up_flag(student, world):
    session, _ = _trained(student, world, 2)
    u = session.resync(1, session.chain_tag).update
    u.catch_up = False  # forged into a plain sparse update
    assert u.checksum != u.compute_checksum()


def test_a_robot_ahead_of_a_servers_new_chain_gets_the_servers_weights_numbered_above_its_own(student, world):
    """Rule: the robot's versions never go backwards, the server is the authority on weights."""
    old, _ = _trained(student, world, 3)
    robot = DoubleBufferedModel(copy.deepcopy(student))
    follower = ChainFollower()
    snap = old.snapshot()
    follower.admit(snap, robot.version)
    robot.apply_update(snap)
    follower.accepted(snap)
    assert robot.version == 3
    # the server lost its state: a new session (new chain) at v0
    new, _ = _trained(student, world, 1)
    assert new.chain_tag != follower.tag
    reason = follower.on_command(new.version, new.chain_tag, robot.version, now=0.0)
    assert "chain" in reason
    stale = new.snapshot()  # the new chain's v1, below the robot's v3
    with pytest.raises(ResyncNeeded, match="ahead of the server's chain"):
        follower.admit(stale, robot.version)
    answer = new.resync(robot.version, follower.tag)
    assert "ahead" in answer.warning and answer.kind == "snapshot"
    assert answer.update.new_version == 4 and new.version == 4
    warning = follower.admit(answer.update, robot.version)
    assert "switching" in warning
    robot.apply_update(answer.update)
    follower.accepted(answer.update)
    assert robot.version == 4 and follower.tag == new.chain_tag
    assert np.array_equal(_flat(robot.active), _flat(new.model))
    nxt = _phase(new, world, 5)  # the new chain goes on from the floor with sparse updates
    assert (nxt.update.base_version, nxt.update.new_version) == (4, 5)
    follower.admit(nxt.update, robot.version)
    robot.apply_update(nxt.update)


def test_a_robot_ahead_of_a_server_that_resumed_an_older_save_gets_a_new_chain_above_it(tmp_path, student, world):
    session, _ = _trained(student, world, 2)
    store = SessionStore(str(tmp_path))
    store.save(session)  # saved at v2 ...
    _phase(session, world, 10)  # ... the robot got v3, then the server died before saving
    resumed = store.load("robot1", student, _config()).session
    assert resumed.version == 2
    answer = resumed.resync(3, session.chain_tag)
    assert answer.warning and resumed.version == 4 and resumed.chain_tag != session.chain_tag
    assert answer.update.full_snapshot and answer.update.new_version == 4


def test_a_sparse_update_of_another_chain_is_refused_for_a_resync(student, world):
    a, outs_a = _trained(student, world, 1)
    b, outs_b = _trained(student, world, 1)
    follower = ChainFollower(tag=a.chain_tag)
    with pytest.raises(ResyncNeeded, match="new chain"):
        follower.admit(outs_b[0].update, 0)
    assert follower.admit(outs_a[0].update, 0) == ""


def test_a_command_showing_a_newer_server_version_asks_for_a_catch_up_after_the_grace_time():
    f = ChainFollower(tag="aa")
    assert f.on_command(5, "aa", 4, now=10.0) == ""
    assert f.due(4, now=10.5, grace_s=1.0) == ""  # the update may still be in flight
    assert f.due(5, now=10.6, grace_s=1.0) == ""  # it arrived: nothing to do
    assert f.on_command(6, "aa", 5, now=20.0) == ""
    assert "lost" in f.due(5, now=21.1, grace_s=1.0)
    assert "ahead" in f.on_command(3, "aa", 5, now=30.0)
    assert f.on_command(0, "bb", 0, now=31.0) != ""
    assert ChainFollower().on_command(0, "bb", 0, now=0.0) == ""  # fresh robot, fresh server: nothing lost


def assert_float16_of(got: np.ndarray, want: np.ndarray, away_from: np.ndarray) -> None:
    """``got`` is ``want`` up to float16 rounding of the coordinates that were sent, and ``away_from`` is not."""
    sent = got != want
    np.testing.assert_array_equal(got[sent], want[sent].astype(np.float16).astype(np.float32))
    assert not np.allclose(away_from, want, rtol=1e-3, atol=1e-4)


def test_a_rollback_to_a_kept_version_gives_the_robot_its_weights_as_the_next_version(student, world):
    session = RobotSession("robot1", copy.deepcopy(student), _config())
    edge = DoubleBufferedModel(copy.deepcopy(student))
    edge.apply_update(session.snapshot())
    weights = {0: _flat(edge.active)}
    for i in range(4):
        edge.apply_update(_phase(session, world, 5 * i).update)
        weights[edge.version] = _flat(edge.active)
    m_before = session.trainer.m.clone()
    answer = session.rollback(2)
    u = answer.update
    assert answer.kind == "rollback" and "rolled back to the weights of v2 as v5" in answer.reason
    assert (u.base_version, u.new_version, u.catch_up, u.chain_tag) == (4, 5, True, session.chain_tag)
    edge.apply_update(u)
    assert edge.version == session.version == 5 and session.rollbacks == 1
    # the robot and the server hold the same weights: v2's, as float16 carries them (a value encoding)
    assert np.array_equal(_flat(edge.active), _flat(session.model))
    assert_float16_of(_flat(edge.active), weights[2], away_from=weights[4])
    assert m_before.abs().sum() > 0 and session.trainer.m.abs().sum() == 0 and session.trainer.u is None
    # a robot that missed the rollback catches up to it like to any version
    assert session.resync(3, session.chain_tag).update.new_version == 5
    # and training goes on from there: the next phase builds on v5
    nxt = _phase(session, world, 20)
    edge.apply_update(nxt.update)
    assert nxt.update.base_version == 5 and np.array_equal(_flat(edge.active), _flat(session.model))


def test_a_rollback_to_the_start_restores_the_starting_weights_and_can_itself_be_undone(student, world):
    session = RobotSession("robot1", copy.deepcopy(student), _config())
    edge = DoubleBufferedModel(copy.deepcopy(student))
    edge.apply_update(session.snapshot())
    start = _flat(edge.active)
    for i in range(3):
        edge.apply_update(_phase(session, world, 5 * i).update)
    trained = _flat(edge.active)
    edge.apply_update(session.rollback(START).update)
    assert edge.version == 4 and np.array_equal(_flat(edge.active), _flat(session.model))
    assert_float16_of(_flat(edge.active), start, away_from=trained)
    edge.apply_update(session.rollback(3).update)  # the rollback is a version like any other
    assert edge.version == 5 and np.array_equal(_flat(edge.active), _flat(session.model))
    assert_float16_of(_flat(edge.active), trained, away_from=start)


def test_a_rollback_out_of_reach_is_refused_naming_what_can_be_reached(student, world):
    session, _ = _trained(student, world, 3, catch_up_versions=2)
    before = (_flat(session.model).copy(), session.version)
    with pytest.raises(ValueError, match=r"cannot roll back to v0: the server keeps the last 2 versions' changes "
                                         r"\(catch_up_versions\) and can reach v1 to v2; roll back to 'start'"):
        session.rollback(0)
    with pytest.raises(ValueError, match=r"cannot roll back to v3: the robot's chain is at v3"):
        session.rollback(3)
    assert np.array_equal(_flat(session.model), before[0]) and session.version == before[1]


def test_a_rollback_survives_a_restart(tmp_path, student, world):
    session, _ = _trained(student, world, 3)
    store = SessionStore(str(tmp_path))
    store.save(session)
    back = store.load("robot1", student, _config()).session
    weights_v1 = back._weights_at(1, _flat(back.model))
    assert np.array_equal(weights_v1, session._weights_at(1, _flat(session.model)))
    a, b = session.rollback(1), back.rollback(1)
    assert a.update.checksum == b.update.checksum and back.rollbacks == 1
