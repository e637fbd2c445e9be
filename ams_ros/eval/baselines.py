"""The baselines' own algorithms, as small pieces a node could reuse.

- Just-In-Time (Mullapudi et al. 2019): :func:`jit_next_stride` and a :class:`KeyFrameDistiller`
  configured with SGD (momentum 0.9, Nesterov, lr 0.01) that trains on the newest key frame until
  its accuracy passes a threshold or the step limit is hit, optionally updating only a gamma
  fraction of the parameters chosen gradient-guided (as the AMS paper runs it, §4.1).
- ShadowTutor (Chung et al. 2020): :func:`shadowtutor_next_stride`, :func:`decoder_tail` and the
  same distiller with Adam (lr 0.01), skip-if-good, stop-above-threshold and keep-the-best.
- Remote+Tracking: :class:`LabelTracker`, OpenCV Farneback flow with the paper's parameters.
- :class:`KeyFrameSchedule`: when the edge sends the next key frame.

Everything AMS itself does (Algorithm 2, selection strategies, codecs, metrics) comes from
``ams_ros.core``; the gradient-guided choice of coordinates here is the core's
:func:`~ams_ros.core.server.selection.phase_indices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn

from ams_ros.core.models.losses import logits_of, mask_unknown_classes, segmentation_loss
from ams_ros.core.common.metrics import ConfusionMatrix
from ams_ros.core.models.params import flatten_tensors, load_flat
from ams_ros.core.server.selection import GRADIENT_GUIDED, phase_indices
from ams_ros.core.models.student import train_mode_frozen_bn

FP16_MAX = float(np.finfo(np.float16).max)  # the largest weight a float16 update carries

# ----------------------------------------------------------------------------- key-frame strides


def jit_next_stride(stride: int, success: bool, lo: int = 8, hi: int = 64) -> int:
    """Just-In-Time: double the key-frame stride after a success, halve it after a failure."""
    return int(min(hi, max(lo, stride * 2 if success else stride // 2)))


def shadowtutor_next_stride(stride: int, accuracy: float, threshold: float = 0.8, lo: int = 8, hi: int = 64) -> int:
    """ShadowTutor: ratio = (a + 1 - 2t) / (1 - t) if a > t else a / t; clip(int(ratio * stride), lo, hi)."""
    a, t = float(accuracy), float(threshold)
    if not np.isfinite(a):
        a = 0.0
    ratio = (a + 1 - 2 * t) / (1 - t) if a > t else a / t
    return int(min(hi, max(lo, int(ratio * stride))))


class KeyFrameSchedule:
    """The edge's key-frame timer: a stride in frames of the video's nominal rate.

    The edge keeps sending at the stride it last heard from the server; it never waits for a
    reply (stride changes travel down with the server's answers).
    """

    def __init__(self, stride: int, nominal_fps: float) -> None:
        self.stride = int(stride)
        self.fps = float(nominal_fps)
        self.last_t: float | None = None

    def due(self, t: float) -> bool:
        return self.last_t is None or t >= self.last_t + self.stride / self.fps - 1e-6

    def mark(self, t: float) -> None:
        self.last_t = float(t)

    def set_stride(self, stride: int) -> None:
        self.stride = int(stride)


# ----------------------------------------------------------------------------- accuracy


def keyframe_accuracy(pred: np.ndarray, label: np.ndarray, num_classes: int, kind: str = "miou") -> float:
    """Student accuracy on a key frame: ``miou`` (classes present in either map) or ``min_iou``
    (the lowest class IoU, the public Just-In-Time ports' definition)."""
    iou = ConfusionMatrix(num_classes).update(pred, label).iou_per_class()
    if not np.any(np.isfinite(iou)):
        return float("nan")
    if kind == "miou":
        return float(np.nanmean(iou))
    if kind == "min_iou":
        return float(np.nanmin(iou))
    raise ValueError(f"accuracy must be 'miou' or 'min_iou', got '{kind}'")


# ----------------------------------------------------------------------------- which parameters


def decoder_tail(model: nn.Module) -> Callable[[str], bool]:
    """ShadowTutor's partial distillation: train (and send) only what follows the encoder.

    For the DeepLabV3-MobileNetV2 student that is the ASPP head and the classifier; for
    LR-ASPP the segmentation head; otherwise every parameter outside ``backbone``.
    """
    names = [n for n, _ in model.named_parameters()]
    if any(n.startswith("head.") for n in names) and any(n.startswith("classifier.") for n in names):
        return lambda n: n.startswith(("head.", "classifier."))
    if any(n.startswith("net.classifier.") for n in names):
        return lambda n: n.startswith("net.classifier.")
    return lambda n: not n.startswith(("backbone.", "net.backbone."))




# ----------------------------------------------------------------------------- key-frame distillation


@dataclass
class KeyFrameOutcome:
    """What the server did with one key frame."""

    acc_before: float          # the model's accuracy on the key frame when it arrived
    acc_after: float           # after training (= acc_before when it did not train)
    steps: int
    success: bool              # accuracy reached the threshold (before or during training)
    indices: np.ndarray        # flat indices to ship (empty: nothing to send)
    base_values: np.ndarray    # their values before training (for residual encodings)


class KeyFrameDistiller:
    """Train the server's copy of the student on one key frame until accuracy >= threshold.

    ``optimizer`` is ``sgd`` (momentum, Nesterov, weight decay: Just-In-Time) or ``adam``
    (ShadowTutor). ``trainable(name)`` restricts training to some parameters (the rest are
    frozen, so no gradient flows into them). ``gamma < 1`` trains and ships only that fraction
    of the trainable coordinates, chosen at each key frame from the largest ``|u|`` of the
    previous key frame's last optimiser step (gradient-guided, paper §3.1.2; random the first
    time); the optimiser still updates its state for every coordinate, as in Algorithm 2.
    Accuracy is read from each training forward pass (BatchNorm is frozen, so it equals the
    inference output); a key frame already above the threshold is not trained on, and the loop
    stops as soon as it passes it. ``keep_best`` (ShadowTutor) keeps the best weights seen.
    """

    def __init__(self, model: nn.Module, num_classes: int, *, optimizer: str = "sgd", lr: float = 0.01,
                 momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, max_steps: int = 8,
                 threshold: float = 0.75, accuracy: str = "miou", trainable: Callable[[str], bool] | None = None,
                 gamma: float = 1.0, keep_best: bool = False, seed: int = 0,
                 max_abs_weight: float = FP16_MAX) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.model = model.eval()
        self.num_classes = int(num_classes)
        self.max_steps, self.threshold, self.accuracy = int(max_steps), float(threshold), accuracy
        self.gamma, self.keep_best = float(gamma), bool(keep_best)
        self.max_abs_weight = float(max_abs_weight)
        named = list(model.named_parameters())
        self.all_params = [p for _, p in named]
        sizes = [p.numel() for p in self.all_params]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        keep = [trainable is None or trainable(n) for n, _ in named]
        if not any(keep):
            raise ValueError("no trainable parameter selected")
        for (_, p), k in zip(named, keep):
            p.requires_grad_(bool(k))
        self.params = [p for p, k in zip(self.all_params, keep) if k]
        # flat indices (in the whole model's params.py layout) of the trainable vector's entries
        self.flat_index = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i, k in enumerate(keep) if k])
        self.n = int(self.flat_index.size)
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                       weight_decay=weight_decay)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got '{optimizer}'")
        self.prev_update: torch.Tensor | None = None
        self.rng = np.random.default_rng([seed, 7])
        self.diverged = 0  # key frames whose training hit a non-finite loss or weight (step undone)

    def _sane(self, w: torch.Tensor) -> bool:
        """Finite, and within what an update can carry (float16): beyond that training has
        diverged (SGD at lr 0.01 does on some footage), and shipping it would only be refused."""
        return bool(torch.isfinite(w).all()) and float(w.abs().max()) <= self.max_abs_weight

    def _select(self) -> torch.Tensor | None:
        """Boolean mask over the trainable vector (None = all of it)."""
        if self.gamma >= 1.0:
            return None
        idx = phase_indices(GRADIENT_GUIDED, self.n, self.gamma, self.rng, self.prev_update)
        mask = torch.zeros(self.n, dtype=torch.bool, device=self.params[0].device)
        mask[torch.as_tensor(idx, dtype=torch.int64, device=mask.device)] = True
        return mask

    def _acc(self, logits: torch.Tensor, label: np.ndarray) -> float:
        pred = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        return keyframe_accuracy(pred, label, self.num_classes, self.accuracy)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, x)

    def distill(self, frame: np.ndarray, label: np.ndarray) -> KeyFrameOutcome:
        """Train on (frame, teacher label) at the training size; returns what to ship."""
        device = self.params[0].device  # the student's (ams-eval --device)
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255.0
        y = torch.from_numpy(label.astype(np.int64))[None].to(device)
        y = mask_unknown_classes(y, self.num_classes)
        w0 = flatten_tensors(self.params).clone()
        mask = self._select()
        thr = self.threshold
        best_acc, best_w = -np.inf, None
        acc_before = float("nan")
        acc = float("nan")
        steps, success = 0, False
        train_mode_frozen_bn(self.model)
        try:
            while True:
                logits = self._forward(x)
                acc = self._acc(logits.detach(), label)
                if steps == 0:
                    acc_before = acc
                if self.keep_best and np.isfinite(acc) and acc > best_acc:
                    best_acc, best_w = acc, flatten_tensors(self.params).clone()
                if np.isfinite(acc) and acc >= thr:
                    success = True
                    break
                if steps >= self.max_steps or not bool((y != 255).any()):
                    break
                loss, _ = segmentation_loss(logits, y)
                if not bool(torch.isfinite(loss)):
                    self.diverged += 1
                    break
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                w_prev = flatten_tensors(self.params).clone()
                self.opt.step()
                w_new = flatten_tensors(self.params)
                w_kept = w_new if mask is None else torch.where(mask, w_new, w_prev)  # only the selected move
                if not self._sane(w_kept):  # diverged: keep the last sane weights
                    load_flat(self.params, w_prev)
                    self.opt.state.clear()  # and drop the poisoned optimiser moments
                    self.diverged += 1
                    break
                self.prev_update = (w_prev - w_new).abs()
                if mask is not None:
                    load_flat(self.params, w_kept)
                steps += 1
        finally:
            self.model.eval()
        if self.keep_best and best_w is not None and best_acc > acc:
            load_flat(self.params, best_w)  # the best model seen, not necessarily the last
            acc = best_acc
        w1 = flatten_tensors(self.params)
        if steps == 0 or torch.equal(w0, w1):
            sel = np.empty(0, dtype=np.int64)
            base = np.empty(0, dtype=np.float32)
        else:
            sel_local = np.flatnonzero(mask.cpu().numpy()) if mask is not None else np.arange(self.n)
            sel = self.flat_index[sel_local]
            base = w0.cpu().numpy()[sel_local].astype(np.float32)
        return KeyFrameOutcome(acc_before, acc, steps, success, sel, base)


