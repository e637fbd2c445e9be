"""TensorRT's refit bookkeeping (issue #30) without a GPU, and on a GPU with TensorRT the engine itself:
built refittable, agreeing with PyTorch, refitted after updates (on a lent GPU; tools/gpu_check.sh
times the same through `ams-bench --only inference`)."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from small_inputs import small_net
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.onnx_export import parameter_names
from ams_ros.core.edge.runtimes import check_agreement, probe_frame
from ams_ros.core.edge.tensorrt_runtime import refit_names
from ams_ros.core.models.params import flatten_params
from ams_ros.core.wire.encodings import encode_update


def test_refit_names_are_the_changed_tensors_and_what_tensorrt_reports_missing():
    every = ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"]
    assert refit_names({"model.1.bias"}, every) == ["model.1.bias"]
    # TensorRT folds a BatchNorm into the convolution before it: it then asks for the conv's weights too
    assert refit_names({"model.1.weight"}, every, missing=["model.0.weight", "model.1.weight"]) == \
        ["model.0.weight", "model.1.weight"]
    assert refit_names(None, every) == sorted(every)  # unknown changes (after a failed refit): all
    assert refit_names(set(), every) == []


def test_refit_names_never_repeat_a_tensor():
    names = refit_names({"b", "a"}, ["a", "b", "c"], missing=["a", "a", "c"])
    assert names == ["a", "b", "c"]


CUDA_TRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_TRT, reason="needs CUDA and tensorrt (tools/gpu_check.sh on a lent GPU)")
def test_tensorrt_engine_agrees_with_pytorch_and_follows_updates(tmp_path):
    from ams_ros.core.edge.tensorrt_runtime import TensorRtRuntime

    device = torch.device("cuda")
    model = small_net().to(device).eval()
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=TensorRtRuntime((16, 8), device, tmp_path))
    frame = probe_frame((16, 8))
    check_agreement(holder.active, holder.runner, frame, "tensorrt")
    names = parameter_names(model)
    for v, tensor in enumerate([0, 3, 1]):
        flat = flatten_params(holder.active).cpu().numpy()
        lo = sum(p.numel() for p in list(holder.active.parameters())[:tensor])
        idx = np.arange(lo, lo + list(holder.active.parameters())[tensor].numel())
        vals = (flat[idx] + 0.25).astype(np.float16).astype(np.float32)
        holder.apply_update(encode_update(small_net(), idx, vals, v, v + 1, "delta_lzma_fp16"))  # a CPU twin: the layout
        agreement = check_agreement(holder.active, holder.runner, frame, "tensorrt")
        assert agreement.max_abs_logit_diff < 1e-2, (names[tensor], agreement)
