"""The local backend's labelling path (issue #29): the test-only one-class teacher fault turns every
label of a batch into one class, which the label checks then refuse after varied batches; a backend
whose teachers run elsewhere (the pool) refuses the fault naming why."""

from __future__ import annotations

import copy

import pytest
import torch

from ams_ros.core.fleet.backend import Backend, LocalBackend
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.session import SessionConfig
from ams_ros.core.server.trainer_config import TrainerConfig

from pool_helpers import W, H, batch, teacher_spec


@pytest.fixture()
def backend() -> LocalBackend:
    torch.manual_seed(0)
    student = load_student("deeplabv3_mobilenet_v2", len(get_label_space("synthetic").class_names))
    config = SessionConfig(trainer=TrainerConfig(input_size=(W, H), iterations=1, batch_size=2, horizon_s=60.0))
    b = LocalBackend.build(["robot1"], student, lambda: copy.deepcopy(config), None, torch.device("cpu"),
                           lambda level, text: None, lambda: False)
    b.set_teachers(teacher_spec(("robot1",)), torch.device("cpu"))
    return b


def test_a_one_class_teacher_fault_makes_batches_the_label_checks_refuse_and_off_again_they_are_kept(backend):
    session = backend.sessions["robot1"]
    assert backend.label("robot1", *batch(0, 0.0)) == 3  # the oracle's varied labels: kept
    backend.set_teacher_fault(0)
    assert backend.label("robot1", *batch(0, 1.0)) == 0
    assert session.refused_batches == 1 and "one class after varied batches" in session.last_refusal
    backend.set_teacher_fault(-1)
    assert backend.label("robot1", *batch(0, 2.0)) == 3 and session.refused_batches == 1


def test_a_backend_whose_teachers_run_elsewhere_refuses_the_fault_and_accepts_off():
    Backend.set_teacher_fault(object(), -1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fault_teacher_one_class 2: test-only fault injection works with the local "
                                         "backend only"):
        Backend.set_teacher_fault(object(), 2)  # type: ignore[arg-type]
