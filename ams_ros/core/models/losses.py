"""The segmentation loss every training path uses: online AMS phases, offline pretraining and
the key-frame baselines (Just-In-Time, ShadowTutor).

One implementation so that "which pixels count" is decided once: the ignore id (255) and any
class id the student does not have (a teacher label outside the selected classes) are left out,
and a batch without a single valid pixel gives a zero loss with a zero gradient rather than NaN.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


def logits_of(model: nn.Module, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """``B x C x H x W`` logits of ``model`` on ``x``, resized (bilinear) to ``size`` = (H, W) if given.

    torchvision's segmentation models return ``{"out": ...}``; the students return the tensor.
    """
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    if size is not None and tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out


def mask_unknown_classes(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``labels`` with every id the model cannot predict (``>= num_classes``) set to ``ignore_index``."""
    if ignore_index < num_classes:
        return labels
    return labels.masked_fill(labels >= num_classes, ignore_index)


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Optional[Sequence[float]] = None,
) -> tuple[torch.Tensor, bool]:
    """Mean pixel cross-entropy of ``logits`` (B x C x H x W) against int64 ``labels`` (B x H x W).

    Returns ``(loss, valid)``; ``valid`` is False when no pixel counts, and the loss is then a
    zero that still back-propagates (to zero gradients).
    """
    y = mask_unknown_classes(labels, int(logits.shape[1]), ignore_index)
    if not bool((y != ignore_index).any()):
        return logits.sum() * 0.0, False
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(list(class_weights), dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, y, weight=weight, ignore_index=ignore_index), True
