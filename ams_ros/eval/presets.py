"""Evaluation presets: the paper's parameters and a documented reduction for small CPUs.

Every field is one knob of the harness; ``--set KEY=VALUE`` overrides any of them and the
results record the preset's name, the overrides and the final values. Fields prefixed with a
scheme name (``jit_``, ``shadowtutor_``, ``rt_``, ``one_time_``) belong to that baseline; a
scheme spec such as ``jit:threshold=0.6`` sets ``jit_threshold`` for that run only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from ams_ros.core.fleet.base_station import MAX_PENDING_BATCHES
from ams_ros.core.wire.frame_codec import VIDEO_CODECS, BatchEncoderConfig
from ams_ros.core.server.label_checks import LabelCheckConfig
from ams_ros.core.server.quality_gate import GateConfig
from ams_ros.core.server.rate_control import RateControlConfig
from ams_ros.core.server.session import SessionConfig
from ams_ros.core.server.trainer_config import TrainerConfig

# The paper's values are the core configs' defaults (one place holds each); the preset refers to them.
_T, _R = TrainerConfig, RateControlConfig
KEYFRAME_UPLOADS = ("teacher", "eval")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    # ---- video and scoring
    width: int = _T.input_size[0]     # evaluation / training resolution (paper: 512x256)
    height: int = _T.input_size[1]
    eval_fps: float = 0.0             # frames scored per second of video; 0 = every frame
    window_s: float = 10.0            # mIoU accumulated over the last window_s seconds (authors' code)
    skip_s: float = 0.0               # seconds at the start left out of the reported mIoU (authors: 250)
    # ---- AMS (paper §4.1)
    update_period_s: float = _T.update_period_s   # T_update
    horizon_s: float = _T.horizon_s               # T_horizon
    iterations: int = _T.iterations               # K
    batch_size: int = _T.batch_size
    lr: float = _T.lr
    gamma: float = _T.gamma
    strategy: str = _T.strategy
    bitrate_bps: int = BatchEncoderConfig.bitrate_bps  # video uplink target
    uplink_codec: str = BatchEncoderConfig.codec  # frame batch codec of AMS and one-time (h264 | h265 | av1)
    r_min: float = _R.r_min
    r_max: float = _R.r_max
    adaptive_update_period: bool = False  # appendix D; off in the paper's Table 1 runs
    encoding: str = SessionConfig.update_encoding  # update encoding for every scheme's model updates
    downlink_budget_kbps: float = 0.0  # AMS: per-robot downlink budget (issue #10); 0 = gamma and encoding as set
    train_precision: str = _T.train_precision     # AMS / one-time training: float32 | float16 | bfloat16 autocast
    # AMS (issue #29): the gate on each phase (ams:gate_frames=0 turns it off)
    gate_frames: int = GateConfig.gate_frames
    gate_margin: float = GateConfig.gate_margin
    gate_scene_drop: float = GateConfig.gate_scene_drop
    drift_phases: int = GateConfig.drift_phases
    # AMS (issue #29): the teacher-label checks (ams:one_class_share=1.0+min_frame_std=0 turns them off)
    min_frame_std: float = LabelCheckConfig.min_frame_std
    one_class_share: float = LabelCheckConfig.one_class_share
    one_class_batches: int = LabelCheckConfig.one_class_batches
    inference_dtype: str = "float32"              # the edge student's inference (autocast); --inference-dtype
    # ---- the network and the server (stream-time model)
    uplink_bps: float = 5_000_000.0   # link capacities; transfers queue FIFO on each link
    downlink_bps: float = 10_000_000.0
    link_latency_s: float = 0.02      # one-way propagation delay per message
    train_speedup: float = 1.0        # server training time = wall time measured here / train_speedup
    train_s_per_step: float = 0.0     # > 0: model it instead as (optimiser steps) x this (deterministic)
    teacher_s: float = 0.25           # modelled teacher time per frame at the server (paper: 200-300 ms on a V100)
    # (issue #31) the fixed cost of one teacher call, beside teacher_s per frame: a batch of k frames labelled in one
    # call costs teacher_call_s + k x teacher_s (the paper's 0.25 s a frame: 0 + k x 0.25)
    teacher_call_s: float = 0.0
    # (issue #31) base-station time per phase outside training that holds the GPU's lane (publishing the update,
    # saving the session); `ams-eval fleet-check` measures it from a demo run (ams_ros/core/fleet/phase_cadence.py)
    phase_overhead_s: float = 0.0
    server_labels: str = "received"   # teacher labels of the frames as the server received them, or "reference"
    # ---- fleet (issue 16, `ams-eval fleet`): robots sharing the server's GPU
    fleet_fused_step_factor: float = 0.35  # fused phase of k = one phase x (1 + this x (k-1)); from ams-bench on the GPU
    fleet_fuse_max: int = 18               # at most this many students in one fused step
    # robots' batches at staggered times (robot j's first period a fraction frac(j x 0.618) of T_update) instead of
    # all at once, as robots started at different times send them
    fleet_stagger: bool = False
    # each robot's sampling rate capped at its fair share of the GPU (ams_ros/core/fleet/rate_share.py) instead of
    # ASR's alone: labelling N robots' frames first come first served can outgrow the GPU and starve every phase
    fleet_rate_share: bool = False
    # batches of one robot that have arrived and wait for the teacher beyond which the oldest is dropped, as the
    # teacher labeler does (max_pending_batches); 0 = never (every batch labelled, first come first served: the
    # fleet figures before 2026-12-08)
    fleet_max_pending: int = MAX_PENDING_BATCHES
    # ---- One-Time (fine-tune the whole student on the first 60 s, once)
    one_time_s: float = 60.0
    one_time_steps: int = 0           # 0 = the K * (one_time_s / T_update) steps AMS spends on that span
    # ---- Remote+Tracking (1 fps of full-quality frames up, teacher labels down, Farneback on the edge)
    rt_fps: float = 1.0
    jpeg_quality: int = 95
    # issue #11: robots sharing the base station's teacher, all running Remote+Tracking at rt_fps
    # (the others sample at their own phases, drawn once from the seed; FIFO, teacher_s a frame):
    # 1 = this robot alone (the paper's set-up); the teacher saturates at robots x rt_fps x teacher_s = 1
    rt_robots: int = 1
    # issue #11: the uplink of Remote+Tracking, JIT and ShadowTutor counts full-quality JPEGs at the
    # resolution the teacher labels ("teacher": the source's own, capped at the teacher's input size,
    # as in the paper) or at the evaluation size ("eval": how results before issue #11 were counted)
    keyframe_upload: str = "teacher"
    # ---- Just-In-Time (Mullapudi et al.)
    jit_threshold: float = 0.75       # the paper's "JIT default threshold (75%)"
    jit_accuracy: str = "miou"        # "miou" or "min_iou" (the public ports' minimum class IoU)
    jit_max_steps: int = 8
    jit_lr: float = 0.01
    jit_momentum: float = 0.9
    jit_weight_decay: float = 4e-5
    jit_gamma: float = 0.05           # fraction of parameters updated (gradient-guided); 1 = whole model
    jit_min_stride: int = 8           # key-frame stride, in frames of the video's nominal rate
    jit_max_stride: int = 64
    # ---- ShadowTutor (Chung et al.)
    shadowtutor_threshold: float = 0.8
    shadowtutor_max_steps: int = 8
    shadowtutor_lr: float = 0.01
    shadowtutor_min_stride: int = 8
    shadowtutor_max_stride: int = 64
    # ---- bookkeeping
    seed: int = _T.seed

    #: (issue #31) the value of each field added after figures were published that reproduces how the harness ran
    #: before the field existed (where that is not its default): for reading results written then
    BEFORE_IT_EXISTED = {"fleet_max_pending": 0}

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.rt_robots < 1:
            raise ValueError(f"rt_robots must be >= 1 (robots sharing the teacher, this one included), got "
                             f"{self.rt_robots}")
        if self.keyframe_upload not in KEYFRAME_UPLOADS:
            raise ValueError(f"keyframe_upload '{self.keyframe_upload}' is not one of {', '.join(KEYFRAME_UPLOADS)}")
        if self.uplink_codec not in VIDEO_CODECS:
            raise ValueError(f"uplink_codec '{self.uplink_codec}' is not a video codec; choose from "
                             f"{', '.join(VIDEO_CODECS)}")

    def with_overrides(self, overrides: dict[str, object]) -> "Preset":
        """A copy with fields replaced; values given as strings are parsed to the field's type."""
        known = {f.name: f for f in fields(self)}
        typed = {}
        for key, value in overrides.items():
            if key not in known or key == "name":
                raise ValueError(f"unknown preset field '{key}' (fields: {', '.join(sorted(known))})")
            typed[key] = _parse(known[key], value)
        return dataclasses.replace(self, **typed)

    def teacher_cost_s(self, frames: int) -> float:
        """Modelled GPU seconds of one teacher call on ``frames`` frames (0 for none)."""
        return self.teacher_call_s + frames * self.teacher_s if frames > 0 else 0.0

    def one_time_train_steps(self) -> int:
        if self.one_time_steps > 0:
            return int(self.one_time_steps)
        return max(1, int(round(self.iterations * self.one_time_s / self.update_period_s)))


