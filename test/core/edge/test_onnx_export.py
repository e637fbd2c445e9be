"""The student's ONNX template: every weight an initializer under its own name, cached by architecture,
and the tensors an update's flat indices touch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from small_inputs import small_net
from ams_ros.core.edge.onnx_export import (AffineBatchNorm, export_onnx, exportable, parameter_names, state_tensors,
                                           touched_tensors)
from ams_ros.core.models.params import flatten_params, param_layout


def identity_bn_net() -> nn.Module:
    """BatchNorms of equal (default) weights, as a student imported from TFLite has: the exporter
    merges equal initializers, so a template exported from these values would lose names."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


@pytest.mark.parametrize("make", [small_net, identity_bn_net], ids=["small_net", "equal_batchnorms"])
def test_every_state_tensor_is_an_initializer_of_the_template(make, tmp_path):
    model = make().eval()
    graph = onnx.load_from_string(export_onnx(model, (16, 8), tmp_path))
    onnx.checker.check_model(graph)
    inits = {i.name: i for i in graph.graph.initializer}
    tensors = state_tensors(model)
    assert set(tensors) <= set(inits), sorted(set(tensors) - set(inits))
    for name, t in tensors.items():
        assert tuple(inits[name].dims) == tuple(t.shape), name
    assert set(parameter_names(model)) <= set(tensors)


def test_the_template_runs_batchnorm_as_the_model_does():
    """AffineBatchNorm keeps the BatchNorm's own weight and bias (AMS trains them) and its statistics."""
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, 0.3]))
        bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    affine = AffineBatchNorm(bn)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(affine(x), bn(x), rtol=1e-5, atol=1e-6)
    assert affine.weight is bn.weight and affine.bias is bn.bias


def test_exportable_leaves_the_model_alone():
    model = small_net().eval()
    before = flatten_params(model).clone()
    clone = exportable(model)
    assert torch.equal(flatten_params(model), before)
    assert not any(isinstance(m, AffineBatchNorm) for m in model.modules())
    assert any(isinstance(m, AffineBatchNorm) for m in clone.modules())
    values = torch.cat([p.detach().reshape(-1) for p in clone.parameters()])
    assert values.unique().numel() == values.numel()  # all distinct: nothing for the exporter to merge


def test_template_is_read_from_the_cache_for_the_same_architecture_and_size(tmp_path, monkeypatch):
    model = small_net().eval()
    first = export_onnx(model, (16, 8), tmp_path)
    assert len(list(tmp_path.glob("student_*.onnx"))) == 1
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported again"))
    trained = small_net().eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # other weights, same architecture: the same template
    assert export_onnx(trained, (16, 8), tmp_path) == first
    monkeypatch.undo()
    export_onnx(model, (32, 8), tmp_path)  # another input size: another template
    export_onnx(small_net(6).eval(), (16, 8), tmp_path)  # another architecture too
    assert len(list(tmp_path.glob("student_*.onnx"))) == 3
    assert not list(tmp_path.glob(".student-*"))  # no half-written file left behind


def test_touched_tensors_names_the_parameters_the_indices_fall_in():
    model = small_net()
    layout = param_layout(model)
    names = parameter_names(model)
    assert touched_tensors(model, []) == set()
    first_of = {names[i]: s.offset for i, s in enumerate(layout)}
    last_of = {names[i]: s.offset + s.numel - 1 for i, s in enumerate(layout)}
    assert touched_tensors(model, [first_of[names[0]]]) == {names[0]}
    assert touched_tensors(model, [last_of[names[0]]]) == {names[0]}
    assert touched_tensors(model, [first_of[names[2]], last_of[names[-1]]]) == {names[2], names[-1]}
    # unsorted and repeated indices as well
    assert touched_tensors(model, np.array([last_of[names[1]], first_of[names[1]], last_of[names[1]]])) == {names[1]}
    every = np.arange(flatten_params(model).numel())
    assert touched_tensors(model, every) == set(names)


def test_touched_tensors_refuses_indices_outside_the_model():
    model = small_net()
    n = flatten_params(model).numel()
    with pytest.raises(ValueError, match=f"leave the model's {n} parameters"):
        touched_tensors(model, [0, n])
    with pytest.raises(ValueError, match="leave"):
        touched_tensors(model, [-1])
