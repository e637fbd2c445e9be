"""The robot's check of each new model on its first frames (issue #29): collapse to one class where the
previous model was varied, or a jump of inference time, says step back; nothing else does."""

from __future__ import annotations

import numpy as np
import pytest

from ams_ros.core.edge.swap_watch import SwapWatch, SwapWatchConfig, dominant_share

VARIED = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4  # four classes, a quarter each
ONE = np.full((8, 8), 2, np.uint8)


def run(watch: SwapWatch, version: int, labels: np.ndarray, frames: int, ms: float = 10.0) -> list[str]:
    return [watch.observe(version, labels, ms) for _ in range(frames)]


def test_dominant_share_leaves_out_ignored_pixels():
    assert dominant_share(VARIED) == 0.25
    assert dominant_share(ONE) == 1.0
    labels = ONE.copy()
    labels[:4] = 255
    assert dominant_share(labels) == 1.0 and dominant_share(np.full((2, 2), 255, np.uint8)) == 0.0


def test_a_model_that_collapses_after_the_swap_is_stepped_back_from():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=3))
    assert run(watch, 0, VARIED, 10) == [""] * 10
    verdicts = run(watch, 1, ONE, 3)
    assert verdicts[:2] == ["", ""]
    assert "v1 labels 100.0% of the pixels with one class on 3 frames in a row" in verdicts[2]
    assert "previous model's median was 25.0%" in verdicts[2]


def test_a_scene_that_is_one_class_for_both_models_is_no_collapse():
    watch = SwapWatch()
    run(watch, 0, ONE, 10)
    assert run(watch, 1, ONE, 12) == [""] * 12


def test_a_collapse_on_a_frame_the_previous_model_also_sees_as_one_class_is_the_scene():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=3))
    run(watch, 0, VARIED, 10)  # varied before the swap, then the robot faces a wall
    asked: list[int] = []

    def previous(labels):
        return lambda: asked.append(1) or labels

    assert [watch.observe(1, ONE, 10.0, previous(ONE)) for _ in range(5)] == [""] * 5
    assert len(asked) == 1 and watch.scene_confirmations == 1  # asked on the 3rd frame in a row only; run restarts
    verdict = watch.observe(1, ONE, 10.0, previous(VARIED))  # the 3rd in a row again; the previous model: varied
    assert len(asked) == 2 and "v1 labels 100.0% of the pixels with one class on 3 frames" in verdict


def test_a_collapse_stands_when_the_previous_weights_cannot_run():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=2))
    run(watch, 0, VARIED, 10)
    assert [watch.observe(1, ONE, 10.0, lambda: None) for _ in range(2)][1].startswith("v1 labels 100.0%")


def test_collapsed_frames_must_come_in_a_row():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=3, swap_watch_frames=10))
    run(watch, 0, VARIED, 10)
    frames = [ONE, ONE, VARIED, ONE, ONE, VARIED, ONE, VARIED, ONE, ONE]
    assert [watch.observe(1, f, 10.0) for f in frames] == [""] * 10


def test_only_the_first_frames_after_a_swap_are_checked():
    watch = SwapWatch(SwapWatchConfig(swap_watch_frames=5, collapse_frames=3))
    run(watch, 0, VARIED, 10)
    assert run(watch, 1, VARIED, 5) == [""] * 5
    assert run(watch, 1, ONE, 5) == [""] * 5  # past the checked frames: the scene may change


def test_the_first_model_and_a_disabled_watch_are_never_stepped_back_from():
    assert run(SwapWatch(), 0, ONE, 10) == [""] * 10  # nothing to go back to
    off = SwapWatch(SwapWatchConfig(swap_watch_frames=0))
    run(off, 0, VARIED, 10)
    assert run(off, 1, ONE, 10) == [""] * 10


def test_a_jump_of_inference_time_is_stepped_back_from():
    watch = SwapWatch(SwapWatchConfig(latency_jump=4.0))
    run(watch, 0, VARIED, 10, ms=10.0)
    verdicts = run(watch, 1, VARIED, 5, ms=50.0)
    assert verdicts[:4] == [""] * 4 and "v1 infers in 50 ms (median of 5 frames) where the previous model took 10 ms" \
        in verdicts[4]
    steady = SwapWatch(SwapWatchConfig(latency_jump=4.0))
    run(steady, 0, VARIED, 10, ms=10.0)
    assert run(steady, 1, VARIED, 10, ms=30.0) == [""] * 10  # slower, within the factor


def test_after_a_step_back_the_next_version_is_judged_against_the_same_baseline():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=2))
    run(watch, 0, VARIED, 10)
    assert run(watch, 1, ONE, 2)[-1]
    watch.stepped_back(0)
    assert run(watch, 0, VARIED, 3) == [""] * 3
    assert run(watch, 2, ONE, 2)[-1].startswith("v2 labels")


def test_a_swap_during_the_check_of_the_last_one_is_judged_against_the_model_before_both():
    watch = SwapWatch(SwapWatchConfig(collapse_frames=2))
    run(watch, 0, VARIED, 10)
    run(watch, 1, VARIED, 2)  # v1 still being checked
    assert run(watch, 2, ONE, 2)[-1].startswith("v2 labels")


@pytest.mark.parametrize("field,value,message", [
    ("swap_watch_frames", -1, "swap_watch_frames must be >= 0"), ("collapse_share", 0.4, r"collapse_share must lie"),
    ("collapse_frames", 0, "collapse_frames must be >= 1"), ("latency_jump", 1.0, "latency_jump must be > 1"),
])
def test_settings_out_of_range_are_refused_with_their_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        SwapWatchConfig(**{field: value})
