"""Parameters that several nodes of one process declare with one value (the ``/**`` section of
``config/*.yaml``): the robot's name and camera topic, the student both sides must agree on,
and the robots a base station serves."""

from __future__ import annotations

from ams_ros.core.edge_inference import DeviceConfig
from ams_ros.core.models.weights import StudentSpec
from ams_ros.nodes import topics
from ams_ros.nodes.parameters import Param, from_field, string_list

DEVICE_ID = Param("device_id", "robot1", "Name of this robot; the server addresses it by this id", shared=True)
DEVICE_IDS = Param("device_ids", ["robot1"], "Robots served by this base station; each has its own buffer, "
                   "trainer state, version chain and rate", shared=True)
IMAGE_TOPIC = Param("image_topic", topics.IMAGE, "Camera image topic (sensor_msgs/Image), relative to the "
                    "robot's namespace unless absolute", shared=True)
STUDENT = from_field(StudentSpec, "name", name="student", shared=True)
STUDENT_WEIGHTS = from_field(StudentSpec, "weights", name="student_weights", shared=True)
LABEL_SPACE = from_field(StudentSpec, "label_space", shared=True)
SELECTED_CLASSES = from_field(StudentSpec, "selected_classes", shared=True)
STUDENT_PARAMS = (STUDENT, STUDENT_WEIGHTS, LABEL_SPACE, SELECTED_CLASSES)
# The robot's segmenter and patcher share the double-buffered student: one device per edge process.
EDGE_DEVICE = from_field(DeviceConfig, "device", shared=True,
                         description="Torch device of the robot's student (inference and patching share it): "
                                     "auto (first CUDA device, else the CPU) | cpu | cuda | cuda:N; CUDA where "
                                     "torch sees none is a start-up error")


def student_spec(p) -> StudentSpec:
    """The StudentSpec that a node's student parameters describe."""
    return StudentSpec(p["student"], p["student_weights"], p["label_space"], tuple(string_list(p["selected_classes"])))


def device_ids(p) -> list[str]:
    ids = string_list(p["device_ids"])
    if not ids:
        raise ValueError("parameter device_ids is empty: list the robots this server serves, e.g. [robot1, robot2]")
    if len(set(ids)) != len(ids):
        raise ValueError(f"parameter device_ids names a robot twice: {ids}")
    return ids
