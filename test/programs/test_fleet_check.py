"""`ams-eval fleet-check` (issue #31): the fleet model replays a real demo run's streams with the
costs the demo measured and is compared per robot. The demo's summary here is written by hand (a
real run takes minutes: docs/results.md has those); the model runs for real at 64x32."""

from __future__ import annotations

import json

import pytest

from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.fleet_check import TOLERANCE, DemoRun, compare, markdown, model_preset, within
from ams_ros.eval.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = {"duration": 30.0, "fps": 1.0, "width": 64, "height": 32, "update_period": 5.0, "horizon": 30.0,
            "iterations": 2, "batch_size": 2, "gamma": 0.05, "lr": 0.001, "encoding": "residual_zstd_q4",
            "bitrate": 200000, "robots": 2, "source": "synthetic:0?shifts=20", "teacher": "oracle", "student":
            "deeplabv3_mobilenet_v2", "selected_classes": "", "label_space": "synthetic"}


def _robot(source: str, phases: int, seconds: float, stream_s: float = 30.0) -> dict:
    return {"source": source, "miou_streamed": 0.4, "updates_applied": phases + 1, "training_phases_seen": phases,
            "train_seconds_total": seconds, "phase_time_share": round(seconds / stream_s, 4)}


def _write_demo(folder, robots: dict, settings: dict | None = SETTINGS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"stream_seconds": 30.0, "student_weights": "", "miou_scored_from_s": 10.0, "robots": robots,
               "phase_overhead_s": 0.3}
    if settings is not None:
        summary["settings"] = settings
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_demo_run_is_read_with_its_mean_phase_time_and_refused_when_it_cannot_be_modelled(tmp_path):
    _write_demo(tmp_path / "ok", {"robot1": _robot("synthetic:0", 3, 6.0), "robot2": _robot("synthetic:1", 1, 3.0)})
    demo = DemoRun.read(tmp_path / "ok")
    assert demo.phase_seconds == pytest.approx(9.0 / 4)
    assert list(demo.robots) == ["robot1", "robot2"]
    with pytest.raises(FileNotFoundError, match="not a demo output folder"):
        DemoRun.read(tmp_path / "missing")
    _write_demo(tmp_path / "old", {"robot1": _robot("synthetic:0", 3, 6.0)}, settings=None)
    with pytest.raises(ValueError, match="run the demo again"):
        DemoRun.read(tmp_path / "old")
    _write_demo(tmp_path / "idle", {"robot1": _robot("synthetic:0", 0, 0.0)})
    with pytest.raises(ValueError, match="no training phase"):
        DemoRun.read(tmp_path / "idle")


def test_the_model_takes_the_demos_settings_and_its_measured_phase_cost(tmp_path):
    _write_demo(tmp_path, {"robot1": _robot("synthetic:0", 4, 10.0)})
    p = model_preset(DemoRun.read(tmp_path), PRESETS["cpu-quick"])
    assert (p.width, p.height, p.iterations, p.batch_size, p.update_period_s) == (64, 32, 2, 2, 5.0)
    assert p.train_s_per_step == pytest.approx(2.5 / 2)  # 10 s over 4 phases of K = 2 steps
    assert p.teacher_s == 0.0 and p.server_labels == "received"
    assert p.phase_overhead_s == pytest.approx(0.3)  # the lane's time per phase outside training
    assert p.fleet_stagger is False  # a demo run from before the base station staggered batches
    _write_demo(tmp_path, {"robot1": _robot("synthetic:0", 4, 10.0)}, {**SETTINGS, "stagger_batches": True})
    assert model_preset(DemoRun.read(tmp_path), PRESETS["cpu-quick"]).fleet_stagger is True


def test_the_demos_settings_say_whether_the_base_station_staggered_the_batches():
    import argparse

    from ams_ros.demo.report import demo_settings

    assert demo_settings(argparse.Namespace(robots=3))["stagger_batches"] is True  # the default
    off = argparse.Namespace(robots=3, server_param=["asr_controller.stagger_batches=false", "ams_trainer.lr=0.01"])
    assert demo_settings(off)["stagger_batches"] is False


def test_compare_gives_relative_differences_and_within_holds_only_inside_the_tolerance(tmp_path):
    _write_demo(tmp_path, {"robot1": _robot("synthetic:0", 4, 6.0), "robot2": _robot("synthetic:1", 2, 3.0)})
    demo = DemoRun.read(tmp_path)
    close = {"robots": {"robot1": {"phases": 4, "gpu_share": 0.21, "miou_gt": 40.0},
                        "robot2": {"phases": 2, "gpu_share": 0.1, "miou_gt": 41.0}}}
    rows = compare(demo, close)
    assert rows[0]["phases_diff"] == 0.0 and rows[0]["share_diff"] == pytest.approx(0.05)
    assert rows[1]["updates_real"] == 2 and within(rows)
    off = {"robots": {"robot1": {"phases": 4, "gpu_share": 0.2, "miou_gt": 40.0},
                      "robot2": {"phases": 3, "gpu_share": 0.1, "miou_gt": 41.0}}}
    rows = compare(demo, off)
    assert rows[1]["phases_diff"] == pytest.approx(0.5) and not within(rows)
    text = markdown(rows, demo)
    assert "| robot2 | synthetic:1 | 2 / 3 (+50 %)" in text and f"NOT within {100 * TOLERANCE:.0f} %" in text
    with pytest.raises(ValueError, match="no robot 'robot2'"):
        compare(demo, {"robots": {"robot1": close["robots"]["robot1"]}})


def test_fleet_check_models_a_demo_run_and_writes_the_comparison(tmp_path, capsys):
    demo_dir = tmp_path / "demo"
    _write_demo(demo_dir, {"robot1": _robot("synthetic:0?shifts=20", 4, 8.0),
                           "robot2": _robot("synthetic:1?shifts=20", 4, 8.0)})
    rc = eval_main(["fleet-check", str(demo_dir), "--cache", "", "--quiet"])
    assert rc == 0
    result = json.loads((demo_dir / "fleet-check" / "fleet_check.json").read_text())
    assert [r["robot"] for r in result["rows"]] == ["robot1", "robot2"]
    # 30 s at T_update 5 s, a phase costing 2 s: each robot trains, and the GPU is shared
    assert all(r["phases_model"] >= 2 for r in result["rows"])
    assert 0.0 < sum(r["share_model"] for r in result["rows"]) <= 1.0
    assert result["demo"]["phase_seconds"] == pytest.approx(2.0)
    assert "| robot1 | synthetic:0?shifts=20 |" in capsys.readouterr().out
