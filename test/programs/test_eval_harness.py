"""ams-eval: stream-time delivery, baseline rules, label propagation, outputs, Ctrl-C, AMS vs none.

Everything runs on the synthetic world (exact labels, an oracle teacher, scheduled domain
shifts) at 64x32, so the whole file takes well under a minute on two shared cores.
"""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch

from ams_ros.core import sources as _sources  # noqa: F401 (registers the oracle teacher)
from ams_ros.core.models.pretraining import distill
from ams_ros.core.models.weights import load_student
from ams_ros.core.models.teachers import build_teacher
from ams_ros.core.models.params import flatten_params
from ams_ros.eval import schemes as S
from ams_ros.eval import simulator as sim
from ams_ros.eval.baselines import (
    KeyFrameDistiller,
    KeyFrameSchedule,
    LabelTracker,
    decoder_tail,
    jit_next_stride,
    keyframe_accuracy,
    shadowtutor_next_stride,
)
from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.presets import PRESETS, get_preset, parse_overrides
from ams_ros.eval.clips import load_clip, open_source, select_frames

SIZE = (64, 32)
SPEC = "synthetic:0?shifts=30"
TINY = PRESETS["cpu-quick"].with_overrides({
    "width": 64, "height": 32, "eval_fps": 1, "iterations": 10, "batch_size": 4, "lr": 2e-3, "gamma": 0.1,
    "train_speedup": 50, "jit_max_steps": 2, "shadowtutor_max_steps": 2, "one_time_s": 20,
})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    return build_teacher("oracle:0?shifts=30")


@pytest.fixture(scope="module")
def clip(teacher):
    return load_clip(SPEC, SIZE, teacher, None, eval_fps=1.0, max_seconds=90.0, progress=False)


@pytest.fixture(scope="module")
def student(clip):
    """Good on the world before its shift at 30 s (the "no customization" model)."""
    torch.manual_seed(0)
    model = load_student("deeplabv3_mobilenet_v2", num_classes=clip.num_classes)
    frames = [f for _, t, f in clip.frames() if t < 29.0]
    pre = list(zip(frames, [np.asarray(clip.teacher[i]) for i in range(len(frames))]))
    distill(model, pre, steps=80, batch_size=8, lr=2e-3)
    return model.eval()


def _ctx(clip, student, preset=TINY, teacher=None):
    return sim.RunContext(clip, student, preset, teacher=teacher)


# delays big enough to see, and deterministic: 0.2 s of server time per optimiser step
# a short horizon: after the shift AMS trains on the new scene, not on 4 minutes of the old one
SLOW_LINKS = TINY.with_overrides({"train_s_per_step": 0.2, "downlink_bps": 2_000_000, "horizon_s": 20, "iterations": 20})


@pytest.fixture(scope="module")
def ams_run(clip, student):
    """One AMS replay of the clip, recording (stream time, edge version) at every scored frame."""
    seen: list[tuple[float, int]] = []
    real = sim.EdgeDevice.infer

    def spy(self, frame):
        seen.append((self.now, self.version))
        return real(self, frame)

    sim.EdgeDevice.infer = spy
    try:
        ctx = _ctx(clip, student, SLOW_LINKS)
        res = S.run_scheme(ctx, "ams")
    finally:
        sim.EdgeDevice.infer = real
    return res, ctx.started[0], seen


@pytest.fixture(scope="module")
def none_run(clip, student):
    return S.run_scheme(_ctx(clip, student), "none")


# ----------------------------------------------------------------------------- rules


def test_jit_stride_doubles_on_success_and_halves_on_failure_within_8_and_64():
    assert jit_next_stride(8, True) == 16 and jit_next_stride(16, True) == 32
    assert jit_next_stride(32, False) == 16 and jit_next_stride(16, False) == 8
    assert jit_next_stride(64, True) == 64 and jit_next_stride(8, False) == 8


