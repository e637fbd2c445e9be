"""The base station's gate on each phase (issue #29): a phase that makes the robot worse is not shipped.

Delivery is hardened (signatures, chains, checksums); this guards the *content*. Before a phase
trains, the newest ``gate_frames`` teacher-labelled frames of the robot's horizon are held out of it
and the running model (the weights the robot runs) is scored on them; after the phase the
candidate is scored on the same frames. A candidate more than ``gate_margin`` mIoU points below the
running model is discarded: the phase is undone (weights, Adam state; no version is used) and
counted, and the robot keeps what it runs.

Why the newest frames, held out: they are the ones the robot sees next (AMS tracks drift, and the
newest labels say most about the next period), and held out they judge the candidate on frames it
did not fit (a phase always looks better on its own training frames). The cost is that those few
frames join training one period later (they are the oldest-but-one batch's by the next phase); the
alternative, judging each update after the fact on the next batch, costs no training frames but
lets a bad update run on the robot for a whole period before it is rolled back. The scores are
the teacher's labels, not ground truth: the gate catches a phase that departs from the teacher,
not a wrong teacher (issue #29's teacher-label checks are apart from it).

A scene change is not judged (``gate_scene_drop``). Just after one, the newest frames are of a scene
the candidate has barely trained on; it and the running model both score badly on them, and a
candidate a little worse is discarded, leaving the robot on the old scene's model for another
period or two (on the 12-minute playlist that cost 10.7 points on one new item, 0.8 over the stream).
The change is told by the data, not by the models: the running model is scored on the previous
phase's held-out frames as well as on this phase's, and a drop of more than ``gate_scene_drop``
points between the two, with the same weights, is the scene changing, so the candidate ships. A
bad phase does not look like that (the running model scores as before; the candidate is the one
that drops), and a bad model shipped is no scene change either (the same weights on both sets).
Measured on the 12-minute playlist with ``gate_scene_drop`` 10, it shipped 14 phases unjudged and
changed nothing else (the same 9 phases discarded, the same mIoU to four digits): the phases the gate
discards there come a period or more after the change, when both held-out sets are of the new scene.
So it is off by default (0), kept for a stream whose scene changes are sharper than its noise.

The same frames keep the robot from drifting below where it started: the starting (pretrained)
weights are scored on them too, and after ``drift_phases`` phases in a row that leave the robot more
than ``gate_margin`` points below them, the session sends the robot back to them
(:meth:`~ams_ros.core.server.session.RobotSession.rollback` to ``START``, a signed catch-up as the
chain's next version). Many small steps, each within the margin, can add up to a model worse than
the one the robot started with; this is the floor under them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ams_ros.core.common.config import knob
from ams_ros.core.common.metrics import ConfusionMatrix
from ams_ros.core.models.losses import logits_of
from ams_ros.core.models.samples import BufferEntry, batch_to_tensors


@dataclass(frozen=True)
class GateConfig:
    gate_frames: int = knob(0, "Newest labelled frames held out of each phase's training to judge it against the "
                               "running model (0 = no gate: every phase ships)")
    gate_margin: float = knob(2.0, "A phase whose mIoU on the held-out frames (against the teacher's labels) is more "
                                   "than this many points below the running model's is discarded, not shipped")
    gate_scene_drop: float = knob(0.0, "With the gate on: a phase whose held-out frames score the running model more "
                                       "than this many mIoU points below the previous phase's held-out frames (a scene "
                                       "change) ships without being judged (0 = judge every phase; 10 changed nothing on "
                                       "the 12-minute playlist, docs/results.md)")
    drift_phases: int = knob(3, "With the gate on: after this many phases in a row that leave the robot more than "
                                "gate_margin points below its starting (pretrained) weights on the held-out frames, "
                                "the robot is sent back to those weights as the chain's next version (0 = never)")

    def __post_init__(self) -> None:
        if self.gate_frames < 0:
            raise ValueError(f"gate_frames must be >= 0 (0 = no gate), got {self.gate_frames}")
        if not 0.0 <= self.gate_margin <= 100.0:
            raise ValueError(f"gate_margin is in mIoU points: 0 to 100, got {self.gate_margin}")
        if not 0.0 <= self.gate_scene_drop <= 100.0:
            raise ValueError(f"gate_scene_drop is in mIoU points: 0 to 100 (0 = judge every phase), got "
                             f"{self.gate_scene_drop}")
        if self.drift_phases < 0:
            raise ValueError(f"drift_phases must be >= 0 (0 = never back to the starting weights), got {self.drift_phases}")

    @property
    def enabled(self) -> bool:
        return self.gate_frames > 0


def drifted(runs: float, start: float, config: GateConfig) -> bool:
    """True when the model the robot runs (mIoU points) is more than ``gate_margin`` below the
    starting weights' on the same frames."""
    return runs < start - config.gate_margin


def held_out(window: Sequence[BufferEntry], config: GateConfig) -> tuple[list[BufferEntry], Optional[float]]:
    """The frames that judge this phase and the stream time training may use up to (``None``: all of
    the window). No gate while the window holds fewer than twice ``gate_frames`` frames (the first
    periods): a phase then trains on all of them."""
    k = config.gate_frames
    if k <= 0 or len(window) < 2 * k:
        return [], None
    return list(window[-k:]), float(window[-k - 1].t)


def score(model: nn.Module, entries: Sequence[BufferEntry], ignore_index: int = 255) -> float:
    """The model's mIoU in points (0-100) on ``entries`` against their teacher labels (the gate's unit)."""
    return 100.0 * teacher_miou(model, entries, ignore_index)


@torch.no_grad()
def teacher_miou(model: nn.Module, entries: Sequence[BufferEntry], ignore_index: int = 255, chunk: int = 8) -> float:
    """The model's mIoU (0-1) on ``entries`` against their teacher labels, over the classes present in
    labels or predictions; NaN when there is no entry or no labelled pixel. One implementation for
    the gate and the scheduler's :func:`~ams_ros.core.fleet.scheduling.student_error`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cm: Optional[ConfusionMatrix] = None
    try:
        for i in range(0, len(entries), chunk):
            x, y = batch_to_tensors(entries[i:i + chunk], device)
            logits = logits_of(model, x, tuple(y.shape[-2:]))
            cm = cm or ConfusionMatrix(int(logits.shape[1]), ignore_index)
            cm.update(logits.argmax(1).cpu().numpy(), y.cpu().numpy())
    finally:
        model.train(was_training)
    return cm.miou() if cm is not None else float("nan")


def scene_changed(before: float, now: float, config: GateConfig) -> str:
    """Why a phase is not judged ("": it is): the running model scored ``now`` on this phase's held-out
    frames, more than ``gate_scene_drop`` points below the ``before`` it scored on the previous phase's."""
    if config.gate_scene_drop <= 0 or np.isnan(before) or np.isnan(now) or now >= before - config.gate_scene_drop:
        return ""
    return (f"a scene change: the running model scores {now:.1f} on the {config.gate_frames} newest frames, against "
            f"{before:.1f} on the previous phase's (gate_scene_drop {config.gate_scene_drop:g} points)")


def verdict(running: float, candidate: float, config: GateConfig) -> str:
    """Why the candidate is discarded ("" when it ships). A NaN score (no labelled pixel) never discards."""
    if np.isnan(running) or np.isnan(candidate) or candidate >= running - config.gate_margin:
        return ""
    return (f"mIoU {candidate:.1f} on the {config.gate_frames} newest frames held out, against the running model's "
            f"{running:.1f} (gate_margin {config.gate_margin:g} points)")
