"""Offline pretraining: distil a teacher's labels into the student (the "no customization" model).

Used to pretrain the student on generic footage (or on the synthetic world before its first
domain shift) so that AMS starts from a model that is good in general but not on this video.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.models.losses import logits_of, segmentation_loss
from ams_ros.core.models.student import train_mode_frozen_bn
from ams_ros.core.models.samples import BufferEntry, batch_to_tensors


def distill(
    model: nn.Module,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    ignore_index: int = 255,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train every parameter with Adam on (frame, label) pairs already at the training size.

    BatchNorm statistics stay frozen, as in online training, so the pretrained model and the
    streamed one normalise identically. Returns the loss of every step.
    """
    if not samples:
        raise ValueError("distill() needs at least one (frame, label) sample")
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    train_mode_frozen_bn(model)
    for step in range(steps):
        idx = rng.integers(0, len(samples), size=batch_size)
        entries = [BufferEntry(0.0, samples[i][0], samples[i][1]) for i in idx]
        x, y = batch_to_tensors(entries)
        loss, _ = segmentation_loss(logits_of(model, x), y, ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses
