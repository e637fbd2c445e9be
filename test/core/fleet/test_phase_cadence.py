"""phase_overhead_s: the lane's time per phase outside training, from when phases' statuses arrive."""

from __future__ import annotations

import numpy as np
import pytest

from ams_ros.core.fleet.phase_cadence import phase_overhead_s


def _lane(phases: list[float], overhead: float, idle: list[float]) -> list[tuple[float, float]]:
    """Statuses of phases run one after another, each followed by ``overhead``, with ``idle`` waits."""
    t, out = 0.0, []
    for s, wait in zip(phases, idle):
        t += wait + s + overhead
        out.append((t, s))
    return out


def test_back_to_back_phases_give_the_overhead_and_idle_gaps_do_not_count():
    rng = np.random.default_rng(0)
    phases = list(rng.uniform(2.0, 3.0, 60))
    idle = [0.0 if i % 3 else float(rng.uniform(1.0, 6.0)) for i in range(60)]  # 3 robots per period
    events = _lane(phases, 0.4, idle)
    rng.shuffle(events)  # robots' statuses interleave in any order: they are sorted by arrival
    assert phase_overhead_s(events) == pytest.approx(0.4, abs=1e-9)


def test_too_few_phases_give_none_and_a_negative_gap_is_clipped_to_zero():
    assert phase_overhead_s([(1.0, 1.0), (2.0, 1.0)]) is None
    # statuses arriving closer together than the phase took (jitter): never a negative overhead
    assert phase_overhead_s([(float(i), 2.0) for i in range(10)]) == 0.0
