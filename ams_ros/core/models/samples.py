"""Labelled frames, the unit every training step consumes: a stream time, an RGB frame and its
teacher label, and the tensors the student trains on.

The base station's sample buffer (:mod:`ams_ros.core.server.sample_buffer`) stores these, the
trainer, fused training and the scheduler's error estimate batch them, and offline pretraining
(:mod:`ams_ros.core.models.pretraining`) uses the same conversion.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch


class BufferEntry(NamedTuple):
    """One training sample: stream time, RGB frame (H x W x 3 uint8), teacher label (H x W uint8)."""

    t: float
    frame: np.ndarray
    label: np.ndarray


def batch_to_tensors(
    entries: Sequence[BufferEntry], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float B x 3 x H x W images in [0, 1] and int64 B x H x W labels for the student."""
    frames = torch.from_numpy(np.stack([e.frame for e in entries])).to(device)
    labels = torch.from_numpy(np.stack([e.label for e in entries])).to(device)
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    return x, labels.long()
