"""The student model shared by the edge nodes of one process (segmenter reads, patcher writes)."""

from __future__ import annotations

from dataclasses import dataclass

from ams_ros.core.labels import LabelSpace, get_label_space
from ams_ros.core.models.student import load_student
from ams_ros.core.update_codec import DoubleBufferedModel


@dataclass
class EdgeModel:
    """Double-buffered student plus the label space its outputs are in."""

    holder: DoubleBufferedModel
    label_space: LabelSpace
    student: str
    input_size: tuple[int, int]


def resolve_label_space(name: str, selected: list[str]) -> LabelSpace:
    """The label space by name, restricted to ``selected`` class names when given."""
    space = get_label_space(name)
    if selected:
        space, _ = space.restrict(selected)
    return space


def build_edge_model(student: str, weights: str, label_space: str, selected: list[str],
                     input_size: tuple[int, int]) -> EdgeModel:
    space = resolve_label_space(label_space, selected)
    model = load_student(student, num_classes=len(space.class_names), weights=weights or None)
    model.eval()
    return EdgeModel(DoubleBufferedModel(model), space, student, input_size)
