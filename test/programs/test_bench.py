"""ams-bench runs end to end (tiny settings) and reports what it promises: update sizes per
encoding and fraction, and decode+apply time per encoding. Figures are printed, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ams_ros.core.wire.encodings import DEFAULT_UPDATE_ENCODING, ENCODINGS
from ams_ros.core.common.paths import SOURCE_ROOT as REPO_ROOT


def test_bench_reports_sizes_and_patch_time_for_every_encoding(tmp_path):
    out = tmp_path / "bench"
    # its own process, as users run it: its memory goes back to the system when it ends
    proc = subprocess.run([sys.executable, "-m", "ams_ros.bench", "--out", str(out), "--repeat", "1", "--iterations",
                           "1", "--update-width", "64", "--update-height", "32", "--device", "cpu",
                           "--precisions", "float32,bfloat16", "--teacher-width", "64", "--teacher-height", "64",
                           "--fused-k", "1,2", "--fused-width", "32", "--fused-height", "16", "--fused-iterations", "1",
                           "--uplink-codecs", "h264", "--uplink-kbps", "200"],  # all codecs: the uplink test below
                          cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[bench] patch decode+apply+swap (5%)" in proc.stdout + proc.stderr
    res = json.loads((out / "bench.json").read_text())
    assert set(res["patch_apply_ms_by_encoding"]) == set(ENCODINGS)
    assert all(ms > 0 for ms in res["patch_apply_ms_by_encoding"].values())
    assert res["patch_apply_encoding"] == DEFAULT_UPDATE_ENCODING
    assert res["patch_apply_ms"] == res["patch_apply_ms_by_encoding"][DEFAULT_UPDATE_ENCODING]
    for name, by_gamma in res["update_bytes"].items():
        sizes = [by_gamma[g] for g in ("0.01", "0.05", "0.1", "0.2")]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], (name, sizes)  # more parameters, more bytes
    # the quantised residual encodings beat the paper's float16+gzip at 5 %
    assert res["update_bytes"]["residual_lzma_q8"]["0.05"] < res["update_bytes"]["paper_gzip_fp16"]["0.05"]
    # inference beside the batch encoder: every torch x x264 thread pairing measured, the edge's default marked once
    beside = res["inference_beside_batch_encoder"]
    pairs = {(r["torch_threads"], r["encoder_threads"]) for r in beside["runs"]}
    assert pairs == {(t, x) for t in {1, max(1, beside["cores"] - 1), beside["cores"]} for x in (1, 0)}
    assert sum(r["edge_default"] for r in beside["runs"]) == 1
    assert all(r["during_encode_max_ms"] >= r["during_encode_median_ms"] > 0 for r in beside["runs"])
    # resync (issue #13): one catch-up grows with the versions missed and stays below a snapshot
    rs = res["resync"]
    catch = [rs[f"catch_up_bytes_{n}_behind"] for n in (1, 2, 4)]
    assert catch == sorted(catch) and catch[-1] < rs["snapshot_bytes"], rs
    # issue 16: student-phases per second fused vs sequential, for each k asked
    rows = res["fused_training"]["rows"]
    assert [r["k"] for r in rows] == [1, 2]
    assert all(r["fused_phases_per_s"] > 0 and r["sequential_phases_per_s"] > 0 for r in rows)
    within = res["smallest_encoding_within_10ms"]
    assert within is None or res["patch_apply_ms_by_encoding"][within] < 10.0
    # per device and precision (issue #14): inference, a phase, teacher per frame and per batch, patch apply
    dev = res["devices"]["cpu"]
    assert set(dev["precisions"]) == {"float32", "bfloat16"} and dev["phase_steps"] == 1
    for fig in dev["precisions"].values():
        assert fig["student_ms_512x256"] > 0 and fig["phase_s"] > 0
    assert dev["teacher_ms_per_10_frame_batch"] > 0 and dev["teacher_ms_per_frame"] > 0
    assert dev["patch_apply_ms_paper_gzip_fp16"] > 0 and dev["teacher"]["runs_on"] == "cpu"
    seg = res["segmenter_pipeline_256x128"]
    # the ratio comes from the unrounded times, the printed ms are rounded to 0.01
    assert seg["ratio_labels_only"] == pytest.approx(seg["labels_only_ms"] / seg["bare_model_ms"], rel=2e-3)
    assert "segmenter_labels_only_within_1.10x_of_bare_model" in res["targets"]


def test_bench_refuses_cuda_where_there_is_none_before_doing_any_work(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "ams_ros.bench", "--out", str(tmp_path), "--device", "cuda"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "device 'cuda'" in proc.stderr and "CUDA devices visible: 0" in proc.stderr
    assert "[bench] student" not in proc.stdout


def test_bytes_at_equal_agreement_interpolate_between_the_points_around_it():
    from ams_ros.bench.uplink import bytes_at_agreement

    rows = [{"bytes": 10_000, "pixel_agreement": 0.90}, {"bytes": 30_000, "pixel_agreement": 0.96},
            {"bytes": 20_000, "pixel_agreement": 0.94}]
    assert bytes_at_agreement(rows, 0.95) == pytest.approx(25_000)
    assert bytes_at_agreement(rows, 0.85) == 10_000  # the smallest batch already agrees enough
    assert bytes_at_agreement(rows, 0.97) is None     # never reached: no figure made up


def test_uplink_codecs_are_measured_on_real_frames_against_h264_at_200kbps():
    from ams_ros.bench.uplink import uplink_codecs, uplink_targets
    from ams_ros.core.common.assets import asset_path

    if asset_path("video/camvid-0016E5/frames") is None or asset_path("models/teacher") is None:
        pytest.skip("shared assets (CamVid frames, TFLite teacher) absent")
    res = uplink_codecs(codecs=("h264", "av1"), kbps_list=(100, 200))
    assert [r["kbps"] for r in res["curves"]["av1"]] == [100, 200]
    assert res["reference"]["codec"] == "h264" and res["reference"]["kbps"] == 200
    assert res["bytes_at_reference_agreement"]["h264"]["ratio_to_h264_200kbps"] <= 1.0
    for rows in res["curves"].values():
        assert rows[0]["bytes"] < rows[1]["bytes"] and all(0.5 < r["pixel_agreement"] <= 1.0 for r in rows)
    target = uplink_targets(res)
    assert list(target) == ["an_uplink_codec_halves_h264_bytes_at_equal_agreement_within_1s"]


def test_uplink_choices_always_hold_the_h264_reference_and_name_the_fix():
    from ams_ros.bench.uplink import uplink_choices

    assert uplink_choices("av1", "100") == (("h264", "av1"), (100, 200))
    assert uplink_choices("h264,h265", "300,50") == (("h264", "h265"), (50, 200, 300))
    with pytest.raises(ValueError, match="--uplink-codecs vp9: choose from h264, h265, av1"):
        uplink_choices("vp9", "200")
    with pytest.raises(ValueError, match="give whole Kbps"):
        uplink_choices("h264", "fast")
    with pytest.raises(ValueError, match="must be positive"):
        uplink_choices("h264", "-5")
