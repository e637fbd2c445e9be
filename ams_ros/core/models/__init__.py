"""Student and teacher segmentation models (PyTorch, TFLite import, teacher wrappers)."""

from ams_ros.core.common.stream_defaults import DEFAULT_INPUT_SIZE
from ams_ros.core.models.student import STUDENTS, build_student, freeze_batchnorm, predict, train_mode_frozen_bn, to_input

from ams_ros.core.models.weights import load_student, save_student_checkpoint

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "STUDENTS",
    "build_student",
    "freeze_batchnorm",
    "load_student",
    "predict",
    "save_student_checkpoint",
    "train_mode_frozen_bn",
    "to_input",
]
