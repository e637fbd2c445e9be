"""Inference runtimes of the robot (issue #30): which one runs, refusals that name the fix, and that
ONNX Runtime and OpenVINO compute what PyTorch computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from small_inputs import small_net
from ams_ros.core.edge import runtimes
from ams_ros.core.models.student import class_map
from ams_ros.core.edge.runtimes import (MIN_AGREEMENT, MIN_AGREEMENT_BFLOAT16, ONNXRUNTIME, OPENVINO, RUNTIMES, TORCH,
                                        FrameRunner, OnnxRuntime, agreement_needed,
                                        OpenVinoRuntime, RuntimeUnavailable, TorchRuntime, build_runtime,
                                        check_agreement, installed, probe_frame, resolve_runtime)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GRAPH_RUNTIMES = [OnnxRuntime, OpenVinoRuntime]


def test_auto_picks_onnxruntime_then_openvino_then_torch_on_a_cpu(monkeypatch):
    assert resolve_runtime("auto", CPU) == ONNXRUNTIME  # both are pinned in requirements/common.txt
    monkeypatch.setattr(runtimes, "installed", lambda name: name == OPENVINO)
    assert resolve_runtime("auto", CPU) == OPENVINO
    monkeypatch.setattr(runtimes, "installed", lambda name: False)
    assert resolve_runtime("auto", CPU) == TORCH


def test_auto_on_cuda_is_tensorrt_when_installed_else_torch(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "tensorrt")
    assert resolve_runtime("auto", CUDA) == "tensorrt"
    monkeypatch.setattr(runtimes, "installed", lambda name: name != "tensorrt")
    assert resolve_runtime("auto", CUDA) == TORCH  # OpenVINO / ONNX Runtime run the student on the CPU here


def test_bfloat16_on_a_cpu_is_openvinos_and_float16_pytorchs_autocast(monkeypatch):
    assert resolve_runtime("auto", CPU, "bfloat16") == OPENVINO  # pinned in requirements/common.txt
    assert resolve_runtime(OPENVINO, CPU, "bfloat16") == OPENVINO
    assert resolve_runtime("auto", CPU, "float16") == TORCH and resolve_runtime("auto", CUDA, "bfloat16") == TORCH
    with pytest.raises(RuntimeUnavailable, match="inference_dtype is float16.*inference_backend torch"):
        resolve_runtime(OPENVINO, CPU, "float16")
    with pytest.raises(RuntimeUnavailable, match="onnxruntime runs the float32 graph, but inference_dtype is bfloat16: "
                                                 "set inference_dtype float32, inference_backend openvino for bfloat16"):
        resolve_runtime(ONNXRUNTIME, CPU, "bfloat16")
    monkeypatch.setattr(runtimes, "installed", lambda name: name != OPENVINO)
    assert resolve_runtime("auto", CPU, "bfloat16") == TORCH


def test_openvino_in_bfloat16_is_compiled_so_and_checked_against_its_stated_tolerance(tmp_path):
    import openvino as ov

    runner = OpenVinoRuntime((16, 8), 1, tmp_path, dtype="bfloat16").build(small_net().eval())
    cpu_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hint = str(runner.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
    assert hint == ("<Type: 'bfloat16'>" if cpu_bf16 else "<Type: 'float32'>"), hint  # else OpenVINO runs float32
    assert agreement_needed(OPENVINO, "bfloat16") == MIN_AGREEMENT_BFLOAT16 < agreement_needed(OPENVINO, "float32")
    assert agreement_needed(ONNXRUNTIME, "bfloat16") == MIN_AGREEMENT


def test_a_runtime_that_is_not_installed_is_refused_with_its_pip_line(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda name: name == TORCH)
    with pytest.raises(RuntimeUnavailable, match=r"onnxruntime is not installed: pip install onnxruntime==1\.31\.0"):
        resolve_runtime(ONNXRUNTIME, CPU)
    with pytest.raises(RuntimeUnavailable, match=r"pip install openvino==2026\.4\.1 onnx=="):
        resolve_runtime(OPENVINO, CPU)


def test_installed_needs_the_runtime_and_onnx(monkeypatch):
    found = {"openvino"}
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda mod: object() if mod in found else None)
    assert installed(TORCH) and not installed(OPENVINO)
    found.add("onnx")
    assert installed(OPENVINO) and not installed(ONNXRUNTIME)


def test_refusals_name_the_device_and_the_choices():
    with pytest.raises(RuntimeUnavailable, match="tensorrt runs on CUDA, but the student's device is cpu"):
        resolve_runtime("tensorrt", CPU)
    with pytest.raises(RuntimeUnavailable, match="openvino runs the student on the CPU.*device is cuda"):
        resolve_runtime(OPENVINO, CUDA)
    with pytest.raises(RuntimeUnavailable, match="'tflite' is not one of: " + ", ".join(RUNTIMES)):
        resolve_runtime("tflite", CPU)
    assert issubclass(RuntimeUnavailable, ValueError)  # a configuration error: exit 78, no respawn


def test_torch_runner_is_the_model_itself():
    model = small_net().eval()
    rt = build_runtime(TORCH, (16, 8), 1, CPU)
    assert isinstance(rt, TorchRuntime) and rt.build(model) is model and rt.rebuild(model, model) is model


def torch_logits(model: nn.Module, frame: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0)


@pytest.mark.parametrize("runtime", GRAPH_RUNTIMES, ids=lambda r: r.name)
def test_graph_runtime_computes_what_pytorch_computes_from_the_frame(runtime, tmp_path):
    model = small_net().eval()
    rt = runtime((16, 8), 1, tmp_path)
    runner = rt.build(model)
    frame = probe_frame((16, 8), seed=2)
    ref = torch_logits(model, frame)
    torch.testing.assert_close(runner.logits(frame), ref, rtol=1e-4, atol=1e-5)
    labels = runner.labels(frame[None][:, ::1])  # a batch of one works as well as the frame
    assert labels.dtype == np.uint8 and labels.shape == ref.shape[-2:]
    np.testing.assert_array_equal(labels, class_map(ref)[0].numpy())
    agreement = check_agreement(model, runner, probe_frame((16, 8)), rt.name)
    assert agreement.labels_equal >= MIN_AGREEMENT and agreement.max_abs_logit_diff < 1e-4


@pytest.mark.parametrize("runtime", GRAPH_RUNTIMES, ids=lambda r: r.name)
def test_graph_runtime_rebuilt_from_new_weights_computes_them(runtime, tmp_path):
    model = small_net().eval()
    rt = runtime((16, 8), 1, tmp_path)
    old = rt.build(model)
    frame = probe_frame((16, 8), seed=3)
    before = old.logits(frame).clone()
    with torch.no_grad():
        model[3].weight.mul_(-2.0)
        model[1].bias.add_(0.5)  # a BatchNorm parameter: AMS trains those too
    new = rt.rebuild(model, old)
    torch.testing.assert_close(new.logits(frame), torch_logits(model, frame), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(old.logits(frame), before)  # the old runner still serves the old weights meanwhile


def test_openvino_runs_float32_even_where_the_cpu_prefers_bfloat16(tmp_path):
    # OpenVINO's CPU default is bfloat16 on AVX512_BF16 / AMX CPUs (labels then differ from PyTorch's)
    runner = OpenVinoRuntime((16, 8), 1, tmp_path).build(small_net().eval())
    runner.logits(probe_frame((16, 8)))  # compiles the full graph too
    for request in (runner.request, runner._logits_request):
        assert str(request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_a_disagreeing_runtime_is_refused_with_its_figures():
    model = small_net().eval()

    def wrong(x: torch.Tensor) -> torch.Tensor:  # a runner called like the model (TensorRT's), negated
        with torch.no_grad():
            return -model(x)

    with pytest.raises(RuntimeUnavailable, match=r"openvino disagrees with PyTorch on the probe frame: \d+\.\d+% of "
                                                  r"labels equal \(needs 99\.9%\), max \|logit difference\| [\d.e+-]+; "
                                                  r"use inference_backend torch"):
        check_agreement(model, wrong, probe_frame((16, 8)), OPENVINO)


def test_a_runtime_of_another_shape_is_refused():
    model = small_net().eval()
    with pytest.raises(RuntimeUnavailable, match="max \\|logit difference\\| inf"):
        check_agreement(model, lambda x: torch.zeros(1, 4, 3, 3), probe_frame((16, 8)), ONNXRUNTIME)


def test_probe_frame_is_a_seeded_rgb_frame_at_the_input_size():
    a, b = probe_frame((16, 8)), probe_frame((16, 8))
    assert a.shape == (8, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, probe_frame((16, 8), seed=1))


def test_a_frame_runner_whose_labels_disagree_is_refused_even_with_equal_logits():
    model = small_net().eval()

    class BadArgmax(FrameRunner):
        name = ONNXRUNTIME

        def logits(self, frame):
            return torch_logits(model, frame)

        def labels(self, frame):
            return np.full(frame.shape[:2], 255, np.uint8)[1:-1, 1:-1]  # the net's output size, wrong classes

    with pytest.raises(RuntimeUnavailable, match=r"onnxruntime disagrees.*0\.0000% of labels equal"):
        check_agreement(model, BadArgmax(), probe_frame((16, 8)), ONNXRUNTIME)


def test_dict_output_models_are_compared_on_their_logits(tmp_path):
    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_net()

        def forward(self, x):
            return {"out": self.net(x)}

    model = DictNet().eval()
    rt = OnnxRuntime((16, 8), 1, tmp_path)
    check_agreement(model, rt.build(model), probe_frame((16, 8)), ONNXRUNTIME)
