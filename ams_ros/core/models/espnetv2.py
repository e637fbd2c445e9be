"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019) as a Cityscapes teacher.

Why here: a base station with a GPU needs a PyTorch teacher (the TFLite one runs on the CPU
only). The EdgeNets model zoo ships ``espnetv2_s_2.0_city_1024x512.pth``, a bare state dict, so
this module defines the network from the paper's description with parameter names and shapes
that match that file exactly (``load_state_dict(strict=True)``).

Architecture (width scale s = 2.0, channels 32 / 128 / 256 / 512 at strides 2 / 4 / 8 / 16):

- EESP unit: grouped 1x1 reduction to ``n = out / K`` channels (K = 4 branches), K depth-wise
  3x3 convolutions with dilations chosen from the level's receptive-field limit, hierarchical
  feature fusion (each branch adds the previous branch's output), BN + PReLU on the concatenation,
  a grouped 1x1 expansion + BN, a residual add when shapes allow, then PReLU.
- Strided EESP (down-sampler): the EESP branch at stride 2 produces ``out - in`` channels and is
  concatenated with a 3x3/2 average pool of the input; input reinforcement adds a projection
  (3x3 CBR then 1x1 CB) of the RGB image average-pooled to the same stride; then PReLU.
- Segmentation head (the EdgeNets decoder; the classification level 5 is dropped): an efficient
  pyramid pooling module (EPP: 1x1 projection, one depth-wise 3x3 per scale in
  (2.0, 1.5, 1.0, 0.5, 0.1), BN + PReLU over the concatenation, channel shuffle, grouped 3x3
  CBR, 1x1 to the output width) at stride 16, then three bottom-up steps: x2 bilinear upsampling
  (align_corners=True), add the encoder feature of that stride projected by an efficient
  point-wise conv (grouped 3x3 CBR gated by a sigmoid of its global average), BN + PReLU, EPP.
  The last EPP gives 20 logits at stride 2, upsampled bilinearly to the input size.

Input: RGB in [0, 1] normalised with the ImageNet mean/std; H and W must be multiples of 32
(the encoder's strides and the input-reinforcement pooling have to line up). Output 19 is
"background" in the EdgeNets Cityscapes list (train ids 0..18 then background): the teacher maps
it to the ignore id.
"""

from __future__ import annotations

import math
import os
import re
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ams_ros.core.models.labels import CITYSCAPES, LabelSpace, get_label_space
from ams_ros.core.models.student import as_image_list, confident_class_map
from ams_ros.core.models.teachers import register_teacher_factory

NUM_OUTPUTS = 20
"""Cityscapes train ids 0..18 plus 'background' (index 19)."""
BACKGROUND_INDEX = 19
INPUT_MULTIPLE = 32
DEFAULT_TEACHER_SIZE: tuple[int, int] = (1024, 512)
"""(width, height) the zoo model was trained and evaluated at."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# s = 2.0 configuration of the paper's network
_CHANNELS = (32, 128, 256, 512)          # levels 1..4 (strides 2, 4, 8, 16)
_REPEATS = {3: 3, 4: 7}                  # stride-1 EESP units after the level 3 and 4 down-samplers
_RECEPTIVE_LIMIT = (13, 11, 9, 7, 5)     # per level: largest effective kernel of an EESP branch
_BRANCHES = 4
_REINF_CHANNELS = 3
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
_DECODER_BASE = 16                       # EdgeNets' Cityscapes decoder width


# --------------------------------------------------------------------------------------------
# Encoder blocks (attribute names follow the state dict: conv / bn / act)
# --------------------------------------------------------------------------------------------


class _ConvBnAct(nn.Module):
    """Conv (no bias), BatchNorm, PReLU with 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _ConvBn(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _BnAct(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class _DepthwiseDilated(nn.Module):
    def __init__(self, c: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def branch_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilation of each EESP branch: effective kernels 3, 5, 7, ... capped at the level's limit
    (a capped branch falls back to 3x3), sorted ascending, so dilation = (kernel - 1) / 2."""
    kernels = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(branches)))
    return [(k - 1) // 2 for k in kernels]


class EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: reduce, split, transform (dilated depth-wise),
    hierarchical fusion, merge (grouped point-wise)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, branches: int = _BRANCHES,
                 receptive_limit: int = 7, residual_output: bool = True) -> None:
        super().__init__()
        if cout % branches:
            raise ValueError(f"EESP output width {cout} must be a multiple of the branch count {branches}")
        width = cout // branches
        self.stride = stride
        self.residual_output = residual_output
        self.proj_1x1 = _ConvBnAct(cin, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(_DepthwiseDilated(width, stride, d)
                                    for d in branch_dilations(branches, receptive_limit))
        self.conv_1x1_exp = _ConvBn(cout, cout, 1, groups=branches)
        self.br_after_cat = _BnAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            fused.append(branch(reduced) + fused[-1])  # hierarchical feature fusion
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if not self.residual_output:  # the strided unit: the down-sampler adds and activates
            return out
        if out.shape == x.shape:
            out = out + x
        return self.module_act(out)


class StridedEESP(nn.Module):
    """Down-sampling by 2: [avg-pool(x), EESP_stride2(x)] + projection of the pooled RGB input."""

    def __init__(self, cin: int, cout: int, receptive_limit: int, branches: int = _BRANCHES) -> None:
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, branches=branches, receptive_limit=receptive_limit,
                         residual_output=False)
        self.inp_reinf = nn.Sequential(_ConvBnAct(3, _REINF_CHANNELS, 3), _ConvBn(_REINF_CHANNELS, cout, 1))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image_at_stride: torch.Tensor) -> torch.Tensor:
        out = torch.cat([F.avg_pool2d(x, 3, stride=2, padding=1), self.eesp(x)], 1)
        return self.act(out + self.inp_reinf(image_at_stride))


