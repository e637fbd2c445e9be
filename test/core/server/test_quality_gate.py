"""The base station's gate on each phase (issue #29): the newest frames are held out of training and
judge the phase; a phase worse than the running model by more than the margin is undone and not
shipped (no version used), a sound one ships with both scores; no gate while the horizon is short."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.pretraining import distill
from ams_ros.core.models.samples import BufferEntry
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.quality_gate import GateConfig, held_out, scene_changed, score, verdict
from ams_ros.core.server.session import RobotSession, SessionConfig
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.sources.synthetic import world_from_spec

SIZE = (48, 24)


def _entries(n: int) -> list[BufferEntry]:
    return [BufferEntry(float(t), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8)) for t in range(n)]


def test_the_newest_frames_are_held_out_once_the_horizon_holds_twice_as_many():
    cfg = GateConfig(gate_frames=3)
    assert held_out(_entries(5), cfg) == ([], None)  # the first periods: no gate, train on everything
    held, upto = held_out(_entries(8), cfg)
    assert [e.t for e in held] == [5.0, 6.0, 7.0] and upto == 4.0
    assert held_out(_entries(8), GateConfig(gate_frames=0)) == ([], None)


class Constant(torch.nn.Module):
    """Predicts class ``c`` everywhere (3 classes)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(3))
        self.c = c

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, self.c] = 1.0
        return out + self.bias.view(1, 3, 1, 1)


def test_score_is_the_miou_in_points_against_the_teacher_labels():
    label = np.zeros((2, 4), np.uint8)
    label[:, 2:] = 1  # half class 0, half class 1
    label[0, 0] = 255  # ignored
    entries = [BufferEntry(0.0, np.zeros((2, 4, 3), np.uint8), label)]
    assert score(Constant(0), entries) == pytest.approx(100 * (3 / 7 + 0) / 2)  # class 0: 3 of 3+4; class 1: 0
    assert np.isnan(score(Constant(0), [BufferEntry(0.0, np.zeros((2, 4, 3), np.uint8), np.full((2, 4), 255, np.uint8))]))


def test_the_verdict_names_both_scores_and_the_margin_and_never_discards_on_nan():
    cfg = GateConfig(gate_frames=4, gate_margin=2.0)
    assert verdict(50.0, 48.5, cfg) == "" and verdict(50.0, 60.0, cfg) == ""
    assert verdict(50.0, 47.0, cfg) == ("mIoU 47.0 on the 4 newest frames held out, against the running model's 50.0 "
                                        "(gate_margin 2 points)")
    assert verdict(float("nan"), 0.0, cfg) == "" and verdict(50.0, float("nan"), cfg) == ""


def test_a_scene_change_is_a_drop_of_the_running_models_score_past_gate_scene_drop_never_on_nan_or_at_0():
    cfg = GateConfig(gate_frames=4, gate_scene_drop=10.0)
    assert scene_changed(50.0, 41.0, cfg) == "" and scene_changed(50.0, 70.0, cfg) == ""
    assert scene_changed(50.0, 39.0, cfg) == ("a scene change: the running model scores 39.0 on the 4 newest frames, "
                                              "against 50.0 on the previous phase's (gate_scene_drop 10 points)")
    assert scene_changed(float("nan"), 0.0, cfg) == "" and scene_changed(50.0, float("nan"), cfg) == ""
    assert scene_changed(50.0, 0.0, GateConfig(gate_frames=4, gate_scene_drop=0.0)) == ""


def test_bad_gate_settings_name_the_value():
    with pytest.raises(ValueError, match="gate_frames must be >= 0"):
        GateConfig(gate_frames=-1)
    with pytest.raises(ValueError, match="gate_margin is in mIoU points: 0 to 100, got 150"):
        GateConfig(gate_margin=150)
    with pytest.raises(ValueError, match=r"gate_scene_drop is in mIoU points: 0 to 100 \(0 = judge every phase\), got -1"):
        GateConfig(gate_scene_drop=-1)


@pytest.fixture(scope="module")
def taught():
    """A student that has learned the synthetic world a little (the running model must be worth keeping)."""
    world = world_from_spec("synthetic:1", width=SIZE[0], height=SIZE[1])
    torch.manual_seed(1)
    student = load_student("deeplabv3_mobilenet_v2", len(get_label_space("synthetic").class_names), weights=None)
    distill(student, [world.frame_at(float(t)) for t in np.arange(0, 40, 0.5)], steps=80, batch_size=8, lr=2e-3)
    return student.eval(), world


def _session(student, lr: float) -> RobotSession:
    return RobotSession("r", copy.deepcopy(student), SessionConfig(
        trainer=TrainerConfig(iterations=3, batch_size=2, gamma=0.05, lr=lr, input_size=SIZE, horizon_s=60.0,
                              update_period_s=5.0), gate=GateConfig(gate_frames=3, gate_margin=2.0)))


