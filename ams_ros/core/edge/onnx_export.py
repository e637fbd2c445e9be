"""The student as an ONNX graph whose weights keep the names of the model's parameters (issue #30).

The fast runtimes (ONNX Runtime, OpenVINO, TensorRT) take an ONNX graph; updates keep arriving as
changes to the PyTorch model's flat parameters (:mod:`ams_ros.core.models.params`), which stay the
source of truth. To hand a runtime the new weights without exporting again (a second per update),
every trained parameter must be an initializer of the graph under its own name. PyTorch's exporter
folds each BatchNorm into the convolution before it when the model is in eval mode, which loses the
BatchNorm's weight and bias (trained by AMS) into fused tensors. So the graph is exported from a
copy whose BatchNorms are :class:`AffineBatchNorm`: the same ``weight`` and ``bias`` parameters,
applied as ``x * weight / sqrt(var + eps) + (bias - mean * weight / sqrt(var + eps))`` with the
frozen running statistics as constants. The runtimes fold that into the convolutions themselves
when they build or compile the graph, from whatever weights they are given.

The exported graph is a template: its weights are random (PyTorch's exporter merges initializers
of equal value, and then referred to a merged one by a name it had dropped, an invalid graph: a
student imported from TFLite has dozens of identity BatchNorms of equal weights). Every runtime is
built from the template and the model's own tensors (:func:`state_tensors`: every parameter and
buffer, by its graph name), so the template's values never run. Templates are cached by the
architecture's fingerprint, input size and opset (a robot restarting with the same student does not
export again).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ams_ros.core.models.params import fingerprint

OPSET = 17
INPUT, OUTPUT = "image", "logits"  # the float template (TensorRT): 1 x 3 x H x W in [0, 1] -> logits
FRAME, LABELS = "frame", "labels"  # the frame template (ONNX Runtime, OpenVINO): uint8 frame -> logits, labels


class AffineBatchNorm(nn.Module):
    """An eval-mode BatchNorm2d the exporter cannot fold away: same parameters, frozen statistics."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.eps = float(bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_std = torch.rsqrt(self.running_var + self.eps)
        scale = self.weight * inv_std
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class _Logits(nn.Module):
    """The student's logits whatever it returns (torchvision segmentation models return a dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


class _FrameToLabels(_Logits):
    """The robot's whole per-frame work in one graph: a uint8 ``1 x H x W x 3`` RGB frame in, its
    logits and its label map (uint8, first maximum on ties as :func:`~ams_ros.core.models.student.class_map`)
    out. In the graph, the runtime fuses the conversion and the argmax with the network: OpenVINO
    took 41 ms for the logits where it takes 27 ms for the labels (2 threads, 512x256), and the
    conversion and argmax in PyTorch cost another 4-5 ms per frame."""

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(frame.permute(0, 3, 1, 2).float() / 255.0)
        return logits, logits.argmax(dim=1).to(torch.uint8)


def exportable(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with every BatchNorm2d an :class:`AffineBatchNorm` and
    every floating tensor random (distinct values: the exporter merges equal ones)."""
    clone = copy.deepcopy(model).cpu().eval()
    for module in list(clone.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d) and child.affine and child.track_running_stats:
                setattr(module, child_name, AffineBatchNorm(child))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*clone.parameters(), *clone.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)  # positive: running variances stay valid
    return clone


def export_onnx(model: nn.Module, input_size: tuple[int, int], cache_dir: str | os.PathLike | None = None,
                frames: bool = False) -> bytes:
    """The ONNX template of ``model``'s architecture at ``input_size`` = (W, H), read from ``cache_dir``
    when one was exported there: ``image`` float32 1x3xHxW in [0, 1] -> ``logits`` 1xCxHxW, or with
    ``frames`` ``frame`` uint8 1xHxWx3 -> ``logits`` and ``labels`` uint8 1xHxW (:class:`_FrameToLabels`)."""
    w, h = int(input_size[0]), int(input_size[1])
    kind = "frame-labels" if frames else "logits"
    key = hashlib.sha256(f"{fingerprint(model)}|{w}x{h}|opset{OPSET}|affine-bn-template|{kind}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"student_{key}.onnx" if cache_dir else None
    if path is not None and path.exists():
        return path.read_bytes()
    buf = io.BytesIO()
    # the TorchScript exporter on purpose: the torch.export one needs onnxscript, which the robot
    # does not otherwise install; its deprecation warnings say nothing a user can act on
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        if frames:
            torch.onnx.export(_FrameToLabels(exportable(model)), torch.zeros(1, h, w, 3, dtype=torch.uint8), buf,
                              opset_version=OPSET, input_names=[FRAME], output_names=[OUTPUT, LABELS],
                              do_constant_folding=False, dynamo=False)
        else:
            torch.onnx.export(_Logits(exportable(model)), torch.zeros(1, 3, h, w), buf, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=False, dynamo=False)
    data = buf.getvalue()
    if path is not None:  # written whole, then renamed: a reader never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".student-", suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return data


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every floating parameter and buffer of ``model`` by its name in the exported graph (the
    exporter wraps the model in ``model.``): the weights a runtime is built from."""
    out = {f"model.{name}": p for name, p in model.named_parameters()}
    out.update({f"model.{name}": b for name, b in model.named_buffers() if b.is_floating_point()})
    return out


def parameter_names(model: nn.Module) -> list[str]:
    """The graph's name of every parameter of ``model``."""
    return [f"model.{name}" for name, _ in model.named_parameters()]


def default_cache_dir() -> Path:
    """``$AMS_ROS_CACHE`` or ``~/.cache/ams_ros``: where exported graphs are kept."""
    return Path(os.environ.get("AMS_ROS_CACHE") or Path.home() / ".cache" / "ams_ros") / "onnx"


def touched_tensors(model: nn.Module, indices) -> set[str]:
    """Graph names of the parameters that flat ``indices`` (of :mod:`~ams_ros.core.models.params`'
    layout, sorted or not) fall in: what an update changes, and so what a runtime that refits
    (TensorRT) must be given again."""
    import numpy as np

    idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
    if idx.size == 0:
        return set()
    names, offsets = [], []
    start = 0
    for name, p in model.named_parameters():
        names.append(f"model.{name}")
        offsets.append(start)
        start += p.numel()
    if idx[0] < 0 or idx[-1] >= start:
        raise ValueError(f"indices [{int(idx[0])}, {int(idx[-1])}] leave the model's {start} parameters")
    slots = np.searchsorted(np.asarray(offsets), idx, side="right") - 1
    return {names[s] for s in np.unique(slots)}
