"""`ams-eval merge`: schemes run in parallel processes give the folder one run of all of them gives."""

from __future__ import annotations

import json

import pytest

from ams_ros.core.models.weights import load_student, save_student_checkpoint
from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.report import read_series

# deterministic timing (train_s_per_step), so two processes compute what one would
BASE = ["--source", "synthetic:1?shifts=8", "--teacher", "oracle:1?shifts=8", "--max-seconds", "12", "--quiet",
        "--preset", "cpu-paper-timing", "--set", "width=64", "--set", "height=32", "--set", "eval_fps=2",
        "--set", "update_period_s=5", "--set", "iterations=2", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    cache = str(root / "cache")
    weights = root / "student.pt"  # every run starts from the same student, as with a real checkpoint
    save_student_checkpoint(load_student("deeplabv3_mobilenet_v2", num_classes=7), weights, "deeplabv3_mobilenet_v2", 7)
    for name, schemes in (("all", "remote_tracking,ams"), ("rt", "remote_tracking"), ("ams", "ams")):
        assert eval_main(["run", *BASE, "--student-weights", str(weights), "--schemes", schemes, "--cache", cache,
                          "--no-plots", "--out", str(root / name)]) == 0
    return root


def _json(folder):
    return json.loads((folder / "results.json").read_text())


def test_merged_parallel_runs_equal_one_run_of_every_scheme(runs):
    out = runs / "merged"
    assert eval_main(["merge", str(runs / "rt"), str(runs / "ams"), "--out", str(out)]) == 0
    merged, single = _json(out), _json(runs / "all")
    assert list(merged["schemes"]) == ["none", "remote_tracking", "ams"] == list(single["schemes"])
    keys = ("miou_teacher", "miou_gt", "uplink_kbps", "downlink_kbps", "updates", "frames", "mean_update_delay_s")
    # the merge carries each scheme's figures exactly as the run it came from wrote them
    for name, src in (("none", "rt"), ("remote_tracking", "rt"), ("ams", "ams")):
        for key in keys:
            assert merged["schemes"][name][key] == _json(runs / src)["schemes"][name][key], (name, key)
    # and equals one run of both schemes for the schemes that are deterministic across runs. AMS is
    # not compared with another run of itself: on this random student two runs of one process
    # sometimes differ (mIoU 0.0364 vs 0.0363, uplink 15.32 vs 15.33 Kbps, about one test run in
    # six), which is AMS's, not the merge's; the merge is checked exactly against the run it came from
    for name in ("none", "remote_tracking"):
        for key in (*keys, "frac_frames_better_than_none"):
            assert merged["schemes"][name][key] == single["schemes"][name][key], (name, key)
    # "better than none" exists only against a `none`: each run had its own, the merge recomputes it
    assert merged["schemes"]["ams"]["frac_frames_better_than_none"] is not None
    assert [f["schemes"] for f in merged["merged_from"]] == [["none", "remote_tracking"], ["none", "ams"]]
    times, series = read_series(out)
    times1, series1 = read_series(runs / "all")
    assert list(times) == list(times1)
    assert series["ams"].window_miou == read_series(runs / "ams")[1]["ams"].window_miou
    assert "| mIoU vs teacher (%) |" in (out / "results.md").read_text()
    assert (out / "miou_over_time.png").stat().st_size > 1000
    # the merged folder is a run folder like any other
    assert eval_main(["summarize", "--skip-s", "4", str(out)]) == 0
    assert eval_main(["analyze", str(out), "--no-motion"]) == 0


def test_runs_of_another_experiment_are_refused_naming_what_differs(runs, capsys, tmp_path):
    other = tmp_path / "other"
    weights = str(runs / "student.pt")
    assert eval_main(["run", *BASE, "--student-weights", weights, "--schemes", "remote_tracking", "--set", "rt_fps=2",
                      "--cache", "", "--no-plots", "--out", str(other)]) == 0
    assert eval_main(["merge", str(runs / "ams"), str(other), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "is not the same experiment" in err and "'preset_params' differ in rt_fps (2.0 there, 1.0 in the first run)" in err
    assert not (tmp_path / "m").exists()


def test_a_scheme_with_two_different_results_is_refused_and_an_identical_one_kept_once(runs, capsys, tmp_path):
    # `none` is in every run (identical): kept once. A changed copy of `remote_tracking` is refused.
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in ("results.json", "series.json"):
        (changed / f).write_text((runs / "rt" / f).read_text())
    series = json.loads((changed / "series.json").read_text())
    series["schemes"]["remote_tracking"]["window_miou"][-1] = 0.0
    (changed / "series.json").write_text(json.dumps(series))
    assert eval_main(["merge", str(runs / "rt"), str(changed), "--out", str(tmp_path / "m")]) == 2
    assert "scheme 'remote_tracking' ran in both" in capsys.readouterr().err
    assert eval_main(["merge", str(runs / "rt"), str(runs / "rt"), "--out", str(runs / "rt")]) == 2
    assert "is one of the runs" in capsys.readouterr().err
    assert eval_main(["merge", str(runs / "rt"), str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "merge takes folders written by 'ams-eval run'" in capsys.readouterr().err
