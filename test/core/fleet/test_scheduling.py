"""Tests of the GPU scheduler shared by robots (issue #16): policies, starvation bound, shares.

Everything runs on a modelled clock (no threads, no sleeping), so the starvation bound is
checked deterministically.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ams_ros.core.models.samples import BufferEntry
from ams_ros.core.fleet.scheduling import (
    POLICIES,
    ROUND_ROBIN,
    UTILITY,
    UTILITY_AGING,
    GpuScheduler,
    SchedulerConfig,
    student_error,
)


def simulate(policy: str, errors: dict[str, float], phase_s: float = 1.0, period_s: float = 2.0,
             duration_s: float = 200.0, max_wait_periods: float = 3.0,
             drift: dict[str, float] | None = None) -> GpuScheduler:
    """All robots always ready (a saturated GPU); each phase takes ``phase_s``. A robot's error
    falls by half in a phase and rises by ``drift[dev]`` per second of scene change."""
    devs = list(errors)
    sched = GpuScheduler(devs, SchedulerConfig(policy=policy, max_wait_periods=max_wait_periods,
                                               share_window_s=50.0), period_s=period_s)
    err = dict(errors)
    drift = drift or {d: 0.0 for d in devs}
    now = 0.0
    for d in devs:
        sched.observe_error(d, now, err[d])
    while now < duration_s:
        dev = sched.pick(devs, now)
        sched.start_phase(dev, now)
        sched.end_phase(dev, now, now + phase_s)
        err[dev] *= 0.5
        now += phase_s
        for d in devs:
            err[d] = min(1.0, err[d] + drift[d] * phase_s)
            sched.observe_error(d, now, err[d])
    return sched


def test_round_robin_trains_ready_robots_in_turn_longest_waiting_first() -> None:
    sched = GpuScheduler(["a", "b", "c"], SchedulerConfig(policy=ROUND_ROBIN))
    order = []
    for step in range(6):
        dev = sched.pick(["a", "b", "c"], float(step))
        sched.start_phase(dev, float(step))
        sched.end_phase(dev, float(step), step + 0.5)
        order.append(dev)
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_utility_gives_the_changing_scene_more_phases_than_the_static_one() -> None:
    errors = {"static": 0.3, "moving": 0.3}
    drift = {"static": 0.0, "moving": 0.05}
    rr = simulate(ROUND_ROBIN, errors, drift=drift, max_wait_periods=50)
    ut = simulate(UTILITY, errors, drift=drift, max_wait_periods=50)
    assert abs(rr.phases("static") - rr.phases("moving")) <= 1
    assert ut.phases("moving") > 2 * ut.phases("static")
    assert ut.share("moving", 200.0) > ut.share("static", 200.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_no_robot_waits_longer_than_the_stated_bound_even_with_zero_utility(policy: str) -> None:
    # nine robots whose scene keeps changing and one whose error is already zero and never moves
    errors = {f"r{i}": 0.5 for i in range(9)} | {"static": 0.0}
    drift = {f"r{i}": 0.2 for i in range(9)} | {"static": 0.0}
    phase_s, period_s = 1.0, 2.0
    sched = simulate(policy, errors, phase_s=phase_s, period_s=period_s, drift=drift, duration_s=400.0)
    bound = sched.wait_bound_s(phase_s)
    assert bound == pytest.approx(3.0 * period_s + 10 * phase_s)
    assert sched.phases("static") >= 400.0 / bound - 1
    for dev in errors:
        assert sched.max_wait_seen(dev) <= bound, dev


def test_overdue_robot_goes_before_a_higher_utility_one() -> None:
    sched = GpuScheduler(["hot", "cold"], SchedulerConfig(policy=UTILITY, max_wait_periods=1.0), period_s=5.0)
    sched.observe_error("hot", 0.0, 0.9)
    sched.observe_error("cold", 0.0, 0.0)
    assert sched.pick(["hot", "cold"], 0.0) == "hot"
    sched.start_phase("hot", 0.0)
    sched.end_phase("hot", 0.0, 1.0)
    sched.observe_error("hot", 1.0, 0.5)  # the phase bought 0.4
    sched.observe_error("hot", 2.0, 0.9)  # and the scene changed again
    assert sched.pick(["hot", "cold"], 4.0) == "hot"  # cold waited 4 s < 5 s
    sched.start_phase("hot", 4.0)
    sched.end_phase("hot", 4.0, 5.0)
    sched.observe_error("hot", 5.0, 0.5)
    sched.observe_error("hot", 5.0, 0.9)
    assert sched.utility("hot", 5.0) > sched.utility("cold", 5.0)
    assert sched.pick(["hot", "cold"], 5.0) == "cold"  # cold waited 5 s: overdue


def test_aging_raises_a_waiting_robots_utility_with_its_wait() -> None:
    sched = GpuScheduler(["a"], SchedulerConfig(policy=UTILITY_AGING, max_wait_periods=100), period_s=2.0)
    sched.observe_error("a", 0.0, 0.2)
    sched.note_ready(["a"], 0.0)
    assert sched.utility("a", 4.0) == pytest.approx(3.0 * sched.utility("a", 0.0))


def test_predicted_gain_comes_from_drift_since_the_last_phase_and_past_drops() -> None:
    sched = GpuScheduler(["a"], SchedulerConfig(policy=UTILITY))
    sched.observe_error("a", 0.0, 0.4)
    sched.start_phase("a", 0.0)
    sched.end_phase("a", 0.0, 1.0)
    sched.observe_error("a", 1.0, 0.25)  # first sample after the phase: the phase bought 0.15
    assert sched.predicted_gain("a") == pytest.approx(0.15)
    sched.observe_error("a", 2.0, 0.45)  # the scene changed: mean error now 0.35, drift 0.10
    assert sched.predicted_gain("a") == pytest.approx(0.10 + 0.15)


def test_share_is_gpu_time_over_the_sliding_window_and_counts_labelling() -> None:
    sched = GpuScheduler(["a", "b"], SchedulerConfig(share_window_s=10.0))
    sched.record("a", "label", 0.0, 2.0)
    sched.end_phase("a", 2.0, 5.0)
    sched.end_phase("b", 5.0, 6.0)
    assert sched.share("a", 10.0) == pytest.approx(0.5)
    assert sched.share("b", 10.0) == pytest.approx(0.1)
    assert sched.busy_s("a", 10.0, "label") == pytest.approx(2.0)
    assert sched.share("a", 13.0) == pytest.approx(0.2)  # window [3, 13]: 2 s of the phase left
    assert sched.share("a", 30.0) == 0.0


def test_unknown_policy_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="round_robin, utility, utility_aging"):
        SchedulerConfig(policy="fifo")
    sched = GpuScheduler(["a"])
    with pytest.raises(ValueError, match="scheduler_policy='lottery'"):
        sched.set_policy("lottery")
    assert sched.policy == ROUND_ROBIN
    with pytest.raises(ValueError, match="kind"):
        sched.record("a", "decode", 0.0, 1.0)


def test_student_error_is_one_minus_miou_against_the_teacher_labels() -> None:
    class Const(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.0, 1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # always predicts class 1
            return self.w.view(1, 2, 1, 1).expand(x.shape[0], 2, x.shape[2], x.shape[3])

    frame = np.zeros((4, 4, 3), np.uint8)
    all_one = BufferEntry(0.0, frame, np.ones((4, 4), np.uint8))
    half = np.ones((4, 4), np.uint8)
    half[:, :2] = 0
    assert student_error(Const(), [all_one]) == pytest.approx(0.0)
    # class 1: IoU 8/16, class 0: IoU 0 -> mIoU 0.25
    assert student_error(Const(), [BufferEntry(0.0, frame, half)]) == pytest.approx(0.75)
    assert np.isnan(student_error(Const(), []))
