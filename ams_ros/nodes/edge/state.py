"""What the three edge nodes of one process share: the double-buffered student, counters,
patch statistics. The segmenter builds the model from its parameters; the patcher writes
into it; EdgeStatus reports the counters of all three."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.receiver import UpdateReceiver
from ams_ros.core.edge.inference import place_model
from ams_ros.core.edge.runtimes import (TORCH, Agreement, agreement_needed, build_runtime, check_agreement,
                                        probe_frame, resolve_runtime)
from ams_ros.core.models.labels import LabelSpace
from ams_ros.core.models.weights import StudentSpec
from ams_ros.nodes.common.reject_log import RejectionCounter


@dataclass
class EdgeModel:
    """Double-buffered student plus the label space its outputs are in."""

    holder: DoubleBufferedModel
    label_space: LabelSpace
    student: str
    input_size: tuple[int, int]
    backend: str = TORCH
    agreement: Agreement | None = None  # the backend's output against PyTorch's on the probe frame

    @classmethod
    def build(cls, spec: StudentSpec, input_size: tuple[int, int], device: torch.device | str = "cpu",
              channels_last: bool = False, backend: str = TORCH, dtype: str = "float32",
              threads: int = 0) -> "EdgeModel":
        """Load the student once, put it on ``device`` and make the double buffer there, each copy
        with a runner of ``backend`` (resolved; RuntimeUnavailable naming the fix when it cannot
        run here or disagrees with PyTorch on the probe frame)."""
        device = torch.device(device)
        name = resolve_runtime(backend, device, dtype)
        model = place_model(spec.load(), device, channels_last)
        holder = DoubleBufferedModel(model, runtime=build_runtime(name, input_size, threads, device, dtype=dtype))
        agreement = None if name == TORCH else check_agreement(holder.active, holder.runner, probe_frame(input_size),
                                                               name, agreement_needed(name, dtype))
        return cls(holder, spec.space(), spec.name, input_size, name, agreement)


@dataclass
class PatchStats:
    applied: int = 0
    rejected: int = 0
    last_rejection: str = ""
    held: int = 0  # (issue #29) updates refused on purpose: model frozen, or a version stepped back from
    steps_back: int = 0  # swaps undone by the segmenter's check of the new model
    last_step_back: str = ""


@dataclass
class EdgeCounters:
    """Counters shared by the edge nodes of one process, reported in EdgeStatus."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    frames_received: int = 0
    frames_sampled: int = 0
    source_frames_skipped: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    sampling_rate: float = 0.0
    update_period: float = 0.0
    # every input any edge node rejected (EdgeStatus inputs_rejected / last_input_rejection)
    rejections: RejectionCounter = field(default_factory=RejectionCounter)


@dataclass
class EdgeState:
    """The shared state of one robot's edge process (the segmenter sets ``model`` when it starts)."""

    counters: EdgeCounters = field(default_factory=EdgeCounters)
    patch_stats: PatchStats = field(default_factory=PatchStats)
    model: EdgeModel | None = None
    receiver: UpdateReceiver | None = None  # the patcher's (set when it starts): the segmenter steps back through it

    def require_model(self, who: str) -> EdgeModel:
        if self.model is None:
            raise RuntimeError(f"{who} needs the student: build the student_segmenter of this process first")
        return self.model