def test_shadowtutor_stride_rule_numbers():
    # a > t: ratio = (a + 1 - 2t) / (1 - t); a <= t: ratio = a / t; clip(int(ratio * stride), 8, 64)
    assert shadowtutor_next_stride(16, 0.875, 0.75) == 24   # ratio 1.5
    assert shadowtutor_next_stride(20, 0.75, 0.5) == 30     # ratio 1.5
    assert shadowtutor_next_stride(20, 0.25, 0.5) == 10     # ratio 0.5
    assert shadowtutor_next_stride(16, 0.4, 0.8) == 8       # clipped at 8
    assert shadowtutor_next_stride(40, 0.99, 0.8) == 64     # ratio 1.95 -> 78, clipped at 64
    assert shadowtutor_next_stride(16, float("nan"), 0.8) == 8


def test_keyframe_schedule_counts_frames_of_the_nominal_rate():
    s = KeyFrameSchedule(8, 30.0)
    assert s.due(0.0)
    s.mark(0.0)
    assert not s.due(0.25) and s.due(8 / 30)
    s.set_stride(64)
    assert not s.due(2.0) and s.due(64 / 30)


def test_keyframe_accuracy_miou_and_min_iou():
    ref = np.zeros((4, 4), np.uint8)
    ref[:, 2:] = 1
    pred = ref.copy()
    pred[0, 2] = 0  # one pixel of class 1 wrong
    miou_v = keyframe_accuracy(pred, ref, 2, "miou")
    assert keyframe_accuracy(pred, ref, 2, "min_iou") == pytest.approx(7 / 8)
    assert miou_v == pytest.approx((8 / 9 + 7 / 8) / 2)


def test_a_synthetic_clip_is_labelled_by_its_own_worlds_oracle():
    """``--teacher oracle`` (world 0's) on a ``synthetic:1`` clip: the labels are world 1's truth."""
    c = load_clip("synthetic:1", (64, 32), build_teacher("oracle"), eval_fps=1.0, max_seconds=12.0,
                  cache_dir=None, progress=False)
    agree = np.mean([np.mean(np.asarray(c.teacher[i]) == np.asarray(c.gt[i])) for i in range(len(c))])
    assert agree > 0.9, agree


def test_an_oracle_cannot_label_a_shifted_copy_of_a_synthetic_clip_from_received_frames(clip, student):
    from ams_ros.eval.fleet import robot_clip

    shifted = robot_clip(clip, 1)
    with pytest.raises(ValueError, match="server_labels=reference"):
        sim.RunContext(shifted, student, get_preset("paper").with_overrides({"server_labels": "received"}),
                       teacher=build_teacher("oracle"))
    sim.RunContext(shifted, student, get_preset("paper").with_overrides({"server_labels": "reference"}),
                   teacher=build_teacher("oracle"))  # its stored labels are shifted with it


def test_presets_and_scheme_specs_are_checked():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("turbo")
    p = get_preset("paper")
    assert (p.width, p.height, p.update_period_s, p.horizon_s, p.iterations, p.gamma, p.bitrate_bps,
            p.r_min, p.r_max, p.eval_fps) == (512, 256, 10.0, 240.0, 20, 0.05, 200_000, 0.1, 1.0, 0.0)
    assert get_preset("cpu-quick").with_overrides(parse_overrides(["jit_threshold=0.6 adaptive_update_period=on"])) \
        .jit_threshold == 0.6
    spec = S.parse_scheme("jit:threshold=0.6,gamma=1")
    q = spec.preset_for(p)
    assert q.jit_threshold == 0.6 and q.jit_gamma == 1.0 and q.gamma == p.gamma
    assert S.parse_scheme("ams:strategy=random,gamma=0.1").preset_for(p).strategy == "random"
    assert p.uplink_codec == "h264" and S.parse_scheme("ams:uplink_codec=av1").preset_for(p).uplink_codec == "av1"
    for bad, msg in (("turbo", "unknown scheme"), ("jit:speed=3", "unknown preset field"),
                     ("ams:strategy=best", "unknown selection strategy"), ("jit:0.6", "KEY=VALUE"),
                     ("ams:uplink_codec=jpeg", "not a video codec; choose from h264, h265, av1")):
        with pytest.raises(ValueError, match=msg):
            S.parse_scheme(bad)
    assert len(S.table3_specs()) == 1 + 5 * 4


