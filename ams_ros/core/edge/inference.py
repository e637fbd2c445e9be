"""The robot's per-frame work around the student: image to tensor, inference, label map, and the
colour mask and overlay, all on the model's device.

The segmenter node used to argmax on the device, copy the label map to the host and colourise
and blend it there with NumPy (float32 per pixel), and did so for every frame whether or not
anybody subscribed to the mask or the overlay. Here the palette lookup and the blend run on the
device (a gather and one fused multiply-add), and the node asks for them only for topics that
have subscribers (``publisher.get_subscription_count()``, as image_pipeline does), so with only
the labels subscribed the work around the model is: one host-to-device copy of the uint8 frame
(pinned and non-blocking on CUDA), ``/255``, the argmax and one device-to-host copy of the
uint8 label map. ``ams-bench`` reports the time of this pipeline against the bare model.

With a graph runtime (ONNX Runtime, OpenVINO: :mod:`ams_ros.core.edge.runtimes`) the runner takes
the uint8 frame itself and returns the label map: the conversion and the argmax run inside its graph.

Precision: ``inference_dtype`` float16 | bfloat16 runs the forward pass under ``torch.autocast``
while the weights stay float32, so the double buffer's copies, their fingerprint and the updates
written into them are those of the server's float32 model (a model cast to half would have
another fingerprint and round every update twice).
"""

from __future__ import annotations


import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ams_ros.core.common.devices import autocast_for, resolve_device, resolve_dtype
from ams_ros.core.edge.runtimes import FrameRunner
from ams_ros.core.models.student import class_map
from ams_ros.core.models.labels import LabelSpace, _palette_lut


class EdgeInference:
    """Frame -> label map (and on request colour mask and overlay) with the student on its device."""

    def __init__(self, space: LabelSpace, input_size: tuple[int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype | str = torch.float32, channels_last: bool = False) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = resolve_dtype(dtype)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.channels_last = bool(channels_last)
        self._pin = self.device.type == "cuda"
        self.palette = torch.from_numpy(np.ascontiguousarray(_palette_lut(space))).to(self.device)  # 256 x 3 uint8

    def to_device(self, rgb: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 frame as a uint8 tensor on the device (pinned, non-blocking copy on CUDA)."""
        a = np.ascontiguousarray(rgb)
        if not a.flags.writeable:  # a view of a message's buffer: torch only wraps writable memory (never written)
            a = a.copy()
        t = torch.from_numpy(a)
        if self._pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    @torch.no_grad()
    def _forward(self, net: nn.Module | FrameRunner, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(H x W uint8 labels on the device, the frame on the device when it was copied at full size)."""
        w, h = self.input_size
        same = frame.shape[:2] == (h, w)
        small = frame if same else cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        if isinstance(net, FrameRunner):  # ONNX Runtime / OpenVINO: conversion, network and argmax in one graph
            lab = torch.from_numpy(np.ascontiguousarray(net.labels(small)))[None]
            if lab.shape[-2:] != frame.shape[:2]:
                lab = F.interpolate(lab[None].float(), size=frame.shape[:2], mode="nearest")[0].to(torch.uint8)
            return lab[0], (self.to_device(small) if same else None)
        frame_t = self.to_device(small)
        x = frame_t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.dtype):
            logits = net(x)
        if isinstance(logits, dict):
            logits = logits["out"]
        lab = class_map(logits)  # 1 x h x w
        if lab.shape[-2:] != frame.shape[:2]:
            lab = F.interpolate(lab[None].float(), size=frame.shape[:2], mode="nearest")[0].to(torch.uint8)
        return lab[0], (frame_t if same else None)

    def labels(self, net: nn.Module, frame: np.ndarray) -> torch.Tensor:
        """H x W uint8 label map on the device at the frame's size (argmax at the input size,
        nearest back, as :func:`~ams_ros.core.models.student.predict`)."""
        return self._forward(net, frame)[0]

    def colorize(self, labels: torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 colour mask on the device (the palette of :func:`~ams_ros.core.models.labels.colorize`)."""
        return self.palette[labels.long()]

    def overlay(self, frame: torch.Tensor | np.ndarray, color: torch.Tensor, alpha: float) -> torch.Tensor:
        """``(1 - alpha) * frame + alpha * mask``, rounded, on the device (as :func:`~ams_ros.core.models.labels.overlay`)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        f = frame if isinstance(frame, torch.Tensor) else self.to_device(frame)
        out = f.float().mul_(1.0 - alpha).add_(color.float(), alpha=alpha)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def to_host(t: torch.Tensor) -> np.ndarray:
        """A contiguous NumPy copy (waits for the device)."""
        return np.ascontiguousarray(t.cpu().numpy())

    def run(self, net: nn.Module, frame: np.ndarray, mask: bool = False, overlay: bool = False,
            alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(labels, colour mask or None, overlay or None) as host arrays; only what is asked for is computed."""
        lab, frame_t = self._forward(net, frame)
        color = self.colorize(lab) if (mask or overlay) else None
        blended = None
        if overlay and color is not None:
            blended = self.overlay(frame if frame_t is None else frame_t, color, alpha)
        return (self.to_host(lab), None if not mask or color is None else self.to_host(color),
                None if blended is None else self.to_host(blended))


def place_model(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """``model`` on ``device`` (optionally channels-last), in eval mode."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
