"""`ams-eval fleet-check`: the fleet model checked against a real multi-robot demo (issue #31).

`ams-eval fleet` models N robots sharing one base-station GPU: teacher calls and training phases
queued on one clock, the scheduler picking whose phase runs. Every robots-per-GPU figure rests on
that model, so it is checked against the real thing: a ``make demo ARGS="--robots N"`` run (the
ROS base station, its trainer and scheduler, N robot processes) is replayed through the model with
the demo's streams and settings and the costs the demo measured (its mean phase wall time, the
lane's time per phase outside training from the cadence of its phases, the teacher's calls as given:
the synthetic world's oracle costs next to nothing), and the two are
compared per robot: training phases run, the base station's time spent on the robot's phases as a
share of the stream (the model's GPU share), updates, mIoU.

The model's phases all cost the demo's mean; the real ones vary (a CPU shared with the robots'
inference), and the demo's robots start a few seconds apart where the model's start together: the
comparison says how far those simplifications move the figures. ROS-free: it reads the demo's
``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ams_ros.core.fleet.scheduling import SchedulerConfig
from ams_ros.core.server.rate_control import AdaptivePeriodConfig, RateControlConfig
from ams_ros.eval.presets import Preset

# Relative difference of the model's phases and shares from the real run's that the issue accepts
TOLERANCE = 0.15


@dataclass(frozen=True)
class DemoRun:
    """What the model needs from one demo run (its ``summary.json``)."""

    robots: dict[str, dict]       # device id -> the summary's line for that robot
    settings: dict                # the demo's command-line settings (``summary["settings"]``)
    stream_seconds: float
    student_weights: str
    phase_seconds: float          # mean wall time of one training phase at the base station
    phase_overhead_s: float       # the lane's time per phase outside training (publishing, saving)
    miou_from_s: float            # the demo scores mIoU from this stream time on

    @classmethod
    def read(cls, folder: str | Path) -> "DemoRun":
        path = Path(folder) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a demo output folder (run `make demo ARGS=\"--robots N --out DIR\"`)")
        summary = json.loads(path.read_text())
        if "settings" not in summary:
            raise ValueError(f"{path} has no 'settings' (written by a demo older than fleet-check): run the demo again")
        robots = summary.get("robots") or {}
        if not robots:
            raise ValueError(f"{path} lists no robots")
        phases = sum(int(r.get("training_phases_seen") or 0) for r in robots.values())
        seconds = sum(float(r.get("train_seconds_total") or 0.0) for r in robots.values())
        if phases == 0:
            raise ValueError(f"{path}: the base station ran no training phase; nothing to model (a longer --duration?)")
        return cls(robots=robots, settings=summary["settings"], stream_seconds=float(summary["stream_seconds"]),
                   student_weights=str(summary.get("student_weights") or ""), phase_seconds=seconds / phases,
                   phase_overhead_s=float(summary.get("phase_overhead_s") or 0.0),
                   miou_from_s=float(summary.get("miou_scored_from_s") or 0.0))


def model_preset(demo: DemoRun, base: Preset) -> Preset:
    """``base`` with the demo's resolution, AMS settings and measured phase cost, and the rate
    control and adaptive period the real base station runs by default."""
    s = demo.settings
    iterations = int(s["iterations"])
    return base.with_overrides({
        "width": int(s["width"]), "height": int(s["height"]),
        # the sampler offers every camera frame, as the robot's does
        "eval_fps": float(s["fps"]),
        "update_period_s": float(s["update_period"]), "horizon_s": float(s["horizon"]),
        "iterations": iterations, "batch_size": int(s["batch_size"]), "gamma": float(s["gamma"]),
        "lr": float(s["lr"]), "encoding": str(s["encoding"]), "bitrate_bps": int(s["bitrate"]),
        "r_min": RateControlConfig.r_min, "r_max": RateControlConfig.r_max,
        "adaptive_update_period": AdaptivePeriodConfig.enabled,
        "train_s_per_step": demo.phase_seconds / max(1, iterations),
        "phase_overhead_s": demo.phase_overhead_s,
        # the base station's staggering of the robots' batches (a demo run before it existed sent them together)
        "fleet_stagger": bool(s.get("stagger_batches", False)),
        # the real base station labels on its own node, beside the trainer: the teacher holds no phase up
        # (give teacher_s / teacher_call_s with --set for a teacher that shares the trainer's device)
        "teacher_s": 0.0, "teacher_call_s": 0.0,
        "server_labels": "received",
    })


def compare(demo: DemoRun, model: dict) -> list[dict]:
    """One row per robot: the demo's figures beside the model's and their relative differences."""
    rows = []
    for dev, real in demo.robots.items():
        m = model["robots"].get(dev)
        if m is None:
            raise ValueError(f"the model has no robot {dev!r} (it has {', '.join(model['robots'])})")
        real_phases = int(real.get("training_phases_seen") or 0)
        real_share = float(real.get("phase_time_share") or 0.0)
        rows.append({
            "robot": dev, "source": real.get("source"),
            "phases_real": real_phases, "phases_model": int(m["phases"]),
            "phases_diff": _relative(m["phases"], real_phases),
            "share_real": real_share, "share_model": float(m["gpu_share"]),
            "share_diff": _relative(m["gpu_share"], real_share),
            # updates the robot applied after its start-up snapshot, against the model's shipped phases
            "updates_real": max(0, int(real.get("updates_applied") or 0) - 1), "updates_model": int(m["phases"]),
            "miou_real": real.get("miou_streamed"), "miou_model": m.get("miou_gt"),
        })
    return rows


def _relative(model: float, real: float) -> float | None:
    """(model - real) / real; None where the real run has nothing to compare with."""
    return None if not real else round((float(model) - float(real)) / float(real), 4)


def within(rows: Sequence[dict], tolerance: float = TOLERANCE) -> bool:
    """True when every robot's phases and share are within ``tolerance`` of the real run's."""
    return all(r[k] is not None and abs(r[k]) <= tolerance for r in rows for k in ("phases_diff", "share_diff"))


def markdown(rows: Sequence[dict], demo: DemoRun) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.0f} %"

    def miou(x) -> str:
        return "-" if x is None else f"{100 * float(x) if float(x) <= 1.0 else float(x):.1f}"

    lines = [f"{len(rows)} robots, {demo.stream_seconds:.0f} s; the demo's mean phase {demo.phase_seconds:.2f} s "
             f"(K = {demo.settings['iterations']}) costs every modelled phase, and its lane's "
             f"{demo.phase_overhead_s:.2f} s a phase outside training follows each",
             "",
             "| robot | source | phases real / model (diff) | phase time share real / model (diff) | updates real / model "
             f"| mIoU real (from {demo.miou_from_s:.0f} s) / model (whole stream) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['robot']} | {r['source']} | {r['phases_real']} / {r['phases_model']} ({pct(r['phases_diff'])}) "
                     f"| {r['share_real']:.3f} / {r['share_model']:.3f} ({pct(r['share_diff'])}) "
                     f"| {r['updates_real']} / {r['updates_model']} | {miou(r['miou_real'])} / {miou(r['miou_model'])} |")
    totals = {k: float(np.sum([r[k] for r in rows])) for k in ("phases_real", "phases_model", "share_real", "share_model")}
    lines.append(f"| all | | {totals['phases_real']:.0f} / {totals['phases_model']:.0f} "
                 f"({pct(_relative(totals['phases_model'], totals['phases_real']))}) "
                 f"| {totals['share_real']:.3f} / {totals['share_model']:.3f} "
                 f"({pct(_relative(totals['share_model'], totals['share_real']))}) | | |")
    verdict = "within" if within(rows) else "NOT within"
    lines += ["", f"Every robot's phases and share {verdict} {100 * TOLERANCE:.0f} % of the real run's."]
    return "\n".join(lines) + "\n"


def run_check(demo: DemoRun, clips: Sequence, student, preset: Preset, teacher, lut=None,
              policy: str = SchedulerConfig.policy, progress: Callable = lambda name, total: (lambda n: None)) -> dict:
    """The model of the demo's run (``clips[j]`` is robot j's stream) and the comparison."""
    from ams_ros.eval.fleet import run_fleet

    model = run_fleet(clips, student, preset, policy, teacher=teacher, lut=lut, progress=progress("fleet model", len(clips[0])))
    rows = compare(demo, model)
    return {"demo": {"stream_seconds": demo.stream_seconds, "phase_seconds": round(demo.phase_seconds, 4),
                     "phase_overhead_s": demo.phase_overhead_s, "settings": demo.settings},
            "policy": policy, "model": model, "rows": rows, "within": within(rows), "tolerance": TOLERANCE}
