"""`ams-eval fleet` (issue #16): N robots sharing one modelled server GPU, on the synthetic world
at 64x32 (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ams_ros.core import sources as _sources  # noqa: F401 (registers the oracle teacher)
from ams_ros.core.models.teachers import build_teacher
from ams_ros.core.models.weights import load_student
from ams_ros.eval import fleet
from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.clips import load_clip
from ams_ros.core.fleet.base_station import MAX_PENDING_BATCHES
from ams_ros.eval.presets import PRESETS

SPEC = "synthetic:0?shifts=20"
TINY = PRESETS["cpu-quick"].with_overrides({
    "width": 64, "height": 32, "eval_fps": 1, "iterations": 2, "batch_size": 2, "train_s_per_step": 0.5,
    "update_period_s": 5,
})
TINY_SET = ["--set", "width=64 height=32 eval_fps=1 iterations=2 batch_size=2 train_s_per_step=0.5 update_period_s=5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip():
    teacher = build_teacher("oracle:0?shifts=20")
    return load_clip(SPEC, (64, 32), teacher, None, eval_fps=1.0, max_seconds=30.0, progress=False).cache_frames()


@pytest.fixture(scope="module")
def student(clip):
    torch.manual_seed(0)
    return load_student("deeplabv3_mobilenet_v2", num_classes=clip.num_classes).eval()


def test_a_reused_clip_is_time_offset_and_mirrored_with_its_labels(clip) -> None:
    v1 = fleet.robot_clip(clip, 1)
    frames = [f for _, _, f in clip.frames()]
    n = len(frames)
    shift = n // 2
    np.testing.assert_array_equal(v1.times, clip.times)
    np.testing.assert_array_equal(v1._frames[0], frames[shift][:, ::-1])
    np.testing.assert_array_equal(v1.teacher[0], np.asarray(clip.teacher[shift])[:, ::-1])
    v2 = fleet.robot_clip(clip, 2)
    np.testing.assert_array_equal(v2._frames[0], frames[(2 * n) // 3])  # not mirrored
    assert fleet.robot_clip(clip, 0) is clip


def test_robots_sharing_a_saturated_gpu_get_fewer_phases_and_all_of_it(clip, student) -> None:
    # per robot and 5 s period: 5 frames x 0.2 s of teacher + 2 steps x 0.5 s of training = 2 s
    slow = TINY.with_overrides({"teacher_s": 0.2})
    alone = fleet.run_fleet([clip], student, slow, "round_robin")
    clips = [fleet.robot_clip(clip, j) for j in range(3)]
    three = fleet.run_fleet(clips, student, slow, "round_robin")
    assert set(three["robots"]) == {"robot1", "robot2", "robot3"}
    assert alone["gpu_utilisation"] < three["gpu_utilisation"] <= 1.0
    shares = [r["gpu_share"] for r in three["robots"].values()]
    assert sum(shares) == pytest.approx(three["gpu_utilisation"], abs=0.02)
    assert all(r["phases"] >= 1 and r["uplink_kbps"] > 0 and r["downlink_kbps"] > 0 for r in three["robots"].values())
    assert three["robots"]["robot1"]["phases"] < alone["robots"]["robot1"]["phases"]
    # fused phases cost less GPU time than the same phases one after another
    fused = fleet.run_fleet(clips, student, slow, "round_robin", fused=True)
    assert fused["gpu_utilisation"] < three["gpu_utilisation"]
    # (issue #31) the GPU's time is the teacher's plus the training's
    assert three["gpu_teacher"] > 0 and three["gpu_training"] > 0
    assert three["gpu_teacher"] + three["gpu_training"] == pytest.approx(three["gpu_utilisation"], abs=1e-3)


def test_time_a_lane_spends_outside_training_after_each_phase_leaves_fewer_phases_but_not_more_gpu_time(clip, student):
    slow = TINY.with_overrides({"teacher_s": 0.2})
    clips = [fleet.robot_clip(clip, j) for j in range(3)]
    plain = fleet.run_fleet(clips, student, slow, "round_robin")
    held = fleet.run_fleet(clips, student, slow.with_overrides({"phase_overhead_s": 1.0}), "round_robin")
    phases = lambda r: sum(x["phases"] for x in r["robots"].values())  # noqa: E731
    assert phases(held) < phases(plain)
    # each phase still costs the GPU its training only
    assert held["gpu_training"] / phases(held) == pytest.approx(plain["gpu_training"] / phases(plain), rel=1e-3)  # figures rounded to 4 places


def test_a_robot_served_alone_is_named_and_seeded_as_in_the_fleet(clip, student) -> None:
    """Its reference run uses its own name and seed (before, robot j alone trained with seed 0 and
    every fleet loss held a seed's noise); on a GPU that costs nothing it gets the same phases.
    (mIoU is not compared bit for bit: training on this CPU is not bit-reproducible from one call
    to the next in one process, about 0.1 point here.)"""
    free = TINY.with_overrides({"teacher_s": 0.0, "train_s_per_step": 1e-6})
    clips = [fleet.robot_clip(clip, j) for j in range(2)]
    in_fleet = fleet._FleetRun(clips, student, free, "round_robin", False, None, None, lambda n: None)
    alone = fleet._FleetRun(clips[1:], student, free, "round_robin", False, None, None, lambda n: None, first_robot=1)
    assert [r.name for r in alone.robots] == ["robot2"]
    assert alone.robots[0].session.trainer.config.seed == in_fleet.robots[1].session.trainer.config.seed == free.seed + 1
    a, b = alone.run()["robots"]["robot2"], in_fleet.run()["robots"]["robot2"]
    assert a["phases"] == b["phases"] >= 2


def test_a_teacher_that_labels_a_batch_in_one_call_costs_the_gpu_less_and_leaves_more_for_training(clip, student) -> None:
    per_frame = TINY.with_overrides({"teacher_s": 0.2})                       # 5 frames: 1.0 s
    batched = TINY.with_overrides({"teacher_call_s": 0.15, "teacher_s": 0.05})  # one frame still 0.2 s; 5: 0.4 s
    assert batched.teacher_cost_s(1) == pytest.approx(per_frame.teacher_cost_s(1))
    assert batched.teacher_cost_s(5) == pytest.approx(0.4) and batched.teacher_cost_s(0) == 0.0
    clips = [fleet.robot_clip(clip, j) for j in range(3)]
    a = fleet.run_fleet(clips, student, per_frame, "round_robin")
    b = fleet.run_fleet(clips, student, batched, "round_robin")
    assert b["gpu_teacher"] < a["gpu_teacher"]
    assert sum(r["phases"] for r in b["robots"].values()) >= sum(r["phases"] for r in a["robots"].values())


def test_staggered_batches_wait_less_for_a_shared_gpu_than_batches_in_lockstep(clip, student) -> None:
    # per robot and 5 s period: 5 frames x 0.1 s of teacher + 2 steps x 0.5 s = 1.5 s of GPU; in lockstep
    # robot2's batch waits behind robot1's work every period, staggered (its periods 3.1 s later) it does not
    busy = TINY.with_overrides({"teacher_s": 0.1})
    clips = [fleet.robot_clip(clip, j) for j in range(2)]
    lockstep = fleet.run_fleet(clips, student, busy, "round_robin")
    staggered = fleet.run_fleet(clips, student, busy.with_overrides({"fleet_stagger": True}), "round_robin")
    delay = lambda r, d: r["robots"][d]["update_delay_s"]  # noqa: E731
    assert delay(staggered, "robot2") < delay(lockstep, "robot2") - 0.5, (staggered, lockstep)
    assert delay(staggered, "robot1") == pytest.approx(delay(lockstep, "robot1"), abs=0.3)  # robot 0: a whole period
    assert staggered["gpu_utilisation"] == pytest.approx(lockstep["gpu_utilisation"], rel=0.1)  # the same work


def test_robots_capped_at_their_share_of_a_saturated_gpu_get_their_updates_sooner(clip, student) -> None:
    """(issue #31) Three robots whose frames alone outgrow the GPU (5 frames x 0.5 s of teacher per 5 s
    period each): first come first served, the labelling queue grows and every phase waits behind it;
    with each robot's rate capped at its share, fewer frames are labelled and the phases come sooner."""
    over = TINY.with_overrides({"teacher_s": 0.5, "r_min": 0.1, "r_max": 1.0})
    clips = [fleet.robot_clip(clip, j) for j in range(3)]
    queued = fleet.run_fleet(clips, student, over, "round_robin")
    shared = fleet.run_fleet(clips, student, over.with_overrides({"fleet_rate_share": True}), "round_robin")
    delay = lambda r: np.mean([f["update_delay_s"] for f in r["robots"].values()])  # noqa: E731
    phases = lambda r: sum(f["phases"] for f in r["robots"].values())  # noqa: E731
    assert delay(shared) < 0.7 * delay(queued), (delay(shared), delay(queued))
    assert phases(shared) >= phases(queued)
    assert shared["gpu_teacher"] < queued["gpu_teacher"] and shared["gpu_training"] >= queued["gpu_training"]
    assert all(f["uplink_kbps"] < g["uplink_kbps"] for f, g in zip(shared["robots"].values(), queued["robots"].values()))


def test_batches_beyond_max_pending_are_dropped_as_the_teacher_labeler_drops_them(clip, student) -> None:
    """(issue #31) Past capacity the real base station keeps at most max_pending_batches of a robot waiting
    for the teacher (the oldest dropped); the model does the same, so its queues, and the phases' wait
    behind them, stay bounded, and the GPU time goes to phases. fleet_max_pending=0 labels every batch (the figures before it)."""
    over = TINY.with_overrides({"teacher_s": 0.5})
    clips = [fleet.robot_clip(clip, j) for j in range(3)]
    every = fleet.run_fleet(clips, student, over.with_overrides({"fleet_max_pending": 0}), "round_robin")
    capped = fleet.run_fleet(clips, student, over.with_overrides({"fleet_max_pending": 1}), "round_robin")
    assert all(f["batches_dropped"] == 0 for f in every["robots"].values())
    assert sum(f["batches_dropped"] for f in capped["robots"].values()) >= 2
    phases = lambda r: sum(f["phases"] for f in r["robots"].values())  # noqa: E731
    # the GPU time the dropped batches would have taken goes to the phases
    assert capped["gpu_teacher"] < every["gpu_teacher"] and capped["gpu_training"] > every["gpu_training"]
    assert phases(capped) > phases(every), (phases(capped), phases(every))
    assert PRESETS["cpu-quick"].fleet_max_pending == MAX_PENDING_BATCHES == 4  # the teacher labeler's default


def _study(losses: dict[tuple[int, str], tuple[float, float]]) -> dict:
    return {"runs": [{"n": n, "policy": pol, "partial": False, "mean_miou_loss": m, "worst_miou_loss": w}
                     for (n, pol), (m, w) in losses.items()]}


def test_the_largest_n_under_a_budget_takes_the_best_policy_at_each_n_and_stops_at_the_first_n_over_it() -> None:
    study = _study({(1, "round_robin"): (0.0, 0.0), (3, "round_robin"): (1.4, 2.0), (3, "utility"): (0.8, 1.5),
                    (6, "utility"): (1.2, 3.0), (9, "utility"): (0.9, 2.5)})
    assert fleet.largest_n_under(study, 1.0) == 3  # 6 is over: 9's lucky 0.9 does not count
    assert fleet.largest_n_under(study, 1.0, policy="round_robin") == 1
    assert fleet.largest_n_under(study, 1.0, worst=True) == 1
    answer = fleet.plan(study, 1.0, [10, 200])
    assert answer["robots_per_gpu"] == {"mean": 3, "worst": 1} and answer["largest_n_tested"] == 9
    assert answer["gpus"] == {"10": {"mean": 4, "worst": 10}, "200": {"mean": 67, "worst": 200}}
    assert fleet.plan(_study({(1, "utility"): (2.0, 2.0)}), 1.0, [10])["gpus"]["10"] == {"mean": None, "worst": None}


def test_parse_alone_takes_all_none_or_robots_and_ranges_and_names_robots_outside_the_fleet() -> None:
    assert fleet.parse_alone("all", 4) == [1, 2, 3, 4] and fleet.parse_alone("none", 4) == []
    assert fleet.parse_alone("3-4,1", 4) == [1, 3, 4]
    with pytest.raises(ValueError, match=r"names robots \[5, 6\] outside 1..4"):
        fleet.parse_alone("2-6", 4)
    with pytest.raises(ValueError, match="is not all, none or a list"):
        fleet.parse_alone("first", 4)


def test_fleet_cli_writes_json_markdown_and_plot_for_every_n_and_policy(tmp_path) -> None:
    out = tmp_path / "fleet"
    rc = eval_main(["fleet", "--sources", SPEC, "--robots", "1,2", "--policies", "round_robin,utility",
                    "--teacher", "oracle:0?shifts=20", "--max-seconds", "30", "--cache", "", "--quiet",
                    "--out", str(out), *TINY_SET])
    assert rc == 0
    data = json.loads((out / "fleet.json").read_text())
    assert [(r["n"], r["policy"]) for r in data["runs"]] == [(1, "round_robin"), (1, "utility"),
                                                              (2, "round_robin"), (2, "utility")]
    assert set(data["alone"]) == {"robot1", "robot2"} and not data["partial"]
    assert all(r["mean_miou_loss"] is not None for r in data["runs"])
    assert data["preset"]["teacher_s"] == 0.25
    md = (out / "fleet.md").read_text()
    assert "| 2 | utility |" in md and "teacher 0 s a call + 0.25 s a frame" in md
    assert "Largest N under 1 point of mIoU loss" in md
    assert (out / "fleet_miou_loss.png").stat().st_size > 0
    # (issue #31) the operator's answer from the same study
    answer = tmp_path / "plan.json"
    assert eval_main(["plan", str(out / "fleet.json"), "--loss-budget", "100", "--fleets", "10,50",
                      "--out", str(answer)]) == 0
    plan = json.loads(answer.read_text())
    assert plan["robots_per_gpu"] == {"mean": 2, "worst": 2} and plan["gpus"]["50"] == {"mean": 25, "worst": 25}


def test_ctrl_c_keeps_the_runs_done_and_marks_the_study_partial(tmp_path, monkeypatch) -> None:
    real = fleet.run_fleet
    calls = []

    def interrupting(clips, *a, **kw):
        calls.append(len(clips))
        if len(calls) == 4:  # after robot1 and robot2 alone and N=1 round_robin
            raise KeyboardInterrupt
        return real(clips, *a, **kw)

    monkeypatch.setattr(fleet, "run_fleet", interrupting)
    out = tmp_path / "fleet"
    rc = eval_main(["fleet", "--sources", SPEC, "--robots", "1,2", "--policies", "round_robin",
                    "--teacher", "oracle:0?shifts=20", "--max-seconds", "30", "--cache", "", "--quiet",
                    "--out", str(out), *TINY_SET])
    assert rc == 130
    data = json.loads((out / "fleet.json").read_text())
    assert data["partial"] is True
    assert [r["n"] for r in data["runs"]] == [1]
    assert "PARTIAL" in (out / "fleet.md").read_text()
