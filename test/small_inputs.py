"""Tiny inputs several test modules build: a small convolutional net (flat parameters, fingerprint and
update encodings in milliseconds) and a short MJPG video file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn


def small_net(width: int = 8) -> nn.Module:
    """Conv, BatchNorm, ReLU, Conv: four parameter tensors, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1))


def write_video(path: Path, frames: int, fps: float = 10.0) -> str:
    """``frames`` 16x8 MJPG frames of growing grey levels at ``fps``; returns the path."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (16, 8))
    for i in range(frames):
        out.write(np.full((8, 16, 3), 20 * i % 255, np.uint8))
    out.release()
    return str(path)
