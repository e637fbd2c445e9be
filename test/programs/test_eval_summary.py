"""`ams-eval summarize --skip-s`: the paper's warm-up skip applied to finished runs, from their series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.report import combine, miou_after, summarize, write_series
from ams_ros.eval.simulator import SchemeResult


def _run(folder, rising: bool):
    """A 100 s run at 1 fps: scheme `b` is 0.2 before 50 s and 0.8 after (rising) or the reverse."""
    times = [float(t) for t in range(100)]
    a = SchemeResult("a", "a", times=times, frame_miou=[0.5] * 100, window_miou=[0.5] * 100, frames_total=100)
    lo, hi = (0.2, 0.8) if rising else (0.8, 0.2)
    b_miou = [lo if t < 50 else hi for t in times]
    b = SchemeResult("b", "b", times=times, frame_miou=b_miou, window_miou=b_miou, gt_times=[10.0, 60.0],
                     gt_window_miou=[lo, hi], frames_total=100)
    folder.mkdir()
    write_series(folder, times, {"a": a, "b": b})
    schemes = {n: summarize(r, a, np.asarray(times), 0.0, 1.0) for n, r in (("a", a), ("b", b))}
    (folder / "results.json").write_text(json.dumps({"source": str(folder), "preset": "p", "schemes": schemes}))
    return folder


def test_skip_counts_only_the_frames_after_the_warm_up(tmp_path):
    up, down = _run(tmp_path / "up", True), _run(tmp_path / "down", False)
    assert miou_after(up, 0.0)["b"]["miou_teacher"] == pytest.approx(0.5)  # the run's own figure
    assert miou_after(up, 50.0)["b"] == {"miou_teacher": pytest.approx(0.8), "miou_gt": pytest.approx(0.8)}
    assert miou_after(down, 50.0)["b"]["miou_teacher"] == pytest.approx(0.2)
    table = combine([up, down], skip_s=50.0)
    row = next(line for line in table.splitlines() if line.startswith("| up (p, mIoU after 50 s)"))
    assert row.split("|")[2:4] == [" 50.0 ", " 80.0 "]
    assert "| **mean** | 50.0 | 50.0 |" in table  # (80 + 20) / 2 over the two runs
    assert "| up (p) | 50.0 | 50.0 |" in combine([up, down])  # without a skip: results.json as written
    results = json.loads((up / "results.json").read_text())
    (up / "results.json").write_text(json.dumps({**results, "source": "playlist:a.mp4,mirror:b.mp4,c.mp4"}))
    assert "| playlist of 3 items (p) |" in combine([up])
    results["source"] = "playlist:a.mp4,mirror:b.mp4,c.mp4"
    results["schemes"]["b"]["partial"] = True  # interrupted: shown, marked, out of the mean
    (up / "results.json").write_text(json.dumps(results))
    table = combine([up, down], skip_s=50.0)  # b: 80 on `up` (partial), 20 on `down`
    assert "| playlist of 3 items (p, mIoU after 50 s) | 50.0 | 80.0 (partial) |" in table
    assert "| **mean** | 50.0 | 20.0 |" in table


def test_a_skip_past_the_stream_or_a_folder_without_series_is_refused_with_the_fix(tmp_path, capsys):
    run = _run(tmp_path / "r", True)
    with pytest.raises(ValueError, match=r"skip_s=250 leaves no scored frame .* \(its stream is 99.0 s\)"):
        miou_after(run, 250.0)
    (run / "series.json").unlink()
    assert eval_main(["summarize", "--skip-s", "10", str(run)]) == 2
    assert "series.json not found" in capsys.readouterr().err