# ----------------------------------------------------------------------------- Remote+Tracking

#: The paper's Farneback settings (§4.1): 5 iterations, Gaussian windows of 64, 3 pyramid
#: levels, polynomial expansion over 5 pixels (poly_sigma 1.1, OpenCV's value for poly_n 5).
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=64, iterations=5, poly_n=5, poly_sigma=1.1,
                 flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def warp_labels(labels: np.ndarray, from_gray: np.ndarray, to_gray: np.ndarray) -> np.ndarray:
    """Move a label map from one frame onto the next with Farneback flow (nearest, no blending)."""
    h, w = to_gray.shape
    flow = cv2.calcOpticalFlowFarneback(to_gray, from_gray, None, **FARNEBACK)  # to -> from, per pixel
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(labels, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_REPLICATE)


class LabelTracker:
    """The edge side of Remote+Tracking: the newest label map, carried frame to frame.

    ``reset(label, key_gray)`` installs a label that arrived for an earlier key frame; each
    ``track(gray)`` warps the current map onto the new frame (so a label that arrives late is
    first warped from its key frame to the present).
    """

    def __init__(self) -> None:
        self.label: np.ndarray | None = None
        self.gray: np.ndarray | None = None

    def reset(self, label: np.ndarray, key_gray: np.ndarray) -> None:
        self.label, self.gray = label, key_gray

    def track(self, frame_gray: np.ndarray) -> np.ndarray | None:
        if self.label is None:
            return None
        if self.gray is not frame_gray and not np.array_equal(self.gray, frame_gray):
            self.label = warp_labels(self.label, self.gray, frame_gray)
            self.gray = frame_gray
        return self.label
