"""issue #13: a server stopped in the middle of a training phase waits for one iteration, not
the whole phase, and keeps nothing of the half-trained phase (weights, Adam state, phase count,
version), so what a persisted session saves at shutdown is the last shipped version."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.session import RobotSession, SessionConfig
from ams_ros.core.sources.synthetic import world_from_spec
from ams_ros.core.server.trainer_config import TrainerConfig


def test_a_stop_request_mid_phase_rolls_the_phase_back_and_ships_nothing():
    size = (48, 24)
    world = world_from_spec("synthetic:1", width=size[0], height=size[1])
    torch.manual_seed(1)
    student = load_student("deeplabv3_mobilenet_v2", num_classes=len(get_label_space("synthetic").class_names),
                           weights=None)
    cfg = SessionConfig(trainer=TrainerConfig(iterations=50, batch_size=2, gamma=0.05, input_size=size,
                                              horizon_s=60.0, update_period_s=5.0))
    session = RobotSession("r", copy.deepcopy(student), cfg)
    for t in range(5):
        rgb, lab = world.frame_at(float(t))
        session.add_labeled(float(t), rgb, lab)
    polls = {"n": 0}

    def stop_after_three() -> bool:
        polls["n"] += 1
        return polls["n"] > 3

    session.trainer.stop_requested = stop_after_three
    before = np.concatenate([p.detach().numpy().ravel() for p in session.model.parameters()])
    m_before = session.trainer.m.clone()
    assert session.run_phase(4.0) is None
    assert polls["n"] == 4  # three iterations ran, the fourth was never started
    after = np.concatenate([p.detach().numpy().ravel() for p in session.model.parameters()])
    assert np.array_equal(after, before)
    assert torch.equal(session.trainer.m, m_before) and session.trainer.step == 0
    assert session.version == 0 and session.trainer.phase == 0 and not session.model.training

    session.trainer.stop_requested = lambda: False
    out = session.run_phase(4.0)
    assert out is not None and out.update.new_version == 1 and out.result.phase == 1
