"""The fault benchmarks' bookkeeping (issue #13, ``make faults``): which scenario sets what, the
kill-and-restart schedule, and the figures read from a robot's log, checked on logs written here
(the benchmark itself runs the demo's processes for minutes: docs/results.md)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from ros_helpers import require_ros

require_ros()
pytestmark = pytest.mark.ros

from ams_ros.demo.faults import (SCENARIOS, EdgeFaults, KillRestart, disturbance_for, markdown_table,  # noqa: E402
                                 measure, parse_applied, parse_update_faults, resync_after)
from ams_ros.demo.runner import Disturbance, parse_param_overrides  # noqa: E402

TAG = "9db6228966986e39"


def _line(t: float, text: str, node: str = "robot1.model_patcher", level: str = "INFO") -> str:
    return f"[{level}] [{t:.9f}] [{node}]: {text}"


def _applied(t: float, kind: str, base: int, new: int, nbytes: int) -> str:
    return _line(t, f"applied {kind} v{base}->v{new} of chain {TAG} (105498 of 2109959 parameters, {nbytes} bytes, "
                    f"paper_gzip_fp16)")


LOG = "\n".join([
    _line(100.0, "asked the server to resync (have v0 of chain (none))"),
    _applied(100.5, "snapshot", 0, 0, 3_898_566),                      # start-up
    _applied(110.0, "update", 0, 1, 290_000),
    _line(120.0, "fault injection: drop update v1->v2"),
    _line(120.1, "rejected update: something else", node="robot1.student_segmenter", level="WARN"),
    _applied(130.0, "update", 2, 3, 280_000),
    _line(130.2, "update v2->v3: gap; asking the server to resync", level="WARN"),
    _applied(131.0, "catch-up", 1, 3, 450_000),
    _line(140.0, "fault injection: reorder update v3->v4"),
    _applied(150.5, "catch-up", 3, 5, 460_000),
])


def test_applied_lines_and_fault_lines_are_read_with_their_wall_times():
    applied = parse_applied(LOG)
    assert [(a.kind, a.base, a.new, a.nbytes) for a in applied] == [
        ("snapshot", 0, 0, 3_898_566), ("update", 0, 1, 290_000), ("update", 2, 3, 280_000),
        ("catch-up", 1, 3, 450_000), ("catch-up", 3, 5, 460_000)]
    assert applied[3].wall == pytest.approx(131.0)
    assert parse_update_faults(LOG) == [(120.0, "drop", 1, 2), (140.0, "reorder", 3, 4)]


def test_a_resync_ends_when_the_robot_holds_the_lost_version_and_counts_only_catch_up_bytes():
    applied = parse_applied(LOG)
    r = resync_after(120.0, applied, need_version=2)
    assert r == {"seconds": 10.0, "by": "update", "resync_bytes": 0, "version": 3}
    r = resync_after(140.0, applied, need_version=4)
    assert r == {"seconds": 10.5, "by": "catch-up", "resync_bytes": 460_000, "version": 5}
    assert resync_after(151.0, applied, need_version=6)["seconds"] is None  # never resynced: reported, not hidden
    assert resync_after(100.0, applied, None)["by"] == "snapshot"


def test_measure_leaves_the_start_up_snapshot_out_of_the_resync_downlink(tmp_path):
    (tmp_path / "edge.log").write_text(LOG)
    summary = {"miou_streamed": 0.5, "miou_frozen": 0.3, "max_inference_gap_ms": 250.0, "updates_rejected": 1,
               "edge_exit_code": 0, "server_exit_code": 0}
    row = measure("drop_updates", tmp_path, EdgeFaults({}), summary)
    assert row["downlink_bytes_startup"] == 3_898_566
    assert row["downlink_bytes_resync"] == 450_000 + 460_000
    assert row["updates_applied"] == 4 and row["applied_by_kind"] == {"update": 2, "catch-up": 2, "snapshot": 0}
    assert row["final_version"] == 5
    assert row["update_faults"] == {"drop": 1, "duplicate": 0, "reorder": 1}
    assert [r["seconds"] for r in row["resyncs"]] == [10.0, 10.5] and row["resync_seconds_max"] == 10.5
    table = markdown_table([row])
    assert "| drop_updates | 0.500 (0.300) |" in table and "| 910.0 |" in table


def test_a_restarted_robots_log_is_read_after_the_first(tmp_path):
    killed = KillRestart("edge", at_s=10.0, down_s=5.0, killed_at=119.0, restarted_at=124.0, killed_stream_t=30.0)
    (tmp_path / "edge.log").write_text("\n".join([_applied(100.5, "snapshot", 0, 0, 3_898_566),
                                                  _applied(110.0, "update", 0, 1, 290_000)]))
    (tmp_path / "edge_restart1.log").write_text(_applied(131.5, "snapshot", 1, 1, 3_898_000))
    row = measure("robot_restart", tmp_path, killed, {})
    (r,) = row["resyncs"]
    assert r["seconds"] == 7.5 and r["by"] == "snapshot" and r["resync_bytes"] == 3_898_000
    assert r["seconds_down"] == 5.0
    assert row["downlink_bytes_resync"] == 3_898_000


class _Stage:
    def __init__(self) -> None:
        self.server = SimpleNamespace(name="server", pid=1)
        self.edges = [SimpleNamespace(name="edge", pid=2)]
        self.killed: list = []
        self.restarts: list = []

    def kill(self, proc) -> None:
        self.killed.append(proc)

    def restart(self, proc, overrides=None):
        self.restarts.append((proc.name, overrides))
        return SimpleNamespace(name=f"{proc.name}_restart1", pid=3)


@pytest.mark.parametrize("which", ["server", "edge"])
def test_kill_restart_kills_once_at_its_stream_time_and_restarts_once_after_the_downtime(which):
    stage = _Stage()
    d = KillRestart(which, at_s=30.0, down_s=0.0)
    d.tick(29.9, stage)
    assert stage.killed == []
    d.tick(30.2, stage)
    assert [p.name for p in stage.killed] == [which]
    d.tick(30.2, stage)
    d.tick(31.0, stage)
    assert len(stage.killed) == 1 and len(stage.restarts) == 1
    name, overrides = stage.restarts[0]
    assert name == which
    if which == "edge":  # the robot resumes its stream where the clock says, not from its start
        assert overrides["camera_sampler"]["start_s"] >= 30.2
    else:
        assert overrides is None  # the server comes back with its files: its state_dir holds the sessions
    assert d.restarted_at is not None and d.killed_at <= d.restarted_at


def test_every_scenario_is_known_and_an_unknown_one_names_the_choices():
    args = argparse.Namespace(duration=120.0, seed=1, foreign_s=10.0)
    kinds = {name: disturbance_for(name, args) for name in SCENARIOS}
    assert type(kinds["undisturbed"]) is Disturbance
    assert kinds["drop_updates"].edge_params() == {"model_patcher": {"fault_drop_updates": 0.2, "fault_seed": 1}}
    assert kinds["drop_batches"].edge_params()["camera_sampler"]["fault_drop_batches"] == 0.2
    assert kinds["server_kill"].which == "server" and kinds["server_kill"].down_s == 20.0
    assert kinds["robot_restart"].which == "edge"
    # (issue #29) the faults of the learning itself: which node's parameters, for how long
    teacher, lens, foreign = kinds["one_class_teacher"], kinds["covered_lens"], kinds["foreign_scene"]
    assert (teacher.node, teacher.robot, teacher.changes, teacher.for_s) == (
        "teacher_labeler", False, {"fault_teacher_one_class": 0}, 60.0)
    assert (lens.node, lens.robot, lens.changes, lens.for_s) == ("camera_sampler", True, {"fault_black_frames": True}, 60.0)
    assert (foreign.node, foreign.robot, foreign.for_s) == ("camera_sampler", True, 10.0)
    with pytest.raises(SystemExit, match="choose from undisturbed, drop_updates"):
        disturbance_for("earthquake", args)


def test_param_overrides_are_read_as_yaml_and_a_malformed_one_shows_the_form():
    assert parse_param_overrides(["model_patcher.fault_drop_updates=0.2", "camera_sampler.source=synthetic:3",
                                  "ams_trainer.device_ids=[a, b]"], "--edge-param") == {
        "model_patcher": {"fault_drop_updates": 0.2}, "camera_sampler": {"source": "synthetic:3"},
        "ams_trainer": {"device_ids": ["a", "b"]}}
    for bad in ("fault_drop_updates=0.2", "model_patcher.x", ".x=1"):
        with pytest.raises(SystemExit, match="expected NODE.NAME=VALUE"):
            parse_param_overrides([bad], "--edge-param")


class _ParamClient:
    """What a ParamWindow sends its node (as `ros2 param set` would)."""

    def __init__(self) -> None:
        self.sets: list[dict] = []
        self.asked: list[list[str]] = []
        self.ready = False

    def services_are_ready(self) -> bool:
        return self.ready

    def get_parameters(self, names, callback) -> None:
        self.asked.append(list(names))

    def set_parameters(self, params) -> None:
        self.sets.append({p.name: p.value for p in params})


def test_a_poisoned_phase_sets_the_learning_rate_for_its_window_then_back():
    d = disturbance_for("poisoned_phase", argparse.Namespace(duration=120.0, seed=1))
    assert d.changes == {"lr": 1.0} and d.at_s == 36.0 and d.for_s == 30.0
    d.client = _ParamClient()
    d.tick(10.0, _Stage())
    assert d.client.asked == []  # its parameter services are not discovered yet: a request would be lost
    d.client.ready = True
    d.tick(11.0, _Stage())
    d.tick(12.0, _Stage())
    assert d.client.asked == [["lr"]]  # asked once (again only after 5 s without an answer)
    d.tick(40.0, _Stage())
    assert d.client.sets == [] and d.started_t is None  # the server's own value not known yet: wait for it
    d.original = {"lr": 0.001}
    d.tick(40.5, _Stage())
    d.tick(60.0, _Stage())
    d.tick(70.5, _Stage())
    d.tick(80.0, _Stage())
    assert d.client.sets == [{"lr": 1.0}, {"lr": 0.001}] and (d.started_t, d.ended_t) == (40.5, 70.5)


def test_a_poisoned_phase_row_has_the_robots_miou_around_the_window_and_the_discarded_phases(tmp_path):
    import json

    d = disturbance_for("poisoned_phase", argparse.Namespace(duration=120.0, seed=1))
    d.started_t, d.ended_t = 40.0, 70.0
    scores = [{"t": float(t), "streamed": 0.6 if t < 40 or t >= 80 else 0.2, "frozen": 0.4, "version": 1}
              for t in range(0, 120, 2)]
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    (tmp_path / "edge.log").write_text(_applied(100.5, "snapshot", 0, 0, 3_898_566))
    row = measure("poisoned_phase", tmp_path, d, {"server_phases_discarded": 3})
    assert row["poison_window_s"] == [40.0, 70.0] and row["phases_discarded"] == 3
    assert (row["miou_before_window"], row["miou_in_window"]) == (0.6, 0.2)
    assert row["miou_30s_after_window"] == pytest.approx((5 * 0.2 + 10 * 0.6) / 15, abs=1e-4)
    assert "| poisoned_phase | 40-70 | 0.600 | 0.200 (0.400) | 0.467 (0.400) | 3 | - (-) | - |" in markdown_table([row])


def test_a_learning_fault_row_has_the_robots_and_the_frozen_students_miou_per_period_and_what_was_refused(tmp_path):
    import json

    d = disturbance_for("one_class_teacher", argparse.Namespace(duration=100.0, seed=1, foreign_s=10.0))
    d.started_t, d.ended_t = 30.0, 90.0
    scores = [{"t": float(t), "streamed": 0.5 if t < 60 else 0.3, "frozen": 0.4, "version": 1} for t in range(0, 100, 5)]
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    (tmp_path / "edge.log").write_text(_applied(100.5, "snapshot", 0, 0, 3_898_566))
    row = measure("one_class_teacher", tmp_path, d, {"server_batches_refused": 6, "server_frames_refused": 60,
                                                     "server_rollbacks": 0, "update_period_s": 20.0})
    assert (row["batches_refused"], row["frames_refused"], row["rollbacks"]) == (6, 60, 0)
    assert row["miou_frozen_in_window"] == 0.4 and row["miou_in_window"] == pytest.approx((6 * 0.5 + 6 * 0.3) / 12)
    assert [p["t"] for p in row["periods"]] == [[0.0, 20.0], [20.0, 40.0], [40.0, 60.0], [60.0, 80.0], [80.0, 100.0]]
    assert [p["streamed"] for p in row["periods"]] == [0.5, 0.5, 0.5, 0.3, 0.3]
    assert all(p["frozen"] == 0.4 for p in row["periods"])
