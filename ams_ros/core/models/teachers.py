"""Teachers: the server-side models whose labels the student is trained on.

A teacher turns RGB frames into ``uint8`` label maps (255 = ignore) at each frame's own size, in
its :attr:`Teacher.label_space`. :func:`build_teacher` makes one from a spec string:
``tflite:PATH``, ``torchvision:NAME[@WEIGHTS.pth]``, ``checkpoint:PATH``, or a prefix registered
by another module with :func:`register_teacher_factory` (the synthetic world adds ``oracle``,
:mod:`ams_ros.core.models.espnetv2` adds ``espnetv2:PATH[@DEVICE]``, a PyTorch Cityscapes teacher).
"""

from __future__ import annotations

import importlib

import logging
import os
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ams_ros.core.common.stream_defaults import DEFAULT_INPUT_SIZE
from ams_ros.core.models.labels import CITYSCAPES, VOC, LabelSpace, get_label_space
from ams_ros.core.models.student import predict, IMAGENET_MEAN, IMAGENET_STD, Normalize
from ams_ros.core.models.tflite_import import TFLiteSegmenter
from ams_ros.core.models.weights import (
    download_torchvision_state, checkpoint_label_space, load_student, read_checkpoint)

log = logging.getLogger(__name__)


@runtime_checkable
class Teacher(Protocol):
    """What the trainer needs from a teacher."""

    name: str
    label_space: LabelSpace

    def label(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 label maps, one per image, each at that image's size."""
        ...


def _space(space: LabelSpace | str | None, default: LabelSpace) -> LabelSpace:
    return default if space is None else get_label_space(space)


def _check_range(labels: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Ids the space does not know become ignore rather than silently wrong classes."""
    labels = labels.astype(np.uint8, copy=False)
    bad = labels >= space.num_classes
    if bad.any():
        labels = labels.copy()
        labels[bad] = space.ignore_index
    return labels


class TFLiteTeacher:
    """A TFLite segmenter (default: the Cityscapes EdgeTPU DeepLab; 0 = road, no background)."""

    def __init__(self, path: str | os.PathLike, label_space: LabelSpace | str | None = None,
                 num_threads: int | None = None, resize: str = "stretch") -> None:
        self.segmenter = TFLiteSegmenter(path, num_threads=num_threads, resize=resize)
        self.label_space = _space(label_space, CITYSCAPES)
        self.name = f"tflite:{path}"

    def label(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [_check_range(self.segmenter(img), self.label_space) for img in images]


class _TorchTeacher:
    """Shared inference for PyTorch teachers: resize, argmax, nearest back to the frame size.

    A frame batch from a robot (10 frames per update period) is labelled in one batched forward
    pass on the teacher's device (:func:`place_teacher`); ``max_batch`` > 0 splits it (a big
    teacher on a small CPU). Pixels whose scores are not finite, and those whose top softmax
    probability is below ``min_confidence`` (issue #29; 0 = every pixel), are labelled ignore: left
    out of the student's loss and of the gate's scores."""

    model: torch.nn.Module
    input_size: tuple[int, int]
    max_batch: int = 0
    min_confidence: float = 0.0

    def label(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        images = list(images)
        batch = self.max_batch if self.max_batch > 0 else max(1, len(images))
        labels = predict(self.model, images, size=self.input_size, batch_size=batch,
                         min_confidence=float(self.min_confidence))
        return [_check_range(lab, self.label_space) for lab in labels]


TORCHVISION_TEACHERS = (
    "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large",
)


class _TorchvisionSeg(torch.nn.Module):
    """A torchvision segmentation net behind the student interface ([0, 1] in, logits out)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()

        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))["out"]


class TorchvisionTeacher(_TorchTeacher):
    """A torchvision segmentation model (VOC classes) with its pretrained weights.

    The weights are downloaded only because this teacher was asked for; ``weights_path`` uses a
    local copy instead. A failed download raises a RuntimeError saying what to do.
    """

    def __init__(self, name: str, weights_path: str | os.PathLike | None = None,
                 label_space: LabelSpace | str | None = None, input_size: tuple[int, int] = (520, 520)) -> None:
        import torchvision.models.segmentation as seg

        if name not in TORCHVISION_TEACHERS:
            raise ValueError(f"unknown torchvision teacher '{name}' (valid: {', '.join(TORCHVISION_TEACHERS)})")
        import torchvision.models as tvm

        net = getattr(seg, name)(weights=None, weights_backbone=None, num_classes=21)
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        else:
            state = download_torchvision_state(tvm.get_model_weights(name).DEFAULT)
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        net.load_state_dict(state, strict=True)
        self.model = _TorchvisionSeg(net).eval()
        self.label_space = _space(label_space, VOC)
        self.input_size = tuple(input_size)
        self.name = f"torchvision:{name}"