class ESPNetv2Encoder(nn.Module):
    """Levels 1-4 of the ImageNet EESPNet (level 5 and the classifier are not used)."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = _CHANNELS
        lim = _RECEPTIVE_LIMIT
        self.level1 = _ConvBnAct(3, c1, 3, stride=2)
        self.level2_0 = StridedEESP(c1, c2, lim[0])
        self.level3_0 = StridedEESP(c2, c3, lim[1])
        self.level3 = nn.ModuleList(EESP(c3, c3, receptive_limit=lim[2]) for _ in range(_REPEATS[3]))
        self.level4_0 = StridedEESP(c3, c4, lim[2])
        self.level4 = nn.ModuleList(EESP(c4, c4, receptive_limit=lim[3]) for _ in range(_REPEATS[4]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the RGB image average-pooled (3x3, stride 2, pad 1) down to each down-sampler's output stride
        img4 = F.avg_pool2d(F.avg_pool2d(x, 3, 2, 1), 3, 2, 1)
        img8 = F.avg_pool2d(img4, 3, 2, 1)
        img16 = F.avg_pool2d(img8, 3, 2, 1)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, img4)
        l3 = self.level3_0(l2, img8)
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, img16)
        for unit in self.level4:
            l4 = unit(l4)
        return l1, l2, l3, l4


# --------------------------------------------------------------------------------------------
# Decoder blocks (attribute names follow the state dict: cbr.N / br.N Sequentials)
# --------------------------------------------------------------------------------------------


class _SeqConvBnAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class _SeqBnAct(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` equal groups (ShuffleNet)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class EfficientPyramidPooling(nn.Module):
    """Project, one depth-wise 3x3 per pyramid scale, fuse (BN+PReLU, shuffle, grouped 3x3, 1x1).

    Scales above 1 upsample before the conv and average-pool back; scales below 1 pool
    (adaptively, to at least 5 x 5) before the conv and upsample back.
    """

    def __init__(self, cin: int, proj: int, cout: int, last: bool = False,
                 scales: Sequence[float] = _PYRAMID_SCALES) -> None:
        super().__init__()
        self.scales = tuple(sorted(scales, reverse=True))
        self.last = last
        self.projection_layer = _SeqConvBnAct(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, padding=1, groups=proj, bias=False) for _ in self.scales)
        n = len(self.scales)
        self.merge_layer = nn.Sequential(
            _SeqBnAct(proj * n), ChannelShuffle(n), _SeqConvBnAct(proj * n, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=last),
        )
        if not last:
            self.br = _SeqBnAct(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[2:]
        outs = []
        for scale, conv in zip(self.scales, self.stages):
            hs, ws = max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale))
            if scale > 1.0:
                y = F.interpolate(x, (hs, ws), mode="bilinear", align_corners=True)
                y = F.adaptive_avg_pool2d(conv(y), (h, w))
            elif scale < 1.0:
                y = conv(F.adaptive_avg_pool2d(x, (hs, ws)))
                y = F.interpolate(y, (h, w), mode="bilinear", align_corners=True)
            else:
                y = conv(x)
            outs.append(y)
        y = self.merge_layer(torch.cat(outs, 1))
        return y if self.last else self.br(y)


class EfficientPointwise(nn.Module):
    """Encoder-to-decoder projection: grouped 3x3 CBR scaled by a per-channel sigmoid gate of
    the input's global average (a 1x1 conv of the pooled input)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = _SeqConvBnAct(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 (s = 2.0) with the EdgeNets bottom-up decoder; ImageNet-normalised input, logits
    ``B x num_classes x H x W`` at the input size (H, W multiples of 32)."""

    def __init__(self, num_classes: int = NUM_OUTPUTS) -> None:
        super().__init__()
        c1, c2, c3, c4 = _CHANNELS
        dec = (4 * _DECODER_BASE, 3 * _DECODER_BASE, 2 * _DECODER_BASE, num_classes)
        proj = min(num_classes // 2, _DECODER_BASE)
        self.base_net = ESPNetv2Encoder()
        self.bu_dec_l1 = EfficientPyramidPooling(c4, proj, dec[0])
        self.bu_dec_l2 = EfficientPyramidPooling(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyramidPooling(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyramidPooling(dec[2], proj, dec[3], last=True)
        self.merge_enc_dec_l2 = EfficientPointwise(c3, dec[0])
        self.merge_enc_dec_l3 = EfficientPointwise(c2, dec[1])
        self.merge_enc_dec_l4 = EfficientPointwise(c1, dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(f"ESPNetv2 input {w}x{h} (WxH): both sides must be multiples of {INPUT_MULTIPLE}")
        l1, l2, l3, l4 = self.base_net(x)
        y = self.bu_dec_l1(l4)
        for merge, br, epp, skip in ((self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2, l3),
                                     (self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3, l2),
                                     (self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4, l1)):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
            y = epp(br(y + merge(skip)))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)


def load_espnetv2(path: str | os.PathLike, device: torch.device | str = "cpu") -> ESPNetv2Segmentation:
    """The network with the state dict at ``path`` (strict: every name and shape must match)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"ESPNetv2 teacher device '{device}' asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): use @cpu or a CUDA machine")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ESPNetv2 weights '{path}' not found (expected the EdgeNets state dict "
                                f"espnetv2_s_2.0_city_1024x512.pth, e.g. from $AMS_ASSETS/models/teacher)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = ESPNetv2Segmentation(NUM_OUTPUTS)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------


def _round_to_multiple(v: int) -> int:
    return max(INPUT_MULTIPLE, int(round(v / INPUT_MULTIPLE)) * INPUT_MULTIPLE)


class ESPNetv2Teacher:
    """Cityscapes labels from ESPNetv2: every frame is resized to ``input_size`` (W, H; rounded to
    multiples of 32), ImageNet-normalised and labelled on the model's device, the whole list in
    one batched forward pass (``max_batch`` > 0 splits it, e.g. for a small CPU); the argmax map is
    resized (nearest) back to the frame. Output 19 (background) becomes the ignore id 255.

    The device is wherever :attr:`model` is: ``device`` here, or wherever the server's device
    setting later moves ``model`` (``teachers.place_teacher``)."""

    def __init__(self, path: str | os.PathLike, label_space: LabelSpace | str | None = None,
                 device: torch.device | str = "cpu", input_size: tuple[int, int] = DEFAULT_TEACHER_SIZE,
                 max_batch: int = 0) -> None:
        self.label_space = CITYSCAPES if label_space is None else get_label_space(label_space)
        if self.label_space.num_classes != BACKGROUND_INDEX:
            raise ValueError(f"ESPNetv2 predicts the 19 Cityscapes classes; label space "
                             f"'{self.label_space.name}' has {self.label_space.num_classes} (use 'cityscapes')")
        if max_batch < 0:
            raise ValueError(f"max_batch must be 0 (one forward for the whole list) or positive, got {max_batch}")
        self.model = load_espnetv2(path, device)
        self.input_size = (_round_to_multiple(input_size[0]), _round_to_multiple(input_size[1]))
        self.max_batch = int(max_batch)
        self.min_confidence = 0.0  # (issue #29) set by place_teacher: doubtful pixels become ignore
        self.name = f"espnetv2:{path}"
        lut = np.arange(256, dtype=np.uint8)
        lut[BACKGROUND_INDEX:] = self.label_space.ignore_index
        self._lut = lut

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "ESPNetv2Teacher":
        self.model.to(torch.device(device))
        return self

    def _input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        w, h = self.input_size
        dev = self.device
        batch = [a if a.shape[:2] == (h, w) else cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
                 for a in images]
        x = torch.from_numpy(np.ascontiguousarray(np.stack(batch)))
        if dev.type == "cuda":
            x = x.pin_memory()
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def logits(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``B x 20 x H x W`` logits at ``input_size`` for uint8 RGB frames (one forward pass)."""
        self.model.eval()
        return self.model(self._input(as_image_list(images)))

    def label(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        imgs = as_image_list(images)
        step = self.max_batch or len(imgs)
        out: list[np.ndarray] = []
        for i in range(0, len(imgs), step):
            chunk = imgs[i:i + step]
            labels = confident_class_map(self.logits(chunk), self.min_confidence).cpu().numpy()
            for img, lab in zip(chunk, labels):
                if lab.shape != img.shape[:2]:
                    lab = cv2.resize(lab, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
                out.append(self._lut[lab])
        return out


_DEVICE_SUFFIX = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _factory(arg: str, space: LabelSpace | None, device: torch.device | str | None = None) -> ESPNetv2Teacher:
    """``espnetv2:PATH[@DEVICE]`` (DEVICE: cpu | cuda | cuda:N; the CPU by default). An explicit
    ``device`` argument (the server's device setting) overrides the suffix."""
    path, sep, suffix = arg.rpartition("@")
    if not sep or not _DEVICE_SUFFIX.match(suffix.strip().lower()):
        path, suffix = arg, "cpu"
    return ESPNetv2Teacher(path, label_space=space, device=device if device is not None else suffix.strip().lower())


def _register() -> None:
    register_teacher_factory("espnetv2", _factory)


_register()