def _flat(model) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def test_a_poisoned_phase_is_undone_and_not_shipped_and_a_sound_one_ships_with_its_scores(taught):
    student, world = taught
    session = _session(student, lr=1.0)  # finite but useless weights: what a runaway learning rate gives
    drawn: list[float] = []
    sampler = session.trainer._batch_sampler
    session.trainer._batch_sampler = lambda buf, now, bs, rng: [e for e in sampler(buf, now, bs, rng)
                                                                if drawn.append(e.t) or True]
    for t in range(10):
        session.add_labeled(float(t), *world.frame_at(float(t)))
    before, m_before = _flat(session.model), session.trainer.m.clone()
    assert session.run_phase(9.0) is None  # discarded
    assert session.discarded_phases == 1 and session.version == 0 and not session.ready()
    assert session.last_discard.startswith("phase 1 discarded: mIoU ") and "gate_margin 2 points" in session.last_discard
    assert np.array_equal(_flat(session.model), before) and torch.equal(session.trainer.m, m_before)
    assert drawn and max(drawn) <= 6.0  # frames 7, 8, 9 held out: never trained on

    session.trainer.config.lr = 2e-3
    for t in range(10, 15):
        session.add_labeled(float(t), *world.frame_at(float(t)))
    out = session.run_phase(14.0)
    assert out is not None and (out.update.base_version, out.update.new_version) == (0, 1)
    running, candidate = out.gate_scores
    assert candidate >= running - 2.0 and running > 20.0, out.gate_scores
    assert out.result.now == 11.0  # trained on frames up to the held-out three
    assert session.discarded_phases == 1


@pytest.mark.parametrize("scene_drop", [10.0, 0.0])
def test_a_phase_whose_frames_are_a_new_scene_ships_unjudged_unless_gate_scene_drop_is_0(taught, scene_drop):
    """The running model scores its own scene's held-out frames well and a new scene's badly: that drop,
    with the same weights, is the scene changing, and the phase after it is not judged on frames it has
    barely trained on. (Poisoned here so that a judged phase is certainly discarded.)"""
    student, world = taught
    other = world_from_spec("synthetic:1?shifts=10", width=SIZE[0], height=SIZE[1])  # its scene shifts at 10 s
    session = RobotSession("r", copy.deepcopy(student), SessionConfig(
        trainer=TrainerConfig(iterations=3, batch_size=2, gamma=0.05, lr=2e-3, input_size=SIZE, horizon_s=60.0,
                              update_period_s=5.0), gate=GateConfig(gate_frames=3, gate_margin=2.0,
                                                                    gate_scene_drop=scene_drop)))
    for t in range(10):
        session.add_labeled(float(t), *world.frame_at(float(t)))
    first = session.run_phase(9.0)
    assert first is not None and session.unjudged_phases == 0  # no previous held-out frames: judged
    session.trainer.config.lr = 1.0
    for t in range(10, 15):
        session.add_labeled(float(t), *other.frame_at(float(t)))
    assert score(session.model, session._previous_held) > score(session.model, session.trainer.buffer.window(
        14.0, 60.0)[-3:]) + 10.0  # the new scene: the same weights score far lower on it
    out = session.run_phase(14.0)
    if scene_drop:
        assert out is not None and out.update.new_version == 2 and session.discarded_phases == 0
        assert session.unjudged_phases == 1 and session.last_unjudged.startswith(
            "phase 2 shipped unjudged: a scene change: the running model scores ")
    else:
        assert out is None and session.discarded_phases == 1 and session.unjudged_phases == 0


def test_without_a_gate_every_phase_ships(taught):
    student, world = taught
    session = RobotSession("r", copy.deepcopy(student), SessionConfig(
        trainer=TrainerConfig(iterations=3, batch_size=2, gamma=0.05, lr=1.0, input_size=SIZE, horizon_s=60.0,
                              update_period_s=5.0)))
    assert not session.config.gate.enabled  # off unless gate_frames is set
    for t in range(10):
        session.add_labeled(float(t), *world.frame_at(float(t)))
    out = session.run_phase(9.0)
    assert out is not None and out.gate_scores is None and out.result.now == 9.0


def _drifted_session(student, drift_phases: int) -> RobotSession:
    """A session started from ``student`` whose running model has since drifted far below it (its
    weights scrambled), with phases small enough to pass the gate without climbing back."""
    session = RobotSession("r", copy.deepcopy(student), SessionConfig(
        trainer=TrainerConfig(iterations=1, batch_size=2, gamma=0.01, lr=1e-5, input_size=SIZE, horizon_s=60.0,
                              update_period_s=5.0),
        gate=GateConfig(gate_frames=3, gate_margin=2.0, drift_phases=drift_phases)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in session.model.parameters():
            p.add_(torch.randn_like(p) * p.abs().mean().clamp_min(1e-3) * 3)
    return session


def test_phases_that_leave_the_robot_below_its_starting_weights_send_it_back_to_them(taught):
    student, world = taught
    session = _drifted_session(student, drift_phases=2)
    t = 0
    outcomes = []
    for _ in range(2):
        for _ in range(8):
            session.add_labeled(float(t), *world.frame_at(float(t)))
            t += 1
        outcomes.append(session.run_phase(float(t - 1)))
    first, second = outcomes
    assert first is not None and first.reset == "" and first.update.new_version == 1  # one phase below: shipped
    assert second is not None and second.reset.startswith(
        "2 phases in a row more than 2 points below the starting weights (now mIoU ")
    assert "rolled back to the starting weights as v2" in second.reset
    assert (second.update.base_version, second.update.new_version) == (1, 2) and session.version == 2
    # the robot is back where it started (as the catch-up carries it: the snapshot encoding's float16)
    assert np.array_equal(_flat(session.model), _flat(student).astype(np.float16).astype(np.float32))
    assert session.rollbacks == 1 and session.drift_streak == 0


def test_with_drift_phases_0_a_robot_below_its_starting_weights_stays_on_its_chain(taught):
    student, world = taught
    session = _drifted_session(student, drift_phases=0)
    for k in range(3):
        for t in range(8 * k, 8 * k + 8):
            session.add_labeled(float(t), *world.frame_at(float(t)))
        out = session.run_phase(float(8 * k + 7))
        assert out is not None and out.reset == ""
    assert session.version == 3 and session.rollbacks == 0