# ----------------------------------------------------------------------------- stream time


def test_links_and_server_are_fifo_and_take_time():
    link = sim.Link(8_000.0, latency_s=0.01)  # 1000 bytes/s
    assert link.send(0.0, 500) == pytest.approx(0.51)
    assert link.send(0.1, 500) == pytest.approx(1.01)  # queued behind the first
    assert link.send(5.0, 0) == pytest.approx(5.01)
    server = sim.ServerClock()
    assert server.run(1.0, 2.0) == (1.0, 3.0)
    assert server.run(2.0, 1.0) == (3.0, 4.0)  # waits for the previous job


def test_ams_updates_are_used_only_after_training_and_transfer(ams_run, clip):
    res, run, seen = ams_run
    preset = SLOW_LINKS
    assert len(res.updates) >= 5
    for u in res.updates:
        # trained on data up to t_data, after that batch crossed the uplink; the server's time
        # covers the teacher on the frames of the batch and the measured training
        assert u.t_start > u.t_data
        assert u.t_ready - u.t_start >= preset.teacher_s + preset.iterations * 0.2 - 1e-9
        assert u.t_arrive >= u.t_ready + u.nbytes * 8 / preset.downlink_bps
    assert run.timer.measured_s > 0
    arrivals = sorted(u.t_arrive for u in res.updates)
    for t, version in seen:  # the edge runs exactly the updates that had arrived by each frame
        assert version == sum(a <= t for a in arrivals), (t, version)
    assert len(seen) == res.frames_done == len(clip) and res.uplink and res.downlink


def test_keyframe_updates_wait_for_the_server_and_the_link(clip, student):
    preset = TINY.with_overrides({"downlink_bps": 1_000_000, "train_speedup": 1.0})
    res = S.run_scheme(_ctx(clip.head(12), student, preset), "jit:max_steps=1")
    assert res.updates
    for u in res.updates:
        assert u.t_start >= u.t_data and u.t_ready >= u.t_start + preset.teacher_s
        assert u.t_arrive >= u.t_ready + u.nbytes * 8 / preset.downlink_bps
    starts = [u.t_start for u in res.updates]
    readies = [u.t_ready for u in res.updates]
    assert all(s >= r - 1e-9 for s, r in zip(starts[1:], readies[:-1]))  # one job at a time


def test_a_busy_server_trains_on_the_newest_key_frame(clip, student):
    # 3 s of server time per key frame, a key frame every second: two of three are stale
    preset = TINY.with_overrides({"teacher_s": 3.0})
    res = S.run_scheme(_ctx(clip.head(12), student, preset), "jit:max_steps=1")
    trained = [u.t_data for u in res.updates]
    assert res.params["stale_key_frames_dropped"] >= 5 and res.params["key_frames"] <= 5
    assert all(b - a >= 3.0 - 1e-9 for a, b in zip(trained, trained[1:]))
    for u in res.updates:  # what the server picked was the newest frame it had at the start
        assert u.t_start - u.t_data < 1.0 + 1e-6


# ----------------------------------------------------------------------------- baselines


def test_jit_distiller_trains_until_threshold_and_moves_only_gamma(clip, student):
    model = copy.deepcopy(student)
    frame = next(f for _, t, f in clip.frames() if t >= 40)
    label = np.asarray(clip.teacher[40])
    d = KeyFrameDistiller(model, clip.num_classes, optimizer="sgd", lr=0.01, momentum=0.9, max_steps=3,
                          threshold=0.999, gamma=0.05)
    before = flatten_params(model).numpy().copy()
    out = d.distill(frame, label)
    after = flatten_params(model).numpy()
    assert out.steps == 3 and not out.success
    moved = np.flatnonzero(after != before)
    assert 0 < moved.size <= round(0.05 * before.size)
    assert set(moved) <= set(out.indices) and out.indices.size == round(0.05 * before.size)
    easy = KeyFrameDistiller(copy.deepcopy(student), clip.num_classes, threshold=0.0, max_steps=8)
    done = easy.distill(frame, label)
    assert done.success and done.steps == 0 and done.indices.size == 0  # already good: no training


