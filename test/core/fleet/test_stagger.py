"""ams_ros.core.fleet.stagger: robots' batches spread over the update period (issue #31)."""

from __future__ import annotations

import numpy as np
import pytest

from ams_ros.core.fleet.stagger import StaggerConfig, slot_fraction, stagger_offset, stagger_shift


def test_stagger_offsets_spread_robots_over_the_period_and_leave_robot_0_whole():
    assert stagger_offset(0, 10.0) is None
    offsets = [stagger_offset(j, 10.0) for j in range(1, 8)]
    assert all(0.0 < o < 10.0 for o in offsets)
    assert offsets[0] == pytest.approx(6.18, abs=0.01) and offsets[1] == pytest.approx(2.36, abs=0.01)
    for n in (2, 4, 8):  # the first n robots' batch times: no two closer than a fifth of the even spacing
        times = sorted([0.0] + [stagger_offset(j, 10.0) for j in range(1, n)])
        gaps = np.diff(times + [10.0])
        assert gaps.min() > 0.2 * 10.0 / n, (n, times)


def test_stagger_shift_moves_a_robot_into_its_slot_the_shorter_way_round():
    # reference robot 0 arrives at 100 s; robot 1's slot is 6.18 s after it
    assert stagger_shift(1, 100.0, 0, 100.0, 10.0) == pytest.approx(slot_fraction(1) * 10.0 - 10.0)  # -3.82: earlier
    assert stagger_shift(2, 100.0, 0, 100.0, 10.0) == pytest.approx(2.36, abs=0.01)  # later
    assert stagger_shift(1, 106.0, 0, 100.0, 10.0) == 0.0  # within 10 % of its slot: left alone
    assert stagger_shift(1, 106.0, 0, 100.0, 10.0, tolerance=0.0) == pytest.approx(0.18, abs=0.01)
    # relative to any reference robot, on any clock: robot 3 against robot 2
    shift = stagger_shift(3, 55.0, 2, 50.0, 10.0)
    assert (55.0 + shift - 50.0) % 10.0 == pytest.approx(((slot_fraction(3) - slot_fraction(2)) * 10.0) % 10.0)
    assert -5.0 < shift <= 5.0
    with pytest.raises(ValueError, match="period_s"):
        stagger_shift(1, 0.0, 0, 0.0, 0.0)


def test_stagger_config_names_a_bad_tolerance():
    with pytest.raises(ValueError, match="stagger_tolerance must be in"):
        StaggerConfig(tolerance=0.7)


def test_batch_stagger_picks_the_first_streaming_robot_as_reference_and_waits_two_batches_after_a_shift():
    from ams_ros.core.fleet.stagger import Arrival, BatchStagger

    robots = ["r1", "r2", "r3"]
    s = BatchStagger()
    arrivals = {"r1": Arrival(100.0, 10.0, 1), "r2": Arrival(100.2, 10.0, 1)}
    assert s.shift("r1", robots, arrivals, 0.1) == (0.0, None)  # the reference is never moved
    shift, ref = s.shift("r2", robots, arrivals, 0.1)
    assert ref == "r1" and shift == pytest.approx(slot_fraction(1) * 10.0 - 10.0 - 0.2)
    arrivals["r2"] = Arrival(106.4, 10.0, 2)  # the batch that was already on its way
    assert s.shift("r2", robots, arrivals, 0.1) == (0.0, None)
    arrivals["r2"] = Arrival(116.1, 10.0, 3)  # the shifted one, in its slot
    assert s.shift("r2", robots, arrivals, 0.1) == (0.0, "r1")
    # r1 stopped streaming (its last batch three periods old): r2 is its own reference now
    arrivals["r2"] = Arrival(131.0, 10.0, 4)
    assert s.shift("r2", robots, arrivals, 0.1) == (0.0, None)
    # a robot on another period is not placed against the reference
    assert s.shift("r3", robots, {"r1": Arrival(100.0, 10.0, 1), "r3": Arrival(100.1, 20.0, 1)}, 0.1) == (0.0, None)
