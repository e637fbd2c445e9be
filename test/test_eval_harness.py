"""ams-eval: baseline schedules, stream-time delivery, label propagation, outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ams_ros.core.labels import get_label_space
from ams_ros.core.models.student import load_student
from ams_ros.core.models.teachers import build_teacher
from ams_ros.eval import harness
from ams_ros.eval.cli import load_clip, main as eval_main
from ams_ros.eval.presets import PRESETS, get_preset
from ams_ros.eval.schemes import jit_next_stride, shadowtutor_next_stride

QUICK = PRESETS["cpu-quick"]


def test_jit_stride_doubles_and_halves_within_bounds():
    assert jit_next_stride(8, True) == 16 and jit_next_stride(16, False) == 8
    assert jit_next_stride(64, True) == 64 and jit_next_stride(8, False) == 8


def test_shadowtutor_stride_rule_numbers():
    # a > t: ratio = (a + 1 - 2t) / (1 - t) ; a <= t: ratio = a / t
    assert shadowtutor_next_stride(16, 0.875, 0.75) == 24  # ratio (0.875 + 1 - 1.5) / 0.25 = 1.5
    assert shadowtutor_next_stride(16, 0.4, 0.8) == 8
    assert shadowtutor_next_stride(40, 0.99, 0.8) == 64


def test_preset_names_are_checked():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("turbo")


@pytest.fixture(scope="module")
def clip():
    teacher = build_teacher("oracle:0?shifts=10")
    return load_clip("synthetic:0?shifts=10", (64, 32), 2.0, 30.0, teacher, None, progress=False)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return load_student("deeplabv3_mobilenet_v2", num_classes=len(get_label_space("synthetic").class_names)).eval()


def test_updates_are_used_only_after_they_arrive(clip, student, monkeypatch):
    seen = []
    real = harness._Edge.deliver

    def spy(self, t_arrive, apply):
        seen.append(t_arrive)
        real(self, t_arrive, apply)

    monkeypatch.setattr(harness._Edge, "deliver", spy)
    res = harness.run_ams(clip, student, QUICK, lambda n: None)
    assert res.updates >= 2 and len(seen) == res.updates
    # an update trained on the batch closed at t arrives strictly later (training + transfer)
    batch_ends = [t for t, _ in res.uplink]
    assert all(a > b for a, b in zip(seen, batch_ends))
    edge = harness._Edge(torch.nn.Linear(1, 1))
    hits = []
    edge.deliver(5.0, lambda m: hits.append(5.0))
    edge.advance(4.99)
    assert hits == []
    edge.advance(5.0)
    assert hits == [5.0]


def test_remote_tracking_moves_labels_with_the_scene(clip, student):
    res = harness.run_remote_tracking(clip, student, QUICK, lambda n: None)
    assert res.updates == len(harness._one_per_second(clip.times))
    # labels propagated between key frames are much better than the untrained local model
    none = harness.run_none(clip, student, QUICK, lambda n: None)
    assert res.cm_teacher.miou() > none.cm_teacher.miou() + 0.2


def test_jit_trains_on_key_frames_and_ships_sparse_updates(clip, student):
    res = harness.run_jit(clip, student, QUICK, lambda n: None)
    assert res.updates >= 1
    assert len(res.uplink) >= 2  # key frames go up at full quality
    none = harness.run_none(clip, student, QUICK, lambda n: None)
    assert res.cm_teacher.miou() > none.cm_teacher.miou()


def test_cli_writes_results_json_md_and_plots(tmp_path):
    out = tmp_path / "ev"
    rc = eval_main(["run", "--source", "synthetic:0?shifts=10", "--teacher", "oracle:0?shifts=10",
                    "--label-space", "synthetic", "--selected-classes", "", "--max-seconds", "12",
                    "--schemes", "ams,shadowtutor", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["preset"] == "cpu-quick" and data["source"] == "synthetic:0?shifts=10"
    assert set(data["schemes"]) == {"none", "ams", "shadowtutor"}
    for s in data["schemes"].values():
        assert {"miou_teacher", "miou_gt", "uplink_kbps", "downlink_kbps", "updates",
                "frac_frames_better_than_none"} <= set(s)
    assert "| ams |" in (out / "results.md").read_text()
    for png in ("miou_over_time.png", "gain_cdf.png", "sampling_rate.png", "bandwidth.png"):
        assert (out / png).exists()


def test_ctrl_c_keeps_what_was_computed(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setitem(harness.RUNNERS, "jit", boom)
    out = tmp_path / "ev"
    rc = eval_main(["run", "--source", "synthetic:0", "--teacher", "oracle:0", "--label-space", "synthetic",
                    "--selected-classes", "", "--max-seconds", "4", "--schemes", "jit", "--out", str(out)])
    assert rc == 130
    data = json.loads((out / "results.json").read_text())
    assert data["partial"] is True and "none" in data["schemes"]
