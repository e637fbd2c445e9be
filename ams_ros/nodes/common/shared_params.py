"""Parameters that several nodes of one process declare with one value (the ``/**`` section of
``config/*.yaml``): the robot's name and camera topic, the student both sides must agree on,
and the robots a base station serves."""

from __future__ import annotations

from ams_ros.core.common.devices import DeviceConfig
from ams_ros.core.sources.fault_injection import FaultConfig
from ams_ros.core.models.weights import StudentSpec
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.parameters import Param, from_field, string_list
from ams_ros.core.security.signing import parse_robot_keys

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


# (issue #13) Ed25519 keys (ams_ros.core.security.signing; create them with `ams-keys generate`)
ROBOT_KEY_FILE = Param("robot_key_file", "", "This robot's private key file (PEM, mode 0600, from `ams-keys generate`): "
                       "signs its frame batches and snapshot requests (empty = unsigned)", shared=True)
ROBOT_PUBLIC_KEYS = Param("robot_public_keys", [""], "Robots' public keys as DEVICE_ID=BASE64 (or DEVICE_ID=FILE) "
                          "entries, several per robot for rotation; when any is set, unsigned or wrongly signed "
                          "frame batches and snapshot requests are refused (empty = accept unsigned)", shared=True)


def robot_public_keys(p):
    """The trusted keys per robot of ``robot_public_keys``; every served robot needs one once any is set."""

    keys = parse_robot_keys(string_list(p["robot_public_keys"]))
    if keys:
        missing = [d for d in device_ids(p) if d not in keys]
        if missing:
            raise ValueError(f"robot_public_keys has keys for {sorted(keys)} but none for {missing}: add "
                             f"'{missing[0]}=<the line `ams-keys public {missing[0]}.key` prints>', or leave "
                             f"robot_public_keys empty to accept unsigned batches")
    return keys


# (issue #13) test-only lossy-link knobs of the fault benchmarks (ams_ros.core.sources.fault_injection); all off
FAULT_SEED = from_field(FaultConfig, "seed", name="fault_seed",
                        description="Test-only (fault benchmarks): seed of this node's fault injection draws")


def fault_param(kind: str, what: str) -> Param:
    """The test-only fraction ``fault_<kind>_<what>`` (default 0 = off) of :class:`FaultConfig`'s ``kind``."""
    verb = {"drop": "dropped", "duplicate": "delivered twice", "reorder": "held back and delivered after the next one"}
    return from_field(FaultConfig, kind, name=f"fault_{kind}_{what}",
                      description=f"Test-only (fault benchmarks, a lossy link inside this process): fraction of "
                                  f"{what} {verb[kind]} (0 = off)")
