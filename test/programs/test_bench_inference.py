"""``ams-bench --only inference`` (issue #30) end to end at a tiny size: every runtime and thread
count asked for is timed bare, in the pipeline and across updates, with its labels against PyTorch's;
through the nodes where ROS is installed, through the core alone where it is not (tools/gpu_check.sh)."""

from __future__ import annotations

import argparse

import pytest

from ams_ros.bench import inference as inference_bench

pytestmark = [pytest.mark.ros]  # one test goes through the nodes (the others run without ROS too)

TINY = ["--device", "cpu", "--repeat", "1", "--inference-updates", "2", "--inference-width", "32",
        "--inference-height", "16", "--inference-backends", "torch,onnxruntime,openvino", "--inference-threads", "1"]


def tiny_args(extra: list[str] = ()) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--device")
    p.add_argument("--repeat", type=int)
    inference_bench.add_arguments(p)
    return p.parse_args([*TINY, *extra])


def check(res: dict, where: str) -> None:
    assert res["timed"] == where
    assert [r["backend"] for r in res["runs"]] == ["torch", "onnxruntime", "openvino"]
    for r in res["runs"]:
        assert r["threads"] == 1 and r["bare_ms"] > 0 and r[f"{where}_ms"] > 0
        assert r["updates"] == 2 and 0 < r["update_to_running_ms"] <= r["update_to_running_max_ms"]
        assert r["labels_equal_to_torch"] >= 0.999, r
    assert res["runs"][0]["labels_equal_to_torch"] == 1.0  # PyTorch against itself
    assert set(res["targets"]) >= {"one_core_at_least_30_fps", "update_running_within_1_s"}


def test_inference_figures_without_ros_time_the_core_pipeline(monkeypatch):
    monkeypatch.setattr(inference_bench, "_ros_context", lambda: None)
    check(inference_bench.run(tiny_args()), "pipeline_without_ros")


def test_inference_figures_go_through_the_nodes_callbacks():
    pytest.importorskip("rclpy", reason="ROS is not installed: `make test` builds the workspace")
    check(inference_bench.run(tiny_args()), "in_node")


def test_bfloat16_figures_run_pytorchs_autocast_and_openvinos_bfloat16(monkeypatch):
    monkeypatch.setattr(inference_bench, "_ros_context", lambda: None)
    res = inference_bench.run(tiny_args(["--inference-backends", "", "--inference-dtype", "bfloat16"]))
    assert [(r["backend"], r["dtype"]) for r in res["runs"]] == [("torch", "bfloat16"), ("openvino", "bfloat16")]
    assert all(r["updates"] == 2 and r["bare_ms"] > 0 for r in res["runs"])


def test_a_runtime_that_cannot_run_here_stops_the_figures_with_its_fix():
    with pytest.raises(ValueError, match="tensorrt runs on CUDA"):
        inference_bench.run(tiny_args(["--inference-backends", "tensorrt"]))
