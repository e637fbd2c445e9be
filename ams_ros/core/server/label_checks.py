"""Teacher labels worth learning from (issue #29): what a robot's batch must pass before it is trained on.

The gate on each phase (:mod:`~ams_ros.core.server.quality_gate`) judges a phase against the
teacher's labels, so it cannot see a teacher that goes wrong: a phase that fits wrong labels scores
well on them. These checks look at the batch itself, before it enters the buffer:

- **no picture**: a frame whose pixels barely vary (standard deviation below ``min_frame_std`` on
  0-255, e.g. a covered lens, black frames, a camera that lost its signal) carries nothing to learn
  and its labels say nothing about the scene; the frame is left out (the rest of its batch is kept);
- **no labels**: a batch in which the teacher labelled no pixel (everything ignore: its scores were
  not finite, or below its confidence threshold everywhere) is refused;
- **one class**: a batch whose labelled pixels are ``one_class_share`` or more one class, after
  the robot's batches were varied, is refused: a teacher that suddenly sees one class everywhere
  (night, a glare, a failing model) is far likelier than a scene that changed that much between two
  batches. A robot whose scene really became one class (it parked in front of a wall) is trained on
  again after ``one_class_batches`` such batches in a row (two minutes at the paper's 10 s period).
  A robot whose batches were one class from its start is trained on from the start: nothing says
  its teacher went wrong.

A refused batch (a frame left out) is neither trained on nor fed to the robot's sampling-rate
control (its labels are not believed), and is reported (ServerStatus ``batches_refused``,
``frames_refused`` and ``last_refusal``). Each threshold is a declared parameter of ``ams_trainer`` (one
default, here); 1.0 / 0 turn a check off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ams_ros.core.common.config import knob


@dataclass(frozen=True)
class LabelCheckConfig:
    min_frame_std: float = knob(3.0, "Frames whose pixels' standard deviation (0-255) is below this carry no picture "
                                     "(a covered lens, black frames) and are not trained on (0 = off)")
    one_class_share: float = knob(0.97, "A batch whose teacher-labelled pixels are this share or more one class, "
                                        "where most of the robot's recent batches were varied, is not trained on "
                                        "(1.0 = off)")
    one_class_batches: int = knob(12, "One-class batches in a row (after varied ones) refused before the robot's "
                                      "scene is taken to be one class and trained on again")

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_frame_std <= 255.0:
            raise ValueError(f"min_frame_std is a pixel standard deviation on 0-255 (0 = off), got {self.min_frame_std}")
        if not 0.5 < self.one_class_share <= 1.0:
            raise ValueError(f"one_class_share must be in (0.5, 1] (1.0 = off), got {self.one_class_share}")
        if self.one_class_batches < 1:
            raise ValueError(f"one_class_batches must be >= 1, got {self.one_class_batches}")


@dataclass(frozen=True)
class BatchVerdict:
    """Which frames of a batch may be trained on, and why the others may not ("" = all of them)."""

    keep: list[int]
    reason: str

    @property
    def refused(self) -> bool:
        return not self.keep


def frame_has_picture(frame: np.ndarray, min_std: float) -> bool:
    """False for a frame whose pixels barely vary (a covered lens, black frames)."""
    if min_std <= 0.0:
        return True
    return float(np.asarray(frame, dtype=np.float32).std()) >= min_std


def top_class_share(labels: Sequence[np.ndarray], ignore_index: int) -> float:
    """The share of the labelled pixels of ``labels`` that are their most frequent class (NaN: none)."""
    counts = np.zeros(256, dtype=np.int64)
    for lab in labels:
        counts += np.bincount(np.asarray(lab, dtype=np.uint8).ravel(), minlength=256)
    counts[ignore_index] = 0
    total = int(counts.sum())
    return float(counts.max()) / total if total else float("nan")


class LabelChecks:
    """The checks for one robot's batches; keeps whether its batches were ever varied and how many
    one-class batches came in a row since (persisted with the session)."""

    def __init__(self, config: LabelCheckConfig | None = None, ignore_index: int = 255) -> None:
        self.config = config or LabelCheckConfig()
        self.ignore_index = int(ignore_index)
        self.seen_varied = False
        self.one_class_run = 0

    def check(self, frames: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> BatchVerdict:
        cfg = self.config
        keep = [i for i, f in enumerate(frames) if frame_has_picture(f, cfg.min_frame_std)]
        dark = len(frames) - len(keep)
        no_picture = (f"{dark} of {len(frames)} frames carry no picture (pixel std below {cfg.min_frame_std:g}: "
                      f"a covered lens or black frames)") if dark else ""
        if not keep:
            return BatchVerdict([], no_picture)
        share = top_class_share([labels[i] for i in keep], self.ignore_index)
        if share != share:  # NaN: not one labelled pixel
            return BatchVerdict([], "the teacher labelled no pixel (all ignore: scores not finite or below its "
                                    "confidence threshold)")
        if share < cfg.one_class_share or cfg.one_class_share >= 1.0:  # varied, or the check is off
            self.seen_varied, self.one_class_run = True, 0
            return BatchVerdict(keep, no_picture)
        self.one_class_run += 1
        if self.seen_varied and self.one_class_run <= cfg.one_class_batches:
            return BatchVerdict([], f"{100 * share:.1f} % of the teacher's labels are one class after varied batches "
                                    f"(one-class batch {self.one_class_run} in a row; trained on from the "
                                    f"{cfg.one_class_batches + 1}th: one_class_share {cfg.one_class_share:g}, "
                                    f"one_class_batches {cfg.one_class_batches})")
        return BatchVerdict(keep, no_picture)
