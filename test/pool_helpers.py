"""Shared set-up of the session-pool tests: a demo-size student, robots' batches, a robot's chain."""

from __future__ import annotations

from pathlib import Path

import torch

from ams_ros.core.wire.frame_codec import encode_frames
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import StudentSpec, load_student, save_student_checkpoint
from ams_ros.core.fleet.worker import TeacherSpec, WorkerSpec
from ams_ros.core.server.session import SessionConfig
from ams_ros.core.sources.synthetic import SyntheticWorld
from ams_ros.core.server.trainer_config import TrainerConfig

W, H = 64, 32
ROBOTS = ("robot1", "robot2")


def worker_spec(tmp_path: Path, torch_threads: int = 0) -> WorkerSpec:
    """Demo-size student (w0 saved once, so every actor starts from the same weights)."""
    path = tmp_path / "w0.pt"
    if not path.exists():
        torch.manual_seed(0)
        n = len(get_label_space("synthetic").class_names)
        save_student_checkpoint(load_student("deeplabv3_mobilenet_v2", n), path, "deeplabv3_mobilenet_v2", n)
    trainer = TrainerConfig(input_size=(W, H), iterations=2, batch_size=2, horizon_s=30.0, update_period_s=1.0,
                            gamma=0.05, seed=3)
    return WorkerSpec(StudentSpec("deeplabv3_mobilenet_v2", str(path), "synthetic"), SessionConfig(trainer=trainer),
                      torch_threads=torch_threads)


def teacher_spec(robots=ROBOTS) -> TeacherSpec:
    return TeacherSpec({dev: f"oracle:{i}" for i, dev in enumerate(robots)})


_WORLDS: dict[int, SyntheticWorld] = {}


def batch(robot_index: int, t: float, frames: int = 3) -> tuple[bytes, str, int, int, list[float]]:
    """The robot's camera frames from t on, as a JPEG frame batch (pool.label's arguments)."""
    world = _WORLDS.setdefault(robot_index, SyntheticWorld(robot_index, W, H))
    stamps = [t + 0.25 * i for i in range(frames)]
    enc = encode_frames([world.frame_at(s)[0] for s in stamps], stamps, codec="jpeg")
    return enc.data, "jpeg", W, H, stamps


class RobotChain:
    """What a robot checks of the updates it applies: each continues the last (base version =
    the version it runs, same chain tag)."""

    def __init__(self) -> None:
        self.version, self.tag, self.applied = 0, "", []

    def apply(self, update) -> None:
        assert update.base_version == self.version, (f"version gap: robot runs v{self.version}, update is "
                                                     f"v{update.base_version}->v{update.new_version}", self.applied)
        assert not self.tag or update.chain_tag == self.tag, (f"chain changed {self.tag} -> {update.chain_tag}",
                                                              self.applied)
        self.version, self.tag = update.new_version, update.chain_tag
        self.applied.append((update.base_version, update.new_version))


def state_differences(a, b, path: str = "") -> list[str]:
    """Paths where two session states (``session_state`` dicts) differ: tensors bit for bit."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in state_differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in state_differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) else [path]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan here
    return [] if same else [f"{path}: {a!r} vs {b!r}"]


def decoded(pool, dev: str) -> dict:
    """The state the pool keeps for ``dev``, decoded."""
    from ams_ros.core.server.session_store import decode_state

    data = pool.kept_state(dev)[0]
    header = __import__("ams_ros.core.fleet.pool", fromlist=["x"]).decode_state_header(data)
    return decode_state(data, dev, header["fingerprint"])
