"""TFLite segmentation models: run them, and dequantise the DeepLabV3-MobileNetV2 into PyTorch.

``deeplabv3_mnv2_pascal_quant.tflite`` is the paper's student, trained on VOC and quantised
(uint8, BN folded into every conv). :func:`import_tflite_student` turns it into the equivalent
:class:`~ams_ros.core.models.student.DeepLabV3MobileNetV2`: each conv gets the dequantised folded
weights and its BN becomes the identity with beta = the folded bias. Tensors are matched by
their TF scope names (``MobilenetV2/expanded_conv_5/expand`` ...), checked for shape, with the
graph order of the conv ops as fallback when names are stripped.

:class:`TFLiteSegmenter` is the generic runner (input shape/dtype read from the interpreter,
argmax or logits output) used for comparisons and by the TFLite teacher.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ams_ros.core.models.student import build_student

log = logging.getLogger(__name__)

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_FQ_SUFFIX = "/weights_quant/FakeQuantWithMinMaxVars"


def make_interpreter(path: str | os.PathLike, num_threads: int | None = None, delegates: bool = True):
    """An allocated ai_edge_litert Interpreter; ``delegates=False`` keeps the plain op graph."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model '{path}' does not exist")
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def dequantize(detail: dict[str, Any], data: np.ndarray) -> np.ndarray:
    """Real values of a (per-tensor or per-channel) quantised tensor; floats pass through."""
    q = detail.get("quantization_parameters") or {}
    scales = np.asarray(q.get("scales", []), dtype=np.float64)
    if scales.size == 0 or np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    zps = np.asarray(q.get("zero_points", np.zeros_like(scales)), dtype=np.float64)
    if scales.size > 1:
        shape = [1] * data.ndim
        shape[int(q.get("quantized_dimension", 0))] = scales.size
        scales, zps = scales.reshape(shape), zps.reshape(shape)
    return ((data.astype(np.float64) - zps) * scales).astype(np.float32)


@dataclass
class TFConv:
    """One conv op of the graph: TF scope, op type and dequantised PyTorch-layout tensors."""

    scope: str
    op: str
    weight: np.ndarray  # O x I/groups x kH x kW
    bias: np.ndarray | None


def _scope_of(name: str) -> str:
    parts = name.split(";")
    for p in parts:
        if p.endswith(_FQ_SUFFIX):
            return p[: -len(_FQ_SUFFIX)]
    return parts[0].rsplit("/", 1)[0]


def read_convs(path: str | os.PathLike) -> tuple[list[TFConv], dict[str, Any]]:
    """All conv ops in graph order, dequantised, plus the input tensor's details."""
    interp = make_interpreter(path, delegates=False)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    convs: list[TFConv] = []
    for op in interp._get_ops_details():  # no public API lists ops; stable across TF/LiteRT
        if op["op_name"] not in CONV_OPS:
            continue
        w_idx, b_idx = op["inputs"][1], (op["inputs"][2] if len(op["inputs"]) > 2 else -1)
        wd = details[w_idx]
        w = dequantize(wd, interp.get_tensor(w_idx))
        # CONV_2D: O x kH x kW x I ; DEPTHWISE_CONV_2D: 1 x kH x kW x (I * multiplier)
        w = w.transpose(0, 3, 1, 2) if op["op_name"] == "CONV_2D" else w.transpose(3, 0, 1, 2)
        b = dequantize(details[b_idx], interp.get_tensor(b_idx)) if b_idx >= 0 else None
        convs.append(TFConv(_scope_of(wd["name"]), op["op_name"], np.ascontiguousarray(w), b))
    return convs, interp.get_input_details()[0]


def _targets(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """(TF scope, conv, BN) of the student in TFLite graph order."""
    bb = model.backbone
    out: list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]] = [("MobilenetV2/Conv", bb[0][0], bb[0][1])]
    for k in range(1, len(bb)):
        scope = "MobilenetV2/expanded_conv" + ("" if k == 1 else f"_{k - 1}")
        seq = bb[k].conv
        names = ["depthwise", "project"] if len(seq) == 3 else ["expand", "depthwise", "project"]
        mods = list(seq)
        pairs = [(m[0], m[1]) for m in mods[:-2]] + [(mods[-2], mods[-1])]
        out += [(f"{scope}/{n}", c, b) for n, (c, b) in zip(names, pairs)]
    h = model.head
    out += [("aspp0", h.aspp0[0], h.aspp0[1]), ("image_pooling", h.image_pool[0], h.image_pool[1]),
            ("concat_projection", h.project[0], h.project[1]), ("logits/semantic", model.classifier, None)]
    return out


