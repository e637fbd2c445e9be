"""The "no customization" student: the teacher distilled into the student on generic footage.

The footage must not be the evaluated video (otherwise ``none`` would already be customised).
Frames are taken at ``sample_fps`` from every source, labelled by the teacher (the same cached
reference labels the evaluation uses), and split in time: the last ``holdout`` fraction of each
source is held out and the student's mIoU against the teacher on it is reported before and
after. Training is the core's offline :func:`~ams_ros.core.models.pretraining.distill` (Adam, BatchNorm
frozen, as online training) on the rest, with horizontally mirrored copies as augmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ams_ros.core.models.pretraining import distill
from ams_ros.core.common.metrics import ConfusionMatrix
from ams_ros.core.models.student import predict
from ams_ros.core.models.weights import load_student, save_student_checkpoint
from ams_ros.eval.clips import load_clip


@dataclass
class PretrainReport:
    checkpoint: str
    train_frames: int
    heldout_frames: int
    miou_before: float
    miou_after: float
    steps: int
    wall_s: float


def split_samples(spec_clips: Sequence, holdout: float) -> tuple[list, list]:
    """(train, held-out) (frame, label) pairs: the last ``holdout`` of each clip is held out."""
    train, held = [], []
    for clip in spec_clips:
        frames = [f for _, _, f in clip.frames()]
        labels = [np.asarray(clip.teacher[i]) for i in range(len(clip))]
        cut = len(frames) - int(round(holdout * len(frames))) if holdout > 0 else len(frames)
        cut = min(max(cut, 1), len(frames))
        train += list(zip(frames[:cut], labels[:cut]))
        held += list(zip(frames[cut:], labels[cut:]))
    return train, held


def score(model, samples, num_classes: int, size: tuple[int, int]) -> float:
    cm = ConfusionMatrix(num_classes)
    for f, lab in samples:
        cm.update(predict(model, [f], size=size)[0], lab)
    return cm.miou()


def pretrain(sources: Sequence[str], teacher, lut, student_name: str, weights: str | None, size: tuple[int, int],
             out: str | Path, space, steps: int = 300, batch_size: int = 8, lr: float = 1e-3, sample_fps: float = 1.0,
             holdout: float = 0.2, max_seconds: float = 0.0, flip: bool = True, cache_dir: str | None = None,
             exclude: Sequence[str] = (), seed: int = 0, log=print, progress: bool = True) -> PretrainReport:
    """Distil ``teacher`` into the student on ``sources``; writes the checkpoint ``out``."""
    for s in sources:
        for e in exclude:
            if Path(s).resolve() == Path(e).resolve():
                raise ValueError(f"'{s}' is the evaluated footage: pretrain on other sources")
    t0 = time.monotonic()
    clips = [load_clip(s, size, teacher, lut, eval_fps=sample_fps, max_seconds=max_seconds, cache_dir=cache_dir,
                       progress=progress) for s in sources]
    train, held = split_samples(clips, holdout)
    n_cls = clips[0].num_classes
    torch.manual_seed(seed)  # layers the weights do not cover start the same way every run
    model = load_student(student_name, num_classes=n_cls, weights=weights or None)
    before = score(model, held, n_cls, size) if held else float("nan")
    log(f"[ams-eval pretrain] {len(train)} training / {len(held)} held-out frames from {list(sources)}; "
        f"held-out mIoU vs teacher before: {before:.3f}")
    samples = list(train)
    if flip:
        samples += [(np.ascontiguousarray(f[:, ::-1]), np.ascontiguousarray(lab[:, ::-1])) for f, lab in train]

    def progress(step: int, loss: float) -> None:
        if step % 25 == 0 or step == steps - 1:
            log(f"[ams-eval pretrain] step {step + 1}/{steps} loss {loss:.3f}")

    distill(model, samples, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    after = score(model, held, n_cls, size) if held else float("nan")
    save_student_checkpoint(model, out, student_name, n_cls, space, pretrained_on=[str(s) for s in sources],
                            heldout_miou=float(after), heldout_miou_before=float(before), steps=int(steps),
                            input_size=list(size), teacher=getattr(teacher, "name", ""))
    log(f"[ams-eval pretrain] held-out mIoU vs teacher after: {after:.3f}; wrote {out}")
    return PretrainReport(str(out), len(train), len(held), before, after, steps, time.monotonic() - t0)
