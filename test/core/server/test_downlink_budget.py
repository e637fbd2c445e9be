"""The per-robot downlink budget (issue #10): the server picks gamma and the encoding before
each phase so that what it ships stays within ``downlink_budget_kbps``, measured on the wire."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.server.downlink_budget import (
    LADDER,
    PRIOR_BYTES_PER_SELECTED,
    DownlinkBudget,
    DownlinkBudgetConfig,
)
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.teachers import build_teacher
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.session import RobotSession, SessionConfig
from ams_ros.core.sources.synthetic import world_from_spec
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.wire.encodings import ENCODINGS
from ams_ros.core.wire.update import encoded_size


def test_every_encoding_has_a_prior_size_and_the_ladder_gets_cheaper():
    assert set(PRIOR_BYTES_PER_SELECTED) == set(ENCODINGS)
    sizes = [PRIOR_BYTES_PER_SELECTED[e] for e in LADDER]
    assert sizes == sorted(sizes, reverse=True)


def test_a_generous_budget_keeps_the_configured_gamma_and_encoding():
    b = DownlinkBudget(DownlinkBudgetConfig(downlink_budget_kbps=10_000), period_s=10.0)
    plan = b.plan(10.0, 2_000_000, 0.05, "paper_gzip_fp16")
    assert (plan.gamma, plan.encoding, plan.over_budget) == (0.05, "paper_gzip_fp16", False)


def test_a_tighter_budget_walks_down_the_encodings_before_it_cuts_gamma():
    n, period = 2_000_000, 10.0
    # 100 Kbps x 10 s = 125 kB: the paper's 2.32 B x 100k does not fit, q4 (0.89 B) does
    b = DownlinkBudget(DownlinkBudgetConfig(downlink_budget_kbps=100), period_s=period)
    plan = b.plan(10.0, n, 0.05, "paper_gzip_fp16")
    assert plan.gamma == 0.05 and plan.encoding == "residual_zstd_q4"
    # 20 Kbps: 25 kB, not even ternary at 5 %: ternary at the gamma the bytes allow
    b = DownlinkBudget(DownlinkBudgetConfig(downlink_budget_kbps=20), period_s=period)
    plan = b.plan(10.0, n, 0.05, "paper_gzip_fp16")
    assert plan.encoding == "residual_zstd_ternary" and 0.002 < plan.gamma < 0.05 and not plan.over_budget
    assert plan.planned_bytes <= 25_000 + 1


def test_an_update_larger_than_planned_makes_the_next_one_smaller():
    b = DownlinkBudget(DownlinkBudgetConfig(downlink_budget_kbps=20), period_s=10.0)
    first = b.plan(10.0, 1_000_000, 0.05, "residual_zstd_ternary")
    assert first.gamma < 0.05
    b.shipped(first.encoding, int(first.gamma * 1_000_000), 3 * first.planned_bytes)  # 3x the estimate
    second = b.plan(20.0, 1_000_000, 0.05, "residual_zstd_ternary")
    assert second.gamma < first.gamma
    assert b.bytes_per_selected["residual_zstd_ternary"] > PRIOR_BYTES_PER_SELECTED["residual_zstd_ternary"]


def test_budget_settings_out_of_range_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="downlink_budget_kbps=-1"):
        DownlinkBudgetConfig(downlink_budget_kbps=-1)
    with pytest.raises(ValueError, match="min_gamma=0"):
        DownlinkBudgetConfig(min_gamma=0)


@pytest.mark.parametrize("budget_kbps", [20.0, 60.0])
def test_the_budget_holds_on_the_synthetic_world_and_the_edge_follows_the_chain(budget_kbps, one_torch_thread):
    """Phases every 10 s of stream time on the synthetic world with a budget far below what the
    configured gamma (10 %) and the paper's encoding would send: the bytes shipped after the
    start-up snapshot, over the stream time, stay within the budget; every update applies on
    the edge, whose model ends bit-identical to the server's."""
    size = (64, 32)
    world = world_from_spec("synthetic:0?shifts=40", width=size[0], height=size[1])
    teacher = build_teacher("oracle:0?shifts=40")
    torch.manual_seed(0)
    student = load_student("deeplabv3_mobilenet_v2", num_classes=len(get_label_space("synthetic").class_names))
    cfg = SessionConfig(trainer=TrainerConfig(iterations=2, batch_size=4, gamma=0.1, lr=1e-3, input_size=size,
                                              horizon_s=60.0, update_period_s=10.0),
                        update_encoding="paper_gzip_fp16",
                        downlink=DownlinkBudgetConfig(downlink_budget_kbps=budget_kbps))
    session = RobotSession("r", copy.deepcopy(student), cfg)
    edge = DoubleBufferedModel(copy.deepcopy(student))
    snap = session.snapshot()
    edge.apply_update(snap)
    session.budget.tokens += encoded_size(snap)  # the start-up snapshot is the price of joining, not a phase
    session.budget.spent_bytes -= encoded_size(snap)
    shipped, encodings, gammas = 0, set(), []
    for t in range(0, 120):
        rgb, _ = world.frame_at(float(t))
        session.add_labeled(float(t), rgb, teacher.label([rgb], stamps=[float(t)])[0])
        if t % 10 == 9:
            out = session.run_phase(float(t))
            edge.apply_update(out.update)
            shipped += encoded_size(out.update)
            encodings.add(out.update.encoding)
            gammas.append(out.plan.gamma)
    assert edge.version == 12
    assert np.array_equal(np.concatenate([p.detach().numpy().ravel() for p in edge.active.parameters()]),
                          np.concatenate([p.detach().numpy().ravel() for p in session.model.parameters()]))
    kbps = shipped * 8 / 1000 / 120.0  # 12 periods of 10 s
    assert kbps <= budget_kbps, (kbps, budget_kbps, encodings, gammas)
    assert kbps >= 0.5 * budget_kbps  # and it is spent, not left unused
    assert encodings <= set(LADDER) and max(gammas) < 0.1  # the paper's encoding at 10 % never fit
    assert session.trainer.config.gamma == 0.1  # the configured gamma stays the ceiling
