"""Device and precision specs (issue #14): auto resolves to what torch sees, CUDA where there is
none is a clear start-up error (never a silent fall-back), and an update on the double buffer
is applied where the model lives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ams_ros.core.common.devices import DeviceError, resolve_device, resolve_dtype, torch_sees
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.models.student import build_student
from ams_ros.core.models.params import flatten_params
from ams_ros.core.wire.encodings import encode_update

HAS_CUDA = torch.cuda.is_available()


def test_auto_resolves_to_the_first_cuda_device_or_else_the_cpu():
    expected = torch.device("cuda:0") if HAS_CUDA else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("") == expected and resolve_device(None) == expected
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_cuda_without_it_is_an_error_naming_the_spec_what_torch_sees_and_the_fix(spec):
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    text = str(err.value)
    assert f"'{spec}'" in text
    assert torch_sees() in text and "built with CUDA" in text and "CUDA devices visible: 0" in text
    assert "fix:" in text and "'cpu'" in text


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_a_cuda_index_beyond_the_count_is_an_error_naming_the_valid_indices():
    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"no CUDA device {n}"):
        resolve_device(f"cuda:{n}")
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "mps0", "cuda0"])
def test_an_unknown_device_spec_lists_the_valid_forms(spec):
    with pytest.raises(DeviceError, match="auto, cpu, cuda, cuda:N"):
        resolve_device(spec)


def test_dtypes_resolve_and_an_unknown_one_lists_the_choices():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        resolve_dtype("half")


def _update(model, idx, vals):
    return encode_update(model, idx, vals, base_version=0, new_version=1, encoding="paper_gzip_fp16")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device")])])
def test_double_buffer_keeps_both_copies_on_the_device_and_applies_updates_there(device):
    torch.manual_seed(0)
    model = build_student("deeplabv3_mobilenet_v2", num_classes=3).to(device)
    reference = copy.deepcopy(model).cpu()
    holder = DoubleBufferedModel(model)
    assert holder.device.type == torch.device(device).type
    n = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    for version in range(3):  # each copy gets every update (the catch-up write), in order
        idx = np.sort(rng.choice(n, size=n // 20, replace=False)).astype(np.int64)
        vals = rng.normal(0, 0.1, size=idx.size).astype(np.float16).astype(np.float32)
        upd = encode_update(reference, idx, vals, base_version=version, new_version=version + 1,
                            encoding="paper_gzip_fp16")
        holder.apply_update(upd)
        flat_ref = flatten_params(reference).numpy()
        flat_ref[idx] = vals
        torch.nn.utils.vector_to_parameters(torch.from_numpy(flat_ref), reference.parameters())
        for copy_ in (holder.active, holder._inactive):
            assert all(p.device.type == torch.device(device).type for p in copy_.parameters())
        np.testing.assert_array_equal(flatten_params(holder.active).cpu().numpy(), flat_ref)
    assert holder.version == 3
