"""Student segmentation models: the paper's DeepLabV3-MobileNetV2 and torchvision's LR-ASPP.

Every student takes float ``B x 3 x H x W`` RGB in ``[0, 1]``, normalises with its own buffers
(buffers are not parameters, so they never enter the flat update vector) and returns logits
``B x C x H x W`` at the input size.

BatchNorm choice. The TFLite student has BN folded into its convolutions. Here each conv keeps
its BatchNorm layer; an imported model gets the folded weights in the conv and an identity BN
(running mean 0, running var ``1 - eps``, gamma 1, beta = folded bias). Online training keeps BN
in inference mode (reference notes), so that is exactly the TFLite function, and gamma/beta stay
trainable per-channel scale/shift parameters as in the authors' code. :func:`build_student`
returns models whose BN layers never leave eval mode (see :func:`freeze_batchnorm`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ams_ros.core.common.devices import autocast_for, resolve_dtype
from ams_ros.core.common.stream_defaults import DEFAULT_INPUT_SIZE

"""(width, height) of student inputs, as in the authors' code."""

TF_MEAN = (0.5, 0.5, 0.5)  # (x * 255 - 127.5) / 127.5, the TensorFlow DeepLab convention
TF_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-model buffers, so checkpoints carry their own convention."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in inference mode whatever ``train()`` says.

    Swapped in by class (same parameters, buffers and state_dict keys), so the flat parameter
    layout and the fingerprint do not change, and deepcopy/pickle keep working.
    """

    def train(self, mode: bool = True) -> "_EvalBatchNorm2d":
        return super().train(False)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Pin every BatchNorm2d of ``model`` in eval mode (running stats frozen) for good."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _EvalBatchNorm2d
        if isinstance(m, nn.BatchNorm2d):
            m.train(False)
    return model


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm` (e.g. to re-estimate statistics offline)."""
    for m in model.modules():
        if type(m) is _EvalBatchNorm2d:
            m.__class__ = nn.BatchNorm2d
    return model


def train_mode_frozen_bn(model: nn.Module) -> nn.Module:
    """``model.train()`` with every BatchNorm back in eval mode (running stats frozen), whether
    or not :func:`freeze_batchnorm` pinned it.

    The online training set is a few hundred correlated frames; letting BN re-estimate its
    statistics from them would drift the features the rest of the network relies on, and the
    running stats are buffers that are never shipped to the edge.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _conv_bn(cin: int, cout: int, act: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class MobileDeepLabHead(nn.Module):
    """DeepLabV3's head for MobileNet: image pooling + 1x1 branch, concat, 1x1 projection.

    Concatenation order (pooling first) and ReLU (not ReLU6) follow the TFLite graph.
    """

    def __init__(self, in_channels: int = 320, channels: int = 256) -> None:
        super().__init__()
        self.image_pool = _conv_bn(in_channels, channels, nn.ReLU)
        self.aspp0 = _conv_bn(in_channels, channels, nn.ReLU)
        self.project = _conv_bn(2 * channels, channels, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))
        pooled = pooled.expand(-1, -1, x.shape[2], x.shape[3])  # bilinear resize of 1x1 = broadcast
        return self.project(torch.cat([pooled, self.aspp0(x)], dim=1))


def _dilate_like_tf(features: nn.Sequential, output_stride: int) -> None:
    """Turn strides into atrous rates past ``output_stride`` with TF-slim MobileNet's rule.

    The block that would exceed the target stride runs at stride 1 with the *current* rate;
    only the blocks after it get the multiplied rate (so for OS16 block 13 has rate 1 and blocks
    14-16 rate 2, as in the TFLite model).
    """
    current, rate = 2, 1  # the stem conv has stride 2
    for block in list(features)[1:]:
        dw = next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        stride = dw.stride[0]
        if current == output_stride:
            layer_stride, layer_rate = 1, rate
            rate *= stride
        else:
            layer_stride, layer_rate = stride, 1
            current *= stride
        dw.stride = (layer_stride, layer_stride)
        dw.dilation = (layer_rate, layer_rate)
        dw.padding = (layer_rate, layer_rate)
        if hasattr(block, "stride"):
            block.stride = layer_stride


class DeepLabV3MobileNetV2(nn.Module):
    """The AMS student: MobileNetV2 (width 1.0, no 1280-channel conv), OS 16, mobile DeepLab head.

    Backbone module names are torchvision's ``mobilenet_v2().features[:18]`` so ImageNet weights
    load by name; the classifier is registered last so it is the tail of the flat vector.
    """

    classifier_prefixes: tuple[str, ...] = ("classifier.",)

    def __init__(self, num_classes: int = 21, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.normalize = Normalize(TF_MEAN, TF_STD)
        features = torchvision.models.mobilenet_v2(weights=None).features
        self.backbone = nn.Sequential(*list(features)[:18])
        _dilate_like_tf(self.backbone, output_stride)
        self.head = MobileDeepLabHead(320, 256)
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=True)
        self.num_classes = num_classes
        self.output_stride = output_stride
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.classifier(self.head(self.backbone(self.normalize(x))))
        # align_corners=True as TF DeepLab's final resize (33 -> 513 is exactly x16 that way)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)


class LRASPPMobileNetV3(nn.Module):
    """torchvision's LR-ASPP MobileNetV3-Large with the student interface (tensor out)."""

    classifier_prefixes: tuple[str, ...] = ("net.classifier.low_classifier.", "net.classifier.high_classifier.")

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))["out"]