@torch.no_grad()
def import_tflite_weights(model: nn.Module, path: str | os.PathLike) -> int:
    """Write the TFLite weights into a ``DeepLabV3MobileNetV2`` of the same class count.

    Returns the number of convs written; any mismatch raises a ValueError naming the layer.
    """
    convs, inp = read_convs(path)
    targets = _targets(model)
    by_scope = {c.scope: c for c in convs}
    if all(s in by_scope for s, _, _ in targets):
        pairs = [(by_scope[s], s, c, b) for s, c, b in targets]
    elif len(convs) == len(targets):
        log.warning("TFLite tensor names not recognised; matching convs by graph order")
        pairs = [(tc, s, c, b) for tc, (s, c, b) in zip(convs, targets)]
    else:
        missing = [s for s, _, _ in targets if s not in by_scope]
        raise ValueError(f"'{path}' does not look like DeepLabV3-MobileNetV2: {len(convs)} convs "
                         f"(expected {len(targets)}), missing scopes {missing[:5]}")
    for tc, scope, conv, bn in pairs:
        if tuple(tc.weight.shape) != tuple(conv.weight.shape):
            raise ValueError(f"{scope}: TFLite weight {tc.weight.shape} vs model {tuple(conv.weight.shape)}")
        conv.weight.copy_(torch.from_numpy(tc.weight))
        bias = torch.zeros(conv.out_channels) if tc.bias is None else torch.from_numpy(tc.bias)
        if bn is None:
            conv.bias.copy_(bias)
        else:  # identity BN carrying the folded bias
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    q = inp.get("quantization_parameters") or {}
    if inp["dtype"] == np.uint8 and len(q.get("scales", [])) == 1:
        # the uint8 input means real = (q - zp) * scale: reproduce it exactly on x = q / 255
        scale, zp = float(q["scales"][0]), float(q["zero_points"][0])
        model.normalize.set([zp / 255.0] * 3, [1.0 / (255.0 * scale)] * 3)
    return len(pairs)


def tflite_num_classes(path: str | os.PathLike) -> int:
    convs, _ = read_convs(path)
    return int(convs[-1].weight.shape[0])


def import_tflite_student(path: str | os.PathLike) -> nn.Module:
    """A new ``deeplabv3_mobilenet_v2`` carrying the TFLite model's weights (its class count)."""
    model = build_student("deeplabv3_mobilenet_v2", num_classes=tflite_num_classes(path))
    import_tflite_weights(model, path)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Running TFLite segmenters
# --------------------------------------------------------------------------------------------


class TFLiteSegmenter:
    """Runs a TFLite segmentation model on RGB images of any size.

    Input size and dtype come from the interpreter. uint8 inputs get raw pixels (their quant
    parameters encode the normalisation), int8 ``pixel - 128``, float ``(pixel - mean) / std``.
    Outputs may be an argmax map ``1 x H x W`` or logits ``1 x H x W x C``. ``resize`` is
    ``stretch`` (plain resize, the Coral examples' way) or ``pad`` (keep the aspect ratio and
    pad with the mean pixel, DeepLab's evaluation way).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, resize: str = "stretch",
                 float_mean: float = 127.5, float_std: float = 127.5) -> None:
        if resize not in ("stretch", "pad"):
            raise ValueError(f"resize must be 'stretch' or 'pad', got '{resize}'")
        self.path = Path(path)
        self.interp = make_interpreter(path, num_threads=num_threads)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = [int(s) for s in self.inp["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"'{path}': expected a 1 x H x W x 3 input, got {shape}")
        self.input_size = (shape[2], shape[1])  # (W, H)
        self.resize, self.float_mean, self.float_std = resize, float_mean, float_std
        self._lock = threading.Lock()  # one Interpreter must not run concurrently

    def _prepare(self, img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        w, h = self.input_size
        if self.resize == "stretch":
            return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), (w, h)
        s = min(w / img.shape[1], h / img.shape[0])
        cw, ch = max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))
        canvas = np.full((h, w, 3), 128, dtype=np.uint8)
        canvas[:ch, :cw] = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_LINEAR)
        return canvas, (cw, ch)

    def _feed(self, img: np.ndarray) -> np.ndarray:
        dt = self.inp["dtype"]
        if dt == np.uint8:
            x = img
        elif dt == np.int8:
            x = (img.astype(np.int16) - 128).astype(np.int8)
        else:
            x = ((img.astype(np.float32) - self.float_mean) / self.float_std).astype(dt)
        return x[None]

    def run_raw(self, img: np.ndarray) -> np.ndarray:
        """Label map (int) at the model's input size for an image already at that size."""
        with self._lock:
            self.interp.set_tensor(self.inp["index"], self._feed(img))
            self.interp.invoke()
            y = self.interp.get_tensor(self.out["index"])
        y = y[0] if y.ndim in (3, 4) and y.shape[0] == 1 else y
        if y.ndim == 3:
            y = y.argmax(axis=-1)
        return y

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 label map at the image's size (values as the model outputs them)."""
        img = np.asarray(image_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {img.dtype} {img.shape}")
        x, (cw, ch) = self._prepare(img)
        y = self.run_raw(x)[:ch, :cw]
        y = np.clip(y, 0, 255).astype(np.uint8)
        return cv2.resize(y, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)


def run_tflite_segmenter(path: str | os.PathLike, image_rgb: np.ndarray, resize: str = "stretch") -> np.ndarray:
    """One-shot helper: the TFLite model's label map for ``image_rgb`` at its own size."""
    return TFLiteSegmenter(path, resize=resize)(image_rgb)