def test_diverging_key_frame_training_is_undone_and_nothing_is_shipped(clip, student):
    """SGD at lr 0.01 blows some weights past float16 on real footage: the step is undone."""
    model = copy.deepcopy(student)
    frame = next(f for _, t, f in clip.frames() if t >= 40)
    label = np.asarray(clip.teacher[40])
    before = flatten_params(model).numpy().copy()
    limit = float(np.abs(before).max()) + 1e-6  # the very first step crosses it
    d = KeyFrameDistiller(model, clip.num_classes, optimizer="sgd", lr=10.0, momentum=0.9, max_steps=3,
                          threshold=0.999, max_abs_weight=limit)
    out = d.distill(frame, label)
    assert d.diverged == 1 and out.steps == 0 and not out.success
    assert out.indices.size == 0  # nothing to ship
    assert np.array_equal(flatten_params(model).numpy(), before)
    assert d.opt.state == {} or all(not s for s in d.opt.state.values())


def test_an_update_the_edge_rejects_is_reported_and_the_edge_keeps_its_model(clip, student):
    from ams_ros.core.wire.encodings import encode_update

    run = sim.SchemeRun(_ctx(clip, student), "x", "none")
    edge = run.new_edge()
    n = flatten_params(student).numel()
    idx = np.arange(0, n, 100)
    bad = encode_update(student, idx, np.full(idx.size, 1e6, np.float32), base_version=0, new_version=1)
    good = encode_update(student, idx, flatten_params(student).numpy()[idx] + 1e-3, base_version=0, new_version=1)
    edge.deliver(1.0, bad)    # 1e6 does not fit float16: the edge's verification refuses it
    edge.deliver(2.0, good)
    edge.advance(1.5)
    assert edge.version == 0 and len(edge.rejected) == 1 and edge.rejected[0][0] == 1.0
    edge.advance(2.0)
    assert edge.version == 1
    res = run.finish()
    assert res.params["updates_rejected"] == 1
    assert any("rejected 1 update" in n for n in res.notes), res.notes