def _init_weights(model: nn.Module) -> None:
    """He init (fan-in) for convs, zero-init of the last BN gamma of each residual branch.

    With BN frozen to identity a randomly initialised deep net has no normalisation; fan-in
    scaling keeps the forward activations at unit scale and zero residual gammas make every
    residual block start as the identity (as torchvision's ``zero_init_residual``), so a
    from-scratch student (e.g. the synthetic demo's) trains stably with frozen BN.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if getattr(m, "use_res_connect", False):
            nn.init.zeros_(m.conv[-1].weight)
    if isinstance(model, DeepLabV3MobileNetV2):
        nn.init.normal_(model.classifier.weight, std=0.01)
        nn.init.zeros_(model.classifier.bias)


# --------------------------------------------------------------------------------------------
# Registry and construction
# --------------------------------------------------------------------------------------------

STUDENTS: dict[str, Callable[[int], nn.Module]] = {
    "deeplabv3_mobilenet_v2": lambda n: DeepLabV3MobileNetV2(num_classes=n),
    "lraspp_mobilenet_v3_large": lambda n: LRASPPMobileNetV3(num_classes=n),
}


def build_student(name: str, num_classes: int = 19, frozen_bn: bool = True) -> nn.Module:
    """A randomly initialised student; BN pinned in eval mode unless ``frozen_bn=False``."""
    if name not in STUDENTS:
        raise ValueError(f"unknown student '{name}' (valid: {', '.join(sorted(STUDENTS))})")
    if not 1 <= int(num_classes) <= 255:
        raise ValueError(f"num_classes must lie in 1..255 (255 is the ignore id), got {num_classes}")
    model = STUDENTS[name](int(num_classes))
    model.student_name = name  # type: ignore[assignment]
    return freeze_batchnorm(model) if frozen_bn else model


# --------------------------------------------------------------------------------------------
# Inference helpers
# --------------------------------------------------------------------------------------------


def as_image_list(images: Any) -> list[np.ndarray]:
    """One H x W x 3 uint8 RGB frame or a list/stack of them, checked (students and teachers)."""
    if isinstance(images, np.ndarray):
        images = [images] if images.ndim == 3 else list(images)
    out = []
    for i, img in enumerate(images):
        a = np.asarray(img)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
            raise ValueError(f"image {i}: expected an H x W x 3 uint8 RGB array, got {a.dtype} {a.shape}")
        out.append(a)
    if not out:
        raise ValueError("no images given")
    return out


def to_input(images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``B x 3 x H x W`` float tensor in [0, 1] from uint8 RGB images resized to ``size`` = (W, H)."""
    w, h = size or DEFAULT_INPUT_SIZE
    batch = []
    for a in as_image_list(images):
        if a.shape[:2] != (h, w):
            a = cv2.resize(a, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
        batch.append(a)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(batch)))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel argmax over classes (B x C x H x W -> B x H x W uint8), first maximum on ties.

    ``torch.max(dim=1).indices`` rather than ``argmax(dim=1)``: the same indices, but on the CPU
    ``argmax`` over the channel dimension of an NCHW tensor took 4.4 ms at 21 x 256 x 128 against
    0.7 ms (one thread), a sixth of the student's own time."""
    return logits.max(dim=1).indices.to(torch.uint8)


def confident_class_map(logits: torch.Tensor, min_confidence: float, ignore_index: int = 255) -> torch.Tensor:
    """:func:`class_map` with ``ignore_index`` where the labels are not to be believed (issue #29):
    pixels whose scores are not all finite (argmax would pick a NaN as the maximum) and, with
    ``min_confidence`` > 0, pixels whose top softmax probability is below it."""
    labels = class_map(logits)
    doubtful = ~torch.isfinite(logits).all(dim=1)
    if min_confidence > 0.0:
        top = torch.softmax(torch.nan_to_num(logits.float()), dim=1).max(dim=1).values
        doubtful |= top < float(min_confidence)
    return labels.masked_fill(doubtful, ignore_index)


@torch.no_grad()
def predict(model: nn.Module, images: Any, size: tuple[int, int] | None = None,
            batch_size: int = 8, dtype: torch.dtype | str = torch.float32,
            min_confidence: float | None = None) -> list[np.ndarray]:
    """uint8 label maps at each image's own size (argmax at ``size``, nearest-resized back).
    With ``min_confidence`` (a teacher's labels, issue #29), doubtful pixels are 255 (ignore):
    :func:`confident_class_map`.

    Runs on the model's device (``dtype`` float16/bfloat16: under autocast, weights untouched),
    in eval mode, and restores every module's previous mode afterwards.
    """
    imgs = as_image_list(images)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        device = next(model.parameters()).device
        out: list[np.ndarray] = []
        for i in range(0, len(imgs), batch_size):
            chunk = imgs[i:i + batch_size]
            x = to_input(chunk, size)
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            with autocast_for(device, resolve_dtype(dtype)):
                logits = model(x.to(device))
            if isinstance(logits, dict):
                logits = logits["out"]
            labels = (class_map(logits) if min_confidence is None else
                      confident_class_map(logits, min_confidence)).cpu().numpy()
            for img, lab in zip(chunk, labels):
                if lab.shape != img.shape[:2]:
                    lab = cv2.resize(lab, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
                out.append(np.ascontiguousarray(lab))
        return out
    finally:
        for m, mode in modes:
            m.training = mode
