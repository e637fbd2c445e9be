"""A robot's fair share of the GPU as a sampling-rate ceiling (issue #31, ams_ros/core/fleet/rate_share.py)."""

from __future__ import annotations

import pytest

from ams_ros.core.fleet.rate_share import fair_share_rate


def test_fair_share_rate_fits_n_robots_labelling_and_one_phase_each_into_a_period() -> None:
    # the paper's costs: 0.25 s a frame, a 2 s phase, T = 10 s
    r = fair_share_rate(3, 10.0, 0.25, 0.0, 2.0, 0.1, 1.0)
    assert r == pytest.approx((10.0 / 3 - 2.0) / (10.0 * 0.25))  # 0.53 frames/s
    assert 3 * (r * 10.0 * 0.25 + 2.0) == pytest.approx(10.0)  # exactly one GPU
    # a fixed cost per teacher call leaves less for frames
    assert fair_share_rate(3, 10.0, 0.05, 0.2, 2.0, 0.1, 1.0) == pytest.approx(1.0)
    assert fair_share_rate(4, 10.0, 0.05, 0.2, 2.0, 0.1, 1.0) == pytest.approx((2.5 - 2.2) / 0.5)


def test_alone_a_robot_keeps_r_max_and_where_training_alone_outgrows_the_gpu_r_min() -> None:
    assert fair_share_rate(1, 10.0, 0.25, 0.0, 2.0, 0.1, 1.0) == 1.0
    assert fair_share_rate(9, 10.0, 0.25, 0.0, 2.0, 0.1, 1.0) == 0.1  # 9 x 2 s of training > 10 s
    assert fair_share_rate(9, 10.0, 0.0, 0.0, 2.0, 0.1, 1.0) == 0.1  # free labelling, but no room for the phases
    assert fair_share_rate(4, 10.0, 0.0, 0.0, 2.0, 0.1, 1.0) == 1.0


def test_fair_share_rate_names_impossible_settings() -> None:
    with pytest.raises(ValueError, match="robots must be >= 1 and period_s > 0, got robots=0"):
        fair_share_rate(0, 10.0, 0.25, 0.0, 2.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="need 0 < r_min <= r_max, got r_min=2.0, r_max=1.0"):
        fair_share_rate(2, 10.0, 0.25, 0.0, 2.0, 2.0, 1.0)
