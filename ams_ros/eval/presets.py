"""Evaluation presets: the paper's parameters and a documented CPU reduction."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    width: int = 512
    height: int = 256
    update_period_s: float = 10.0
    horizon_s: float = 240.0
    iterations: int = 20
    batch_size: int = 8
    gamma: float = 0.05
    bitrate_bps: int = 200_000
    r_min: float = 0.1
    r_max: float = 1.0
    eval_fps: float = 0.0          # 0 = every frame of the source
    downlink_bps: float = 1_000_000.0
    training_speedup: float = 1.0  # server GPU vs this CPU: train time is divided by this
    one_time_s: float = 60.0
    jit_max_steps: int = 8
    jit_threshold: float = 0.75
    shadowtutor_threshold: float = 0.8

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "paper": Preset("paper"),
    # cpu-quick: 256x128 instead of 512x256 (4x fewer pixels), K 10 / batch 4 (4x less compute
    # per phase), frames scored at 2 fps instead of every frame, and a modelled 10x server
    # speed-up (a GPU base station) so a phase's training delay is not that of this 2-core CPU.
    "cpu-quick": Preset("cpu-quick", width=256, height=128, iterations=10, batch_size=4, eval_fps=2.0,
                        training_speedup=10.0, jit_max_steps=4),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