class CheckpointTeacher(_TorchTeacher):
    """A student-style checkpoint (e.g. a big offline-trained model) used as the teacher."""

    def __init__(self, path: str | os.PathLike, label_space: LabelSpace | str | None = None,
                 input_size: tuple[int, int] | None = None) -> None:
        meta = read_checkpoint(path)
        if "name" not in meta or "num_classes" not in meta:
            raise ValueError(f"checkpoint '{path}' lacks 'name'/'num_classes'; save it with save_student_checkpoint()")
        stored = checkpoint_label_space(meta)
        if label_space is None and stored is None:
            raise ValueError(f"checkpoint '{path}' names no label space; pass label_space")
        self.label_space = _space(label_space, stored)  # type: ignore[arg-type]
        if self.label_space.num_classes != int(meta["num_classes"]):
            raise ValueError(f"checkpoint '{path}' has {meta['num_classes']} classes but label space "
                             f"'{self.label_space.name}' has {self.label_space.num_classes}")
        self.model = load_student(meta["name"], int(meta["num_classes"]), weights=str(path)).eval()
        self.input_size = tuple(input_size or meta.get("input_size") or DEFAULT_INPUT_SIZE)
        self.name = f"checkpoint:{path}"


class SelectedClassesTeacher:
    """Restricts a teacher to the selected classes: their ids become 0..K-1, the rest 255.

    The one way the server, the demo's observer and ``ams-eval`` train and score on a subset
    of the teacher's classes (``lut`` maps the teacher's full ids, e.g. of human labels, too).
    """

    def __init__(self, teacher: Teacher, selected_names: Sequence[str]) -> None:
        self.teacher = teacher
        self.label_space, self.lut = teacher.label_space.restrict(selected_names)
        self.name = f"{teacher.name}[{','.join(self.label_space.class_names)}]"
        self.uses_stamps = bool(getattr(teacher, "uses_stamps", False))

    def label(self, images: Sequence[np.ndarray], stamps: Sequence[float] | None = None) -> list[np.ndarray]:
        return [self.lut[lab] for lab in label_frames(self.teacher, images, stamps)]


def teacher_input_size(teacher) -> tuple[int, int] | None:
    """(W, H) the teacher labels at (a TFLite model's input tensor, a PyTorch teacher's
    ``input_size``), through a class selection; None when it takes frames at any size."""
    for _ in range(4):
        size = getattr(teacher, "input_size", None) or getattr(getattr(teacher, "segmenter", None), "input_size", None)
        if size:
            return int(size[0]), int(size[1])
        teacher = getattr(teacher, "teacher", None)
        if teacher is None:
            return None
    return None


def select_classes(teacher: Teacher, selected_names: Sequence[str]) -> Teacher:
    """``teacher`` restricted to ``selected_names`` (the teacher itself when none are given or
    they are all of its classes, in its order)."""
    names = [n for n in selected_names if n]
    if not names or tuple(names) == tuple(teacher.label_space.class_names):
        return teacher
    return SelectedClassesTeacher(teacher, names)


def place_teacher(teacher: Teacher, device: torch.device, explicit: bool = True, max_batch: int = 0,
                  min_confidence: float = 0.0) -> str:
    """Move a PyTorch teacher (or the one a :class:`SelectedClassesTeacher` wraps) to ``device``
    and give it ``max_batch`` and ``min_confidence``; returns where it runs. Teachers that run on
    the CPU only (TFLite, the synthetic oracle) stay there: a ValueError when CUDA was asked for
    explicitly (``explicit``), a note in the returned text when it came from ``auto``. They give no
    scores: a ``min_confidence`` above 0 for them is a ValueError too."""
    inner = getattr(teacher, "teacher", None)
    if inner is not None and isinstance(teacher, SelectedClassesTeacher):
        return place_teacher(inner, device, explicit, max_batch, min_confidence)
    model = getattr(teacher, "model", None)
    if isinstance(model, torch.nn.Module):
        teacher.model = model.to(device).eval()  # type: ignore[attr-defined]
        if hasattr(teacher, "max_batch"):
            teacher.max_batch = int(max_batch)  # type: ignore[attr-defined]
        if hasattr(teacher, "min_confidence"):
            teacher.min_confidence = float(min_confidence)  # type: ignore[attr-defined]
            if min_confidence > 0.0 and "|min_confidence=" not in teacher.name:  # other labels: another name
                teacher.name = f"{teacher.name}|min_confidence={min_confidence:g}"  # type: ignore[misc]
        return str(device)
    if min_confidence > 0.0:
        raise ValueError(f"teacher '{teacher.name}' gives labels without scores, so teacher_min_confidence "
                         f"{min_confidence:g} cannot be applied: set it to 0, or use a PyTorch teacher "
                         f"(torchvision:NAME@WEIGHTS.pth, checkpoint:PATH, espnetv2:PATH)")
    if device.type != "cpu":
        if explicit:
            raise ValueError(f"teacher '{teacher.name}' runs on the CPU only (not a PyTorch model), but device "
                             f"'{device}' was asked for: set the labeler's device to cpu or auto, or use a PyTorch "
                             f"teacher (torchvision:NAME@WEIGHTS.pth, checkpoint:PATH)")
        return f"cpu ({teacher.name} is not a PyTorch model)"
    return "cpu"


