"""Where a student's weights come from, and where they go: checkpoints, TFLite, torchvision.

Kept apart from the architectures (:mod:`ams_ros.core.models.student`) so that the TFLite
importer can build a student without the student module importing it back, and so that the
teachers share the checkpoint reader. ``load_student(name, num_classes, weights)`` is the one
entry point the nodes, the demo, ``ams-eval`` and ``ams-bench`` use.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision
from torch import nn

from ams_ros.core.common.config import knob
from ams_ros.core.models.labels import LabelSpace, resolve_label_space
from ams_ros.core.models.student import IMAGENET_MEAN, IMAGENET_STD, STUDENTS, build_student
from ams_ros.core.models.tflite_import import import_tflite_student

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ams_ros.student/1"


@dataclass(frozen=True)
class StudentSpec:
    """Which student a robot runs and its server trains: architecture, initial weights w0 and
    the classes it predicts. Both sides must agree (the update fingerprint checks it)."""

    name: str = knob("deeplabv3_mobilenet_v2", "Student model name; the robots' and the server's must match",
                     choices=tuple(sorted(STUDENTS)))
    weights: str = knob("", "Initial student weights w0: checkpoint path or tflite:PATH (empty = random init)")
    label_space: str = knob("synthetic", "Label space of the student's classes (synthetic | cityscapes | voc | camvid)")
    selected_classes: tuple[str, ...] = knob((), "Restrict the label space to these class names (empty = all)")

    def space(self) -> LabelSpace:
        return resolve_label_space(self.label_space, self.selected_classes)

    def load(self) -> nn.Module:
        """The student with its initial weights, in inference mode."""
        return load_student(self.name, num_classes=self.space().num_classes, weights=self.weights or None).eval()


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "classifier_prefixes", ()))


def transfer_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``, re-initialising only a classifier of another class count.

    Anything else that does not match (unknown keys, missing parameters, other shapes) is an
    error naming the keys, so a wrong architecture never loads half-silently. Missing
    normalisation buffers keep the model's defaults. Returns the re-initialised keys.
    """
    own = model.state_dict()
    heads = classifier_prefixes(model)
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.startswith("normalize.")]
    if unexpected or missing:
        raise ValueError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    skipped, bad, keep = [], [], {}
    for k, v in state.items():
        if tuple(v.shape) == tuple(own[k].shape):
            keep[k] = v
        elif k.startswith(heads):
            skipped.append(k)
        else:
            bad.append(f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}")
    if bad:
        raise ValueError(f"weights from {source} have other shapes than the model: {bad[:5]}")
    model.load_state_dict(keep, strict=False)
    if skipped:
        log.info("classifier re-initialised for %d classes (weights from %s have another class count)",
                 getattr(model, "num_classes", -1), source)
    return skipped


def save_student_checkpoint(model: nn.Module, path: str | os.PathLike, name: str, num_classes: int,
                            label_space: Any = None, **extra: Any) -> Path:
    """Write ``{"state_dict", "name", "num_classes", "label_space"}`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if label_space is not None:
        data["label_space"] = {
            "name": label_space.name,
            "class_names": list(label_space.class_names),
            "colors": np.asarray(label_space.colors, dtype=np.uint8).tolist(),
            "ignore_index": int(label_space.ignore_index),
        }
    data.update(extra)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as ``{"state_dict", "name"?, "num_classes"?, "label_space"?}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint '{path}' does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read student checkpoint '{path}': {exc}") from exc
    if isinstance(data, Mapping) and "state_dict" in data:
        return dict(data)
    if isinstance(data, Mapping) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"state_dict": dict(data)}
    raise ValueError(f"'{path}' is neither a state_dict nor a student checkpoint")


def checkpoint_label_space(meta: Mapping[str, Any]):
    """The LabelSpace stored in a checkpoint, or None."""
    ls = meta.get("label_space")
    if not ls:
        return None
    return LabelSpace(ls["name"], tuple(ls["class_names"]), np.asarray(ls["colors"], dtype=np.uint8),
                      int(ls.get("ignore_index", 255)))


def download_torchvision_state(weights: Any) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise RuntimeError(
            f"torchvision weights {weights} can't be downloaded here ({type(exc).__name__}: {exc}); "
            f"pass a local checkpoint (.pt) or 'tflite:PATH' as the student weights instead"
        ) from exc


def _load_torchvision(model: nn.Module, name: str) -> None:
    if name == "lraspp_mobilenet_v3_large":
        tv = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT
        state = {f"net.{k}": v for k, v in download_torchvision_state(tv).items()}
        transfer_state(model, state, f"torchvision {tv}")
        return
    tv = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    feats = {k[len("features."):]: v for k, v in download_torchvision_state(tv).items() if k.startswith("features.")}
    keep = {k: v for k, v in feats.items() if int(k.split(".")[0]) < 18}
    model.backbone.load_state_dict(keep, strict=True)
    model.normalize.set(IMAGENET_MEAN, IMAGENET_STD)
    log.info("%s: ImageNet MobileNetV2 backbone from torchvision, head randomly initialised", name)


def load_student(name: str, num_classes: int, weights: str | os.PathLike | None = None) -> nn.Module:
    """A student with weights from ``None`` (random), a checkpoint, ``tflite:PATH`` or ``torchvision``.

    A source with another class count (e.g. 21 VOC classes into 7 selected ones) loads everything
    except the classifier, which is re-initialised.
    """
    model = build_student(name, num_classes)
    spec = "" if weights is None else str(weights).strip()
    if spec.lower() in ("", "none", "random"):
        log.warning("student %s (%d classes): no weights given, RANDOM initialisation", name, num_classes)
        return model
    if spec.startswith("tflite:"):
        if name != "deeplabv3_mobilenet_v2":
            raise ValueError(f"tflite weights fit only deeplabv3_mobilenet_v2, not '{name}'")
        path = spec[len("tflite:"):]
        src = import_tflite_student(path)
        transfer_state(model, src.state_dict(), f"'{path}'")
        log.info("student %s: weights imported from TFLite '%s'", name, path)
        return model
    if spec == "torchvision":
        _load_torchvision(model, name)
        return model
    meta = read_checkpoint(spec)
    if meta.get("name") not in (None, name):
        raise ValueError(f"checkpoint '{spec}' holds a '{meta['name']}' student, not '{name}'")
    transfer_state(model, meta["state_dict"], f"'{spec}'")
    log.info("student %s: weights from checkpoint '%s'", name, spec)
    return model
