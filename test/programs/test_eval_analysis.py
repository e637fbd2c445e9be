"""(issue #11) ams-eval analyze: the per-frame gain of AMS over Remote+Tracking, the age of the
teacher label Remote+Tracking tracks from, and the motion, checked on a run written here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from small_inputs import write_video  # noqa: E402
from ams_ros.eval.analysis import bin_means, analyze, binned, label_age_frames, motion_per_frame, per_frame_gain
from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.report import write_series
from ams_ros.eval.simulator import SchemeResult, UpdateRecord

TIMES = [i / 10 for i in range(20)]  # 20 scored frames at 10 fps


def _runs():
    ams = SchemeResult("ams", "ams", times=list(TIMES), frame_miou=[0.6] * 20)
    rt = SchemeResult("remote_tracking", "remote_tracking", times=list(TIMES),
                      frame_miou=[0.7 - 0.02 * (i % 10) for i in range(20)])  # drifts as its label ages
    # labels of the frames at 0.0 s and 1.0 s, each arriving 0.25 s after capture
    rt.updates = [UpdateRecord(0.0, 0.0, 0.2, 0.25, 1000), UpdateRecord(1.0, 1.0, 1.2, 1.25, 1000)]
    return ams, rt


def test_gain_is_the_per_frame_difference_on_frames_both_scored():
    ams, rt = _runs()
    rt.times, rt.frame_miou = rt.times[:15], rt.frame_miou[:15]
    t, g = per_frame_gain(ams, rt)
    assert t.size == 15 and g[0] == pytest.approx(-0.1) and g[9] == pytest.approx(0.08)


def test_label_age_counts_source_frames_since_the_tracked_labels_capture():
    ams, rt = _runs()
    ages = label_age_frames(np.asarray(TIMES), rt, np.asarray(TIMES))
    # before 0.25 s no label has arrived (counted from the start); then the 0.0 s label until 1.25 s
    assert ages[:3].tolist() == [1, 2, 3]
    assert ages[3:13].tolist() == list(range(3, 13))
    assert ages[13:].tolist() == list(range(3, 10))  # the 1.0 s label from 1.3 s on


def test_motion_is_zero_for_still_frames_and_grows_with_a_shift():
    still = np.zeros((32, 64, 3), np.uint8)
    still[8:24, 10:30] = 255
    moved = np.roll(still, 4, axis=1)
    m = motion_per_frame([(0.0, still), (0.1, still), (0.2, moved)])
    assert np.isnan(m[0.0]) and m[0.1] == pytest.approx(0.0, abs=1e-3) and m[0.2] > 0.1


def test_binned_reports_mean_median_and_count_per_bin():
    rows = binned(np.array([0, 1, 2, 5, np.nan]), np.array([1.0, 2.0, 3.0, 4.0, 9.0]), [0, 2, 10])
    assert rows == [{"from": 0, "to": 2, "frames": 2, "gain_mean": 1.5, "gain_median": 1.5},
                    {"from": 2, "to": 10, "frames": 2, "gain_mean": 3.5, "gain_median": 3.5}]


def test_analyze_a_run_folder_end_to_end_with_the_synthetic_source(tmp_path):
    ams, rt = _runs()
    write_series(tmp_path, TIMES, {"ams": ams, "remote_tracking": rt})
    (tmp_path / "results.json").write_text(json.dumps({"source": "synthetic:0", "preset_params": {"width": 64,
                                                                                                   "height": 32}}))
    res = analyze(tmp_path, "synthetic:0", (64, 32), plots=True)
    assert res["frames"] == 20 and res["gain_mean"] == pytest.approx(np.mean([-0.1 + 0.02 * (i % 10)
                                                                               for i in range(20)]))
    young = res["gain_vs_label_age_frames"][1]  # labels 1-2 frames old: Remote+Tracking ahead
    assert young["from"] == 1 and young["gain_mean"] < 0
    assert len(res["per_frame"]["motion_px"]) == 20 and res["gain_vs_motion_px"]
    assert (tmp_path / "analysis_gain_vs_label_age.png").exists() and (tmp_path / "analysis_gain_vs_motion.png").exists()
    assert eval_main(["analyze", str(tmp_path), "--no-motion"]) == 0
    assert eval_main(["analyze", str(tmp_path), "--no-motion", "--b", "jit"]) == 2  # not in the run: named


def test_analyze_after_a_warm_up_counts_only_the_frames_after_it(tmp_path):
    ams, rt = _runs()
    write_series(tmp_path, TIMES, {"ams": ams, "remote_tracking": rt})
    res = analyze(tmp_path, None, (64, 32), plots=False, skip_s=1.0)
    assert res["frames"] == 10 and res["skip_s"] == 1.0  # the frames at 1.0 .. 1.9 s
    assert res["per_frame"]["t"][0] == pytest.approx(1.0)
    assert res["gain_mean"] == pytest.approx(np.mean([-0.1 + 0.02 * i for i in range(10)]))
    ages = res["per_frame"]["label_age_frames"]
    assert ages[:3] == [10, 11, 12] and ages[3:] == list(range(3, 10))  # still counted from the 0.0 s label
    with pytest.raises(ValueError, match="leaves no frame"):
        analyze(tmp_path, None, (64, 32), plots=False, skip_s=5.0)


def test_the_plots_trend_line_is_the_mean_per_value_or_per_equal_count_bin():
    x, y = bin_means(np.array([1, 1, 2, 2, 2, np.nan]), np.array([0.0, 1.0, 3.0, 3.0, 3.0, 5.0]))
    assert x.tolist() == [1, 2] and y.tolist() == [0.5, 3.0]
    x = np.arange(1000, dtype=float)
    bx, by = bin_means(x, 2 * x, bins=10)
    assert bx.size == 10 and np.allclose(by, 2 * bx) and bx[0] == pytest.approx(49.5)



def test_per_item_figures_follow_the_playlists_items(tmp_path, capsys):
    a, b = write_video(tmp_path / "a.avi", 10, 10.0), write_video(tmp_path / "b.avi", 10, 10.0)
    spec = f"playlist:{a},mirror:{b},{a}"  # 0-1 s, 1-2 s, 2-3 s at 10 fps
    times = [i / 10 for i in range(30)]
    # AMS climbs each time a scene comes back; Remote+Tracking is flat
    ams = SchemeResult("ams", "ams", times=times, frame_miou=[0.2] * 10 + [0.5] * 10 + [0.6] * 10,
                       window_miou=[0.2] * 10 + [0.5] * 10 + [0.6] * 10)
    rt = SchemeResult("remote_tracking", "remote_tracking", times=times, frame_miou=[0.4] * 30, window_miou=[0.4] * 30)
    write_series(tmp_path, times, {"ams": ams, "remote_tracking": rt})
    (tmp_path / "results.json").write_text(json.dumps({"source": spec, "preset_params": {"width": 16, "height": 8}}))
    res = analyze(tmp_path, spec, (16, 8), plots=False, skip_s=1.5)
    items = res["per_item"]
    assert [r["item"] for r in items] == ["a.avi", "mirror:b.avi", "a.avi"]
    assert [(r["from"], r["to"]) for r in items] == [pytest.approx((0.0, 1.0)), pytest.approx((1.0, 2.0)),
                                                     pytest.approx((2.0, 2.9))]
    assert [r["frames"] for r in items] == [10, 10, 10]  # whole items: the warm-up skip does not cut them
    assert [r["miou"]["ams"] for r in items] == pytest.approx([0.2, 0.5, 0.6])
    assert [r["gain_mean"] for r in items] == pytest.approx([-0.2, 0.1, 0.2])
    assert eval_main(["analyze", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| item (stream s) | AMS | Remote+Tracking | ams - remote_tracking, per frame |" in out
    assert "| mirror:b.avi (1-2) | 50.0 | 40.0 | +10.0 |" in out
    # a source that is not a playlist has no items
    assert analyze(tmp_path, None, (16, 8), plots=False)["per_item"] == []


def test_label_age_counts_the_frame_itself_at_times_that_round_down():
    # 30 fps: 1/30 s rounds to 0.033333, just before the frame; the label of frame 0 arrives at 0.01 s
    times = [i / 30 for i in range(10)]
    ams = SchemeResult("ams", "ams", times=times, frame_miou=[0.5] * 10)
    rt = SchemeResult("remote_tracking", "remote_tracking", times=times, frame_miou=[0.5] * 10)
    rt.updates = [UpdateRecord(0.0, 0.0, 0.005, 0.01, 100)]
    t, _ = per_frame_gain(ams, rt)
    # frame 0: no label yet (counted from the start); from 1/30 s on, frames since frame 0's capture
    assert label_age_frames(t, rt, np.asarray(times)).tolist() == [1] + list(range(1, 10))