def test_shadowtutor_trains_and_ships_only_the_decoder_tail(clip, student):
    frame = next(f for _, t, f in clip.frames() if t >= 40)
    label = np.asarray(clip.teacher[40])
    model = copy.deepcopy(student)
    d = KeyFrameDistiller(model, clip.num_classes, optimizer="adam", lr=0.01, max_steps=2, threshold=0.999,
                          trainable=decoder_tail(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = d.distill(frame, label)
    tail = ("head.", "classifier.")
    for n, p in model.named_parameters():
        if n.startswith("backbone."):
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(tail))
    assert out.indices.size == sum(p.numel() for n, p in model.named_parameters() if n.startswith(tail))
    best = KeyFrameDistiller(copy.deepcopy(student), clip.num_classes, optimizer="adam", lr=0.05, max_steps=3,
                             threshold=0.999, trainable=decoder_tail(student), keep_best=True)
    kept = best.distill(frame, label)
    assert kept.acc_after >= kept.acc_before  # ShadowTutor keeps the best model, never a worse one
    assert kept.indices.size in (0, out.indices.size)


def test_tracking_moves_a_moving_objects_label():
    rng = np.random.default_rng(0)

    def texture(h, w):
        g = cv2.GaussianBlur(rng.normal(0, 1, (h, w)), (0, 0), 3)
        return np.uint8(np.clip(128 + g / g.std() * 40, 0, 255))

    bg, patch = texture(64, 128), texture(32, 32)

    def frame(x):
        g = bg.copy()
        g[16:48, x:x + 32] = patch
        lab = np.zeros((64, 128), np.uint8)
        lab[16:48, x:x + 32] = 1
        return g, lab

    g0, lab0 = frame(42)
    g1, lab1 = frame(46)  # the object moved 4 px right
    tracker = LabelTracker()
    tracker.reset(lab0, g0)
    moved = tracker.track(g1)
    cx = lambda m: np.argwhere(m == 1)[:, 1].mean()  # noqa: E731
    assert abs(cx(moved) - cx(lab1)) < 1.5 and cx(moved) - cx(lab0) > 2.5
    assert np.mean(moved == lab1) > np.mean(lab0 == lab1) + 0.015


def test_remote_tracking_sends_one_frame_per_second_and_labels_follow(clip, student, none_run):
    res = S.run_scheme(_ctx(clip, student), "remote_tracking")
    assert len(res.updates) == len(clip)  # 1 fps clip: every frame goes up at full quality
    none = none_run
    late = np.asarray(res.times) > 35
    assert np.nanmean(np.asarray(res.frame_miou)[late]) > np.nanmean(np.asarray(none.frame_miou)[late])


def test_remote_tracking_robots_queue_on_the_shared_teacher_and_saturate_it(clip, student):
    """N robots at 1 fps, each at its own sampling phase, share a teacher of 0.25 s per frame.
    Below saturation (N <= 4) a label waits at most for the others' frames of one interval, and
    the delay does not grow over the stream; at N = 5 the teacher needs 1.25 s per second of
    stream and the delay grows by 0.25 s a second. One robot alone is the paper's set-up."""
    preset = TINY.with_overrides({"teacher_s": 0.25, "rt_fps": 1.0})
    delays = {}
    for n in (1, 4, 5):
        res = S.run_scheme(_ctx(clip, student, preset), f"remote_tracking:robots={n}")
        delays[n] = np.asarray([u.t_arrive - u.t_data for u in res.updates])
    base = delays[1]
    extra4 = delays[4] - base  # the wait for the other robots' frames
    assert extra4.min() >= -1e-9 and extra4.max() <= 3 * 0.25 + 1e-6, extra4
    assert extra4.max() > 0.0  # with three other robots some frames do wait
    half = len(extra4) // 2
    assert abs(extra4[half:].mean() - extra4[:half].mean()) < 0.05  # stable: it does not grow
    extra5 = delays[5] - base
    per_s = np.polyfit(np.arange(len(extra5)), extra5, 1)[0]
    assert per_s == pytest.approx(0.25, abs=0.03), per_s  # 5 x 0.25 s of work per second of stream
    with pytest.raises(ValueError, match="rt_robots must be >= 1"):
        S.run_scheme(_ctx(clip, student, preset), "remote_tracking:robots=0")


# ----------------------------------------------------------------------------- AMS vs none


def test_ams_beats_none_after_a_domain_shift(ams_run, none_run):
    ams, none = ams_run[0], none_run
    after = np.asarray(ams.times) >= 60  # the shift is at 30 s; three phases later
    a = np.nanmean(np.asarray(ams.frame_miou)[after])
    b = np.nanmean(np.asarray(none.frame_miou)[after])
    print(f"mIoU after the shift: ams {a:.3f}, none {b:.3f}")
    assert a > b + 0.03, (a, b)
    assert ams.rates and all(0.1 <= r <= 1.0 for _, r in ams.rates)
    # the downlink carries about gamma of the model per update
    assert all(u.nbytes < 0.3 * 2 * 2.1e6 for u in ams.updates)


def test_a_clip_shorter_than_one_period_says_why_ams_never_updated(clip, student):
    from ams_ros.eval.report import markdown, summarize

    short = clip.head(6)  # 6 s at 1 fps, T_update 10 s: the sampler never fills a batch
    res = S.run_scheme(_ctx(short, student), "ams")
    assert res.updates == [] and res.uplink == []
    assert any("shorter than" in n and "T_update=10" in n for n in res.notes), res.notes
    none = S.run_scheme(_ctx(short, student), "none")
    s = {"source": "x", "preset": "p", "frames_evaluated": len(short), "stream_seconds": 5.0, "classes": ["a"],
         "schemes": {k: summarize(r, none, short.times, 0.0, 1.0) for k, r in (("none", none), ("ams", res))}}
    md = markdown(s)
    assert "Notes:" in md and "- `ams`: no update reached the edge" in md


# ----------------------------------------------------------------------------- outputs


def test_cli_writes_results_json_md_and_plots(tmp_path, student):
    weights = tmp_path / "student.pt"
    from ams_ros.core.models.weights import save_student_checkpoint

    save_student_checkpoint(student, weights, "deeplabv3_mobilenet_v2", 7)
    out = tmp_path / "ev"
    rc = eval_main(["run", "--source", "synthetic:1?shifts=8", "--teacher", "oracle:1?shifts=8", "--max-seconds", "12",
                    "--student-weights", str(weights), "--schemes", "ams,jit:max_steps=1+min_stride=30,one_time",
                    "--quiet",
                    "--set", "width=64", "--set", "height=32", "--set", "eval_fps=2", "--set", "one_time_s=6",
                    "--set", "update_period_s=5", "--set", "iterations=2", "--set", "train_speedup=50",
                    "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["preset"] == "cpu-quick" and data["source"] == "synthetic:1?shifts=8"
    assert list(data["schemes"]) == ["none", "ams", "jit:max_steps=1,min_stride=30", "one_time"]
    assert data["schemes"]["jit:max_steps=1,min_stride=30"]["params"]["key_frames"] <= 13
    for name, s in data["schemes"].items():
        assert {"miou_teacher", "miou_gt", "uplink_kbps", "downlink_kbps", "updates",
                "frac_frames_better_than_none"} <= set(s), name
        assert 0.0 <= s["miou_teacher"] <= 1.0 and 0.0 <= s["miou_gt"] <= 1.0
    assert data["schemes"]["none"]["updates"] == 0 and data["schemes"]["none"]["frac_frames_better_than_none"] is None
    assert data["schemes"]["one_time"]["updates"] == 1 and data["schemes"]["ams"]["updates"] >= 1
    assert 0.0 <= data["schemes"]["ams"]["frac_frames_better_than_none"] <= 1.0
    assert data["preset_params"]["width"] == 64 and data["overrides"]["width"] == "64" and not data["partial"]
    md = (out / "results.md").read_text()
    assert "| mIoU vs teacher (%) |" in md and "AMS" in md and "cpu-quick" in md
    pngs = ("miou_over_time.png", "gain_cdf.png", "sampling_rate.png", "bandwidth.png")
    for png in pngs:
        assert (out / png).stat().st_size > 1000
    assert any((tmp_path / "cache").iterdir())  # the teacher's labels are cached for the next run
    # series.json keeps every scheme's per-frame series: the figures are redrawn without a rerun
    from ams_ros.eval.report import read_series

    times, series = read_series(out)
    assert len(times) == data["frames_evaluated"] and list(series) == list(data["schemes"])
    ams = series["ams"]
    assert len(ams.window_miou) == len(ams.times) == data["schemes"]["ams"]["frames"]
    assert len(ams.updates) == data["schemes"]["ams"]["updates"] and ams.updates[0].t_arrive > ams.updates[0].t_data
    assert sum(b for _, b in ams.downlink) == data["schemes"]["ams"]["downlink_bytes"]
    for png in pngs:
        (out / png).unlink()
    assert eval_main(["replot", str(out)]) == 0
    for png in pngs:
        assert (out / png).stat().st_size > 1000
    assert eval_main(["replot", str(tmp_path)]) == 2  # not a run folder: a clear error, not a traceback


def _tiny_cli(tmp_path, schemes: str, seconds: float):
    """ams-eval on a few seconds of the synthetic world at 64x32, 2 fps; (output folder, exit code)."""
    out = tmp_path / "ev"
    rc = eval_main(["run", "--source", "synthetic:0", "--teacher", "oracle:0", "--max-seconds", str(seconds), "--quiet",
                    "--schemes", schemes, "--set", "width=64", "--set", "height=32", "--set", "eval_fps=2",
                    "--cache", "", "--out", str(out)])
    return out, rc


def test_ctrl_c_writes_partial_results(tmp_path, monkeypatch):
    real = S.run_ams

    def interrupted(ctx, spec):
        calls = {"n": 0}
        progress = ctx.progress

        def tick(n):
            calls["n"] += 1
            progress(n)
            if calls["n"] == 5:
                raise KeyboardInterrupt
        ctx.progress = tick
        return real(ctx, spec)

    monkeypatch.setitem(S.RUNNERS, "ams", interrupted)
    out, rc = _tiny_cli(tmp_path, "ams,jit", 8)
    assert rc == 130
    data = json.loads((out / "results.json").read_text())
    assert data["partial"] is True
    assert data["schemes"]["none"]["frames"] == data["frames_evaluated"] and not data["schemes"]["none"]["partial"]
    assert data["schemes"]["ams"]["frames"] == 5 and data["schemes"]["ams"]["partial"]
    assert "jit" not in data["schemes"]  # never started
    assert "PARTIAL" in (out / "results.md").read_text()


def test_a_failing_scheme_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx, spec):
        run = sim.SchemeRun(ctx, spec.name, "ams")
        edge = run.new_edge()
        for n, (i, t, frame) in enumerate(ctx.clip.frames()):
            if n == 3:
                raise RuntimeError("training blew up")
            run.score(i, t, edge.infer(frame))

    monkeypatch.setitem(S.RUNNERS, "ams", broken)
    out, rc = _tiny_cli(tmp_path, "ams,remote_tracking", 6)
    assert rc == 1
    data = json.loads((out / "results.json").read_text())
    assert data["schemes"]["ams"]["frames"] == 3 and data["schemes"]["ams"]["partial"]
    assert any("FAILED after 3 frames: RuntimeError: training blew up" in n for n in data["schemes"]["ams"]["notes"])
    assert data["schemes"]["remote_tracking"]["frames"] == data["frames_evaluated"]  # ran after the failure
    assert "FAILED" in (out / "results.md").read_text()


def test_table3_style_table_when_strategies_run():
    from ams_ros.eval.report import markdown

    def s(m, strategy, gamma, bw):
        return {"miou_teacher": m, "miou_gt": None, "uplink_kbps": 10.0, "downlink_kbps": bw, "updates": 3,
                "frac_frames_better_than_none": 0.5, "mean_update_delay_s": 1.0, "frames": 5, "frames_total": 5,
                "partial": False, "params": {"strategy": strategy, "gamma": gamma}}

    summary = {"source": "x", "preset": "cpu-quick", "classes": ["a"], "frames_evaluated": 5, "stream_seconds": 5,
               "schemes": {"ams:strategy=full,gamma=1.0": s(0.60, "full", 1.0, 3000.0),
                           "ams:strategy=random,gamma=0.05": s(0.55, "random", 0.05, 200.0),
                           "ams:strategy=gradient_guided,gamma=0.05": s(0.59, "gradient_guided", 0.05, 205.0)}}
    md = markdown(summary)
    assert "| random | -5.00 (200) |" in md and "| gradient_guided | -1.00 (205) |" in md


# ----------------------------------------------------------------------------- sources, pretraining


def test_frames_are_selected_by_stream_time_and_replayed_identically(clip, teacher):
    assert select_frames([0, 0.1, 0.2, 0.5, 0.9, 1.0, 1.6], 2.0) == [0, 3, 5, 6]
    assert select_frames([0, 1, 2], 0) == [0, 1, 2]
    lazy = load_clip(SPEC, SIZE, teacher, None, eval_fps=1.0, max_seconds=5.0, progress=False, in_memory=False)
    eager = load_clip(SPEC, SIZE, teacher, None, eval_fps=1.0, max_seconds=5.0, progress=False)
    assert lazy._frames is None and len(lazy) == len(eager) == 6
    for (i, t, f), (j, u, g) in zip(lazy.frames(), eager.frames()):
        assert i == j and t == u and np.array_equal(f, g)
    assert clip.has_gt.all() and clip.gt is not None and clip.times[1] - clip.times[0] == pytest.approx(1.0)


def test_pretrain_refuses_the_evaluated_clip_and_writes_a_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "s.pt"
    args = ["pretrain", "--sources", "synthetic:3", "--teacher", "oracle:3", "--steps", "20", "--batch-size", "4",
            "--max-seconds", "20", "--set", "width=64", "--set", "height=32", "--cache", "", "--out", str(ckpt)]
    assert eval_main(args + ["--exclude", "synthetic:3"]) == 2
    assert "evaluated footage" in capsys.readouterr().err
    assert eval_main(args) == 0
    meta = torch.load(ckpt, weights_only=True)
    assert meta["pretrained_on"] == ["synthetic:3"] and 0.0 <= meta["heldout_miou"] <= 1.0
    assert "held-out mIoU vs teacher after" in capsys.readouterr().out
    model = load_student("deeplabv3_mobilenet_v2", 7, weights=str(ckpt))
    assert model is not None


def test_camvid_folder_gives_human_labels_in_the_selected_classes(assets):
    from ams_ros.core.models.labels import CITYSCAPES

    teacher = build_teacher(f"tflite:{assets}/models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite")
    space, lut = CITYSCAPES.restrict(["road", "sidewalk", "building", "vegetation", "sky", "person", "car"])
    c = load_clip(str(assets / "video" / "camvid-0006R0"), SIZE, teacher, lut, max_seconds=2.0, progress=False)
    assert len(c) == 3 and c.nominal_fps == 30.0 and c.class_names == space.class_names
    assert c.has_gt.all() and set(np.unique(c.gt)) <= set(range(7)) | {255}
    assert set(np.unique(c.teacher)) <= set(range(7)) | {255}
    road = (np.asarray(c.gt) == 0) & (np.asarray(c.teacher) != 255)
    assert road.any() and np.mean(np.asarray(c.teacher)[road] == 0) > 0.7  # the teacher sees the road too


def _write_image_bag(path, frames, stamps, encoding="rgb8"):
    """A rosbag2 (sqlite3) with one sensor_msgs/Image topic, written with ``rosbags``."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9) as w:
        other = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        conn = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        w.write(other, 1, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
        for f, t in zip(frames, stamps):
            data = f[..., ::-1] if encoding == "bgr8" else f
            sec, nsec = int(t), int(round((t - int(t)) * 1e9))
            msg = Image(header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id="cam"), height=f.shape[0],
                        width=f.shape[1], encoding=encoding, is_bigendian=0, step=f.shape[1] * 3,
                        data=np.ascontiguousarray(data).reshape(-1))
            w.write(conn, int(t * 1e9), ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_a_rosbag_is_replayed_in_stream_time_from_its_image_topic(tmp_path, clip, encoding):
    """A robot's own recording as the evaluated source: the first Image topic, stamps from t=0."""
    frames = [f for _, _, f in clip.frames()][:4]
    stamps = [100.0, 100.5, 101.0, 102.25]  # a recording's wall-clock stamps
    bag = tmp_path / "bag"
    _write_image_bag(bag, frames, stamps, encoding)
    got = list(open_source(str(bag)))
    assert [round(t, 6) for t, _, _ in got] == [0.0, 0.5, 1.0, 2.25]
    for (_, rgb, gt), f in zip(got, frames):
        assert gt is None and np.array_equal(rgb, f)
    scored = load_clip(str(bag), SIZE, build_teacher("oracle:0?shifts=30"), None, eval_fps=1.0, progress=False)
    assert list(scored.times) == [0.0, 1.0, 2.25]  # one frame per 1 s slot
    assert scored.gt is None


def test_rate_and_bandwidth_bins_end_with_the_clip():
    from ams_ros.eval.report import _bin_edges

    assert _bin_edges(0.0, 30.08, 10.0).tolist() == [0.0, 10.0, 20.0, 30.08]  # a sliver joins the last bin
    assert _bin_edges(0.0, 276.0, 10.0)[-2:].tolist() == [270.0, 276.0]
    assert _bin_edges(0.0, 5.0, 10.0).tolist() == [0.0, 5.0]  # a clip shorter than one bin
    assert _bin_edges(3.0, 3.0, 10.0).tolist() == [3.0, 13.0]  # a single frame still gets a bin
