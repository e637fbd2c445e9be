"""Student and teacher segmentation models (PyTorch, TFLite import, teacher wrappers)."""

from ams_ros.core.models.student import (
    DEFAULT_INPUT_SIZE,
    STUDENTS,
    build_student,
    freeze_batchnorm,
    load_student,
    predict,
    save_student_checkpoint,
    set_train_mode,
    to_input,
)

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "STUDENTS",
    "build_student",
    "freeze_batchnorm",
    "load_student",
    "predict",
    "save_student_checkpoint",
    "set_train_mode",
    "to_input",
]