def _parse(f: dataclasses.Field, value: object):
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if not isinstance(value, str):
        return kind(value)
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"'{f.name}' takes true/false, got '{value}'")
    if kind is int:
        return int(float(value))
    return kind(value)


PAPER = Preset(
    "paper",
    "The paper's settings (§4.1): 512x256, T_update 10 s, T_horizon 240 s, K 20, batch 8, gamma 0.05, "
    "H.264 at 200 Kbps, r in [0.1, 1] fps, every frame scored; the server trains on this machine "
    "(training time as measured here).",
)

CPU_QUICK = Preset(
    "cpu-quick",
    "Reductions so that one scheme on a two-minute clip runs in minutes on 2 CPU cores, applied to "
    "every scheme alike: 256x128 instead of 512x256 (4x fewer pixels to infer and train on), frames "
    "scored at up to 10 fps (30 fps sources: every third frame; the key-frame schemes can only pick "
    "scored frames), the server's training time modelled as 10x faster than this CPU (a GPU base "
    "station), and the server training on the teacher's labels of the source frames "
    "(`server_labels=reference`, as the authors' emulator does) instead of labelling the decoded "
    "uplink again. Training itself is the paper's (K 20, batch 8 for AMS; 8 steps for the key-frame "
    "baselines).",
    width=256, height=128, eval_fps=10.0, train_speedup=10.0, server_labels="reference",
)

CPU_PAPER_TIMING = Preset(
    "cpu-paper-timing",
    "For the comparison with the paper (issue #11): the paper's timing where it decides the ranking, "
    "the CPU's reductions only where it does not. Every source frame is scored (30 fps stays 30 fps, "
    "so a teacher label is carried over as many frames as in the paper), at 256x128; the server's "
    "training time is modelled as 0.1 s per optimiser step (a stated GPU cost, deterministic: runs "
    "do not depend on this machine's load) and the teacher as 0.25 s per frame (the paper's V100); "
    "the server trains on the teacher's labels of the source frames, as the authors' emulator does; "
    "key frames go up at the teacher's resolution. Everything else is the paper's.",
    width=256, height=128, eval_fps=0.0, train_s_per_step=0.1, teacher_s=0.25, server_labels="reference",
)

PRESETS = {p.name: p for p in (PAPER, CPU_QUICK, CPU_PAPER_TIMING)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}``; a malformed item raises ValueError."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split():
            if "=" not in part:
                raise ValueError(f"--set takes KEY=VALUE, got '{part}'")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out