def build_robot_teachers(specs: dict[str, str], selected: Sequence[str], student_space, device: torch.device,
                         explicit: bool, max_batch: int = 0, min_confidence: float = 0.0) -> tuple[dict[str, Teacher], str]:
    """Each robot's teacher from its spec (robots sharing a spec share one instance), restricted
    to the selected classes and placed on ``device``; (robot -> teacher, where they run). A
    teacher whose classes differ in number from the student's is a ValueError naming the fix.
    The labeler node and a pool actor both build their teachers here."""
    built: dict[str, Teacher] = {}
    where = ""
    for text in dict.fromkeys(specs.values()):
        teacher = select_classes(build_teacher(text), list(selected))
        where = place_teacher(teacher, device, explicit=explicit, max_batch=int(max_batch),
                              min_confidence=float(min_confidence))
        if teacher.label_space.num_classes != student_space.num_classes:
            raise ValueError(
                f"teacher '{text}' labels {teacher.label_space.num_classes} classes ({teacher.label_space.name}) "
                f"but the student predicts {student_space.num_classes} ({student_space.name}): set label_space "
                f"to the teacher's (and selected_classes alike)")
        built[text] = teacher
    return {dev: built[text] for dev, text in specs.items()}, where


def label_frames(teacher: Teacher, frames: Sequence[np.ndarray], stamps: Sequence[float] | None = None) -> list[np.ndarray]:
    """``teacher.label(frames)``; teachers that render by stream time (the synthetic oracle,
    ``uses_stamps``) are given the frames' stamps too."""
    if getattr(teacher, "uses_stamps", False) and stamps is not None:
        return teacher.label(list(frames), stamps=[float(s) for s in stamps])
    return teacher.label(list(frames))


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

TeacherFactory = Callable[[str, "LabelSpace | None"], Teacher]
"""``factory(argument_after_prefix, label_space_or_None) -> Teacher``."""


def _tflite(arg: str, space: LabelSpace | None) -> Teacher:
    return TFLiteTeacher(arg, label_space=space)


def _torchvision(arg: str, space: LabelSpace | None) -> Teacher:
    name, _, path = arg.partition("@")
    return TorchvisionTeacher(name, weights_path=path or None, label_space=space)


def _checkpoint(arg: str, space: LabelSpace | None) -> Teacher:
    return CheckpointTeacher(arg, label_space=space)


TEACHER_FACTORIES: dict[str, TeacherFactory] = {
    "tflite": _tflite, "torchvision": _torchvision, "checkpoint": _checkpoint,
}
# prefixes provided by modules of this package imported on first use (lazy on purpose: ESPNetv2's
# module is only needed by the base stations that run it). ``oracle`` is registered by the synthetic
# world (ams_ros.core.sources, a layer above): whoever builds teachers from users' specs imports it.
_PROVIDERS: dict[str, str] = {"espnetv2": "ams_ros.core.models.espnetv2"}
_FORMS = {"tflite": "tflite:PATH", "torchvision": "torchvision:NAME[@WEIGHTS.pth]",
          "checkpoint": "checkpoint:PATH", "oracle": "oracle[:ARGS]", "espnetv2": "espnetv2:PATH[@DEVICE]"}


def register_teacher_factory(prefix: str, factory: TeacherFactory) -> None:
    """Make ``prefix`` or ``prefix:ARG`` specs build teachers with ``factory(ARG, label_space)``."""
    TEACHER_FACTORIES[prefix.strip().lower()] = factory


def accepted_teacher_specs() -> list[str]:
    prefixes = sorted(set(TEACHER_FACTORIES) | set(_PROVIDERS) | {"oracle"})
    return [_FORMS.get(p, f"{p}[:ARG]") for p in prefixes]


def build_teacher(spec: str, label_space: LabelSpace | str | None = None) -> Teacher:
    """The teacher a spec names; ``label_space`` overrides the teacher's default space."""
    text = str(spec or "").strip()
    prefix, _, arg = text.partition(":")
    prefix = prefix.strip().lower()
    if prefix not in TEACHER_FACTORIES and prefix in _PROVIDERS:
        importlib.import_module(_PROVIDERS[prefix])
    if prefix == "oracle" and prefix not in TEACHER_FACTORIES:
        raise ValueError(f"teacher spec '{spec}': the oracle is the synthetic world's; import ams_ros.core.sources "
                         f"(which registers it) before building teachers from specs")
    factory = TEACHER_FACTORIES.get(prefix)
    needs_arg = prefix in ("tflite", "torchvision", "checkpoint", "espnetv2")
    if factory is None or (needs_arg and not arg.strip()):
        raise ValueError(f"unknown teacher spec '{spec}' (accepted: {', '.join(accepted_teacher_specs())})")
    space = None if label_space is None else get_label_space(label_space)
    teacher = factory(arg.strip(), space)
    log.info("teacher %s (label space %s)", teacher.name, teacher.label_space.name)
    return teacher
