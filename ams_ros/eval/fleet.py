"""`ams-eval fleet`: N robots on one base station's GPU, per scheduling policy (issue #16, Figure 6).

Each robot replays its own clip (a source of its own, or a source reused with a time offset and,
every other reuse, mirrored, so that robots differ) through AMS exactly as ``ams-eval run``'s
``ams`` scheme does: its own frame sampler, H.264 uplink, session (buffer, trainer, version
chain, rate control), downlink and edge. What they share is the server's GPU, one job at a
time on one stream-time clock: teacher labelling jobs (one call per batch: ``teacher_call_s`` +
``teacher_s`` per frame) and training
phases run in the order they became due (a phase is due when its robot's batch is labelled);
among the robots whose phases are due, the
:class:`~ams_ros.core.fleet.scheduling.GpuScheduler` of the chosen policy picks whose phase runs.
As on the real base station, a robot keeps at most ``fleet_max_pending`` batches waiting for the
teacher (the oldest dropped, counted); with ``fleet_rate_share`` each robot's sampling rate is capped
at its fair share of the GPU (:func:`~ams_ros.core.fleet.rate_share.fair_share_rate`).

The GPU cost model is the preset's: ``teacher_call_s`` + ``teacher_s`` per frame for a batch and a training phase of
``iterations`` steps at ``train_s_per_step`` (or the measured time / ``train_speedup``), after which
the lane is held ``phase_overhead_s`` more (publishing, saving; not GPU time). With
``--fused`` every ready robot (up to ``fleet_fuse_max``) trains in one fused phase costing
``one phase x (1 + fleet_fused_step_factor x (k - 1))`` (the factor is the marginal cost of one
more student in a fused step; take it from ``ams-bench --only fused`` on the server's GPU). The
robots' batches arrive in lockstep (every robot's period starts with its clip) unless
``fleet_stagger`` spreads their first periods (:func:`~ams_ros.core.fleet.stagger.stagger_offset`),
as robots started at different times are. The
weights of a fused phase equal those of separate phases (test/test_fused_training.py), so the
students are trained with the sequential trainer here and only the modelled GPU time differs.

Reported per (N, policy): each robot's mIoU vs the teacher (and vs human labels where the clip
has them), its mIoU loss relative to the same robot served alone, its GPU share and its Kbps up
and down; the mean loss, and the GPU's utilisation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from ams_ros.core.wire.frame_codec import encode_frames
from ams_ros.core.edge.frame_sampler import FrameSampler
from ams_ros.core.fleet.rate_share import fair_share_rate
from ams_ros.core.fleet.stagger import stagger_offset
from ams_ros.core.server.rate_control import AdaptivePeriodConfig, RateControlConfig
from ams_ros.core.fleet.scheduling import LABEL, POLICIES, GpuScheduler, SchedulerConfig, student_error
from ams_ros.core.server.session import RobotSession, SessionConfig, TrainingDiverged
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.eval.clips import Clip
from ams_ros.eval.presets import Preset
from ams_ros.eval.schemes import COMMAND_BYTES
from ams_ros.eval.simulator import RunContext, SchemeRun, UpdateRecord


def robot_clip(clip: Clip, variant: int) -> Clip:
    """Variant ``variant`` of a clip for a robot that reuses it: variant 0 is the clip; variant v
    starts v / (v + 1)... of the way in (rolled, wrapping around) and odd variants are mirrored."""
    if variant == 0:
        return clip
    frames = [f for _, _, f in clip.frames()]
    n = len(frames)
    shift = (variant * n) // (variant + 1) if n else 0
    order = [(i + shift) % n for i in range(n)]
    mirror = variant % 2 == 1

    def flip(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, ::-1]) if mirror else a

    teacher = np.stack([flip(np.asarray(clip.teacher[i])) for i in order])
    gt = None if clip.gt is None else np.stack([flip(np.asarray(clip.gt[i])) for i in order])
    return Clip(f"{clip.spec}#v{variant}", clip.times.copy(), teacher, gt, np.asarray(clip.has_gt)[order],
                clip.num_classes, clip.class_names, clip.size, clip.nominal_fps,
                [clip.source_indices[i] for i in order] if clip.source_indices else [],
                [flip(frames[i]) for i in order])


@dataclass
class _Robot:
    name: str
    run: SchemeRun
    session: RobotSession
    sampler: FrameSampler
    pending: deque          # (arrival time at the server, encoded batch)
    index: dict
    dropped: int = 0        # batches dropped waiting for the teacher (fleet_max_pending)


#: preset fields the fleet model does not read (other schemes' knobs, and AMS's gate and label checks, which a
#: fleet robot's session runs at their core defaults): two studies that differ only in these are one experiment
FLEET_UNREAD_PREFIXES = ("jit_", "shadowtutor_", "rt_", "one_time_", "gate_")
FLEET_UNREAD = ("keyframe_upload", "jpeg_quality", "drift_phases", "min_frame_std", "one_class_share",
                "one_class_batches")


def fleet_reads(field: str) -> bool:
    return field not in FLEET_UNREAD and not field.startswith(FLEET_UNREAD_PREFIXES)


def rate_cap(p: Preset, robots: int) -> float:
    """(issue #31) Each of ``robots`` robots' sampling-rate ceiling: its fair share of the GPU with
    ``fleet_rate_share``, else ``r_max``."""
    if not p.fleet_rate_share:
        return p.r_max
    return fair_share_rate(robots, p.update_period_s, p.teacher_s, p.teacher_call_s,
                           p.iterations * p.train_s_per_step, p.r_min, p.r_max)


def _session(p: Preset, student: nn.Module, size: tuple[int, int], seed: int) -> RobotSession:
    cfg = SessionConfig(
        trainer=TrainerConfig(iterations=p.iterations, batch_size=p.batch_size, horizon_s=p.horizon_s,
                              update_period_s=p.update_period_s, gamma=p.gamma, strategy=p.strategy, lr=p.lr,
                              input_size=size, seed=seed),
        update_encoding=p.encoding,
        rate=RateControlConfig(r_min=p.r_min, r_max=p.r_max, r_init=p.r_max, period_s=p.update_period_s),
        adaptive_period=AdaptivePeriodConfig(enabled=p.adaptive_update_period))
    return RobotSession("fleet", copy.deepcopy(student), cfg)


def run_fleet(clips: Sequence[Clip], student: nn.Module, preset: Preset, policy: str, fused: bool = False,
              teacher=None, lut=None, progress: Callable[[int], None] = lambda n: None, first_robot: int = 0) -> dict:
    """One fleet run: ``clips[j]`` is robot ``first_robot + j``'s clip (same frame times), named
    ``robot{first_robot + j + 1}`` and trained with that robot's seed, so a robot served alone
    (``first_robot`` = its index) trains exactly as it does in a fleet and its loss measures the
    sharing, not a different seed. Returns the figures; a KeyboardInterrupt leaves ``partial=True``
    figures of the frames done in the exception's ``fleet_partial`` attribute."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not valid; choose one of: {', '.join(POLICIES)}")
    if len({len(c) for c in clips}) != 1:
        raise ValueError(f"robots' clips must have the same number of frames, got {[len(c) for c in clips]}")
    return _FleetRun(clips, student, preset, policy, fused, teacher, lut, progress, first_robot).run()


class _FleetRun:
    """N robots' streams against one modelled GPU: batches labelled and phases trained in the order
    the GPU frees up, the scheduler choosing among the robots that are due."""

    def __init__(self, clips: Sequence[Clip], student: nn.Module, preset: Preset, policy: str, fused: bool,
                 teacher, lut, progress: Callable[[int], None], first_robot: int = 0) -> None:
        p = self.p = preset
        self.clips, self.policy, self.fused = clips, policy, fused
        names = [f"robot{first_robot + j + 1}" for j in range(len(clips))]
        # the share window spans the whole run: the figures are shares of the run's GPU time
        self.sched = GpuScheduler(names, SchedulerConfig(policy=policy, share_window_s=1e12), period_s=p.update_period_s)
        self.robots: list[_Robot] = []
        self.rate_cap = rate_cap(p, len(clips))  # (issue #31) each robot's share of the GPU (r_max when off)
        for j, (name, clip) in enumerate(zip(names, clips)):
            ctx = RunContext(clip, student, p, teacher=teacher, lut=lut, progress=progress)
            run = SchemeRun(ctx, name, "ams", {"policy": policy})
            run.new_edge()
            first = stagger_offset(first_robot + j, p.update_period_s) if p.fleet_stagger else None
            self.robots.append(_Robot(name, run, _session(p, student, clip.size, p.seed + first_robot + j),
                                      FrameSampler(sampling_rate=self.rate_cap, update_period=p.update_period_s,
                                                   first_period=first), deque(),
                                      {float(t): i for i, t in enumerate(clip.times)}))
        self.gpu = {"free": -math.inf, "busy": 0.0}
        self.fuse_max = max(1, int(p.fleet_fuse_max)) if fused else 1
        self.ready_at: dict[str, float] = {}  # when each robot's phase became due (its labelling ended)

    def label(self, r: _Robot, start: float) -> None:
        p, sched = self.p, self.sched
        _, enc = r.pending.popleft()
        labeler = lambda frames, stamps: r.run.ctx.server_labels([r.index[s] for s in stamps], frames, stamps)  # noqa: E731
        n = r.session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, enc.timestamps, labeler)
        end = start + p.teacher_cost_s(len(enc.timestamps))  # one call on the whole batch, kept frames or not
        sched.record(r.name, LABEL, start, end)
        self.gpu["free"], self.gpu["busy"] = end, self.gpu["busy"] + (end - start)
        if self.policy != "round_robin" and n:  # the utility policies' signal: error vs the teacher on the new frames
            t = r.session.latest_t
            entries = r.session.trainer.buffer.window(t, r.session.trainer.config.horizon_s)[-n:]
            sched.observe_error(r.name, t, student_error(r.session.model, entries))

    def train(self, group: list[_Robot], start: float) -> None:
        p, sched = self.p, self.sched
        outs, costs = [], []
        for r in group:
            sched.start_phase(r.name, start)
            try:
                out = r.session.run_phase(r.session.latest_t)
            except TrainingDiverged:
                out = None
            outs.append(out)
            costs.append(r.run.timer.modelled(out.wall_s, p.iterations) if out is not None else 0.0)
        cost = max(costs) * (1.0 + p.fleet_fused_step_factor * (len(group) - 1))
        end = start + cost
        # the lane is then held by publishing and saving (phase_overhead_s), not counted as GPU time
        self.gpu["free"], self.gpu["busy"] = end + p.phase_overhead_s * len(group), self.gpu["busy"] + cost
        for r, out in zip(group, outs):
            sched.end_phase(r.name, start, start + cost / len(group))  # each robot's share of the step
            if out is not None:
                arrive = r.run.down.send(end, out.update.wire_bytes)
                r.run.edges[0].deliver(arrive, out.update)
                r.run.res.updates.append(_record(r.session.latest_t, start, end, arrive, out.update.wire_bytes,
                                                 p.iterations))
            cmd = r.session.sampling_command(r.session.latest_t)
            if cmd is not None:
                at = r.run.down.send(end, COMMAND_BYTES)
                r.run.edges[0].schedule(at, _command(r, min(cmd[0], self.rate_cap), cmd[1], at))

    def drop_beyond_max_pending(self, now: float) -> None:
        """The oldest of a robot's batches waiting at ``now`` beyond ``fleet_max_pending`` are dropped, as the
        teacher labeler drops them (counted)."""
        cap = self.p.fleet_max_pending
        if cap <= 0:
            return
        for r in self.robots:
            while sum(1 for at, _ in r.pending if at <= now) > cap:
                r.pending.popleft()
                r.dropped += 1

    def serve(self, now: float) -> None:
        """Run the GPU's jobs that start by ``now``: batches in arrival order unless a phase was due first."""
        gpu, robots = self.gpu, self.robots
        while True:
            # a batch that waits while the GPU is busy: when the GPU frees up, a robot holds at most fleet_max_pending
            self.drop_beyond_max_pending(min(now, gpu["free"]))
            arrived = [r for r in robots if r.pending]
            first = min((r.pending[0][0] for r in arrived), default=math.inf)
            ready = [r for r in robots if r.session.ready()]
            start = max(gpu["free"], min(first, gpu["free"] if ready else math.inf))
            if start > now or not math.isfinite(start):
                return
            due = [r for r in arrived if r.pending[0][0] <= start]
            oldest_ready = min((self.ready_at.get(r.name, -math.inf) for r in ready), default=math.inf)
            if due and min(r.pending[0][0] for r in due) < oldest_ready:
                # jobs in arrival order: a batch that arrived before any phase was due is labelled first
                r = min(due, key=lambda r: r.pending[0][0])
                self.label(r, start)
                if r.session.ready() and r.name not in self.ready_at:
                    self.ready_at[r.name] = gpu["free"]
                continue
            group = []
            candidates = [r.name for r in ready]
            while candidates and len(group) < self.fuse_max:
                dev = self.sched.pick(candidates, start)
                group.append(next(r for r in robots if r.name == dev))
                candidates.remove(dev)
            for r in group:
                self.ready_at.pop(r.name, None)
            self.train(group, start)

    def run(self) -> dict:
        p, robots = self.p, self.robots
        t_first = t_last = None
        try:
            for frames in zip(*(c.frames() for c in self.clips)):
                for r, (i, t, frame) in zip(robots, frames):
                    batch = r.sampler.offer(t, frame)
                    if batch is not None:
                        enc = encode_frames(batch.frames, batch.timestamps, p.bitrate_bps, period_s=batch.update_period)
                        r.pending.append((r.run.up.send(t, len(enc.data)), enc))
                t = frames[0][1]
                t_first = t if t_first is None else t_first
                t_last = t
                self.serve(t)
                for r, (i, t, frame) in zip(robots, frames):
                    edge = r.run.edges[0]
                    edge.advance(t)
                    r.run.score(i, t, edge.infer(frame))
        except KeyboardInterrupt as exc:
            exc.fleet_partial = _figures(robots, self.sched, self.gpu, t_first, t_last, self.policy,  # type: ignore[attr-defined]
                                         self.fused, True)
            raise
        return _figures(robots, self.sched, self.gpu, t_first, t_last, self.policy, self.fused, False)


def _record(t_data, start, end, arrive, nbytes, steps):
    return UpdateRecord(t_data, start, end, arrive, nbytes, steps)


def _command(r: _Robot, rate: float, period: float, at: float) -> Callable[[], None]:
    def apply() -> None:
        if rate != r.sampler.sampling_rate:
            r.run.res.rates.append((at, rate))
        r.sampler.command(rate, period)
    return apply


def _figures(robots, sched, gpu, t0, t1, policy, fused, partial) -> dict:
    if t0 is None:
        return {"policy": policy, "fused": fused, "partial": partial, "robots": {}, "gpu_utilisation": 0.0}
    step = float(np.median(np.diff(robots[0].run.ctx.clip.times))) if len(robots[0].run.ctx.clip) > 1 else 1.0
    duration = max(1e-9, t1 - t0 + step)
    out = {}
    for r in robots:
        res = r.run.finish(interrupted=partial)
        gt = res.cm_gt.miou() if res.cm_gt is not None and res.cm_gt.matrix.sum() else None
        out[r.name] = {
            "clip": r.run.ctx.clip.spec,
            "miou_teacher": round(100 * res.cm_teacher.miou(), 3),
            "miou_gt": None if gt is None else round(100 * gt, 3),
            "phases": len(res.updates),
            "batches_dropped": r.dropped,
            # from the newest frame a phase trained on to its update at the robot: the sharing's wait shows here
            "update_delay_s": (round(float(np.mean([u.t_arrive - u.t_data for u in res.updates])), 3)
                               if res.updates else None),
            "gpu_share": round(sched.busy_s(r.name, t1 + step) / duration, 4),
            "uplink_kbps": round(sum(b for _, b in res.uplink) * 8 / duration / 1000, 2),
            "downlink_kbps": round(sum(b for _, b in res.downlink) * 8 / duration / 1000, 2),
            "frames": res.frames_done,
        }
    teacher = sum(sched.busy_s(r.name, t1 + step, LABEL) for r in robots)
    return {"policy": policy, "fused": fused, "partial": partial, "duration_s": round(duration, 2),
            "gpu_utilisation": round(min(1.0, gpu["busy"] / duration), 4),
            # (issue #31) the GPU's time split into the teacher's labelling and the students' training
            "gpu_teacher": round(teacher / duration, 4),
            "gpu_training": round(max(0.0, gpu["busy"] - teacher) / duration, 4), "robots": out}


def fleet_study(sources: Sequence[Clip], student: nn.Module, preset: Preset, robots: Sequence[int],
                policies: Sequence[str], fused: bool = False, teacher=None, lut=None,
                progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
                on_result: Callable[[dict], None] | None = None, alone: Sequence[int] | None = None) -> dict:
    """Every N in ``robots`` under every policy, plus each robot served alone (the reference): every
    robot up to the largest N, or the robots (1-based) in ``alone`` (the others' references come from
    another study, by ``ams-eval merge``)."""
    n_max = max(robots)
    alone = range(1, n_max + 1) if alone is None else alone
    clips = [robot_clip(sources[j % len(sources)], j // len(sources)) for j in range(n_max)]
    progress_factory = progress_factory or (lambda name, total: (lambda n: None))
    study: dict = {"robots": list(robots), "policies": list(policies), "fused": fused, "alone": {}, "runs": [],
                   "partial": False}
    try:
        for j, c in enumerate(clips):  # the reference: robot j alone on the GPU
            if j + 1 not in alone:
                continue
            res = run_fleet([c], student, preset, "round_robin", fused, teacher, lut,
                            progress_factory(f"robot{j + 1} alone", len(c)), first_robot=j)
            study["alone"][f"robot{j + 1}"] = res["robots"][f"robot{j + 1}"]
            if on_result:
                on_result(study)
        for n in robots:
            for policy in policies:
                res = run_fleet(clips[:n], student, preset, policy, fused, teacher, lut,
                                progress_factory(f"N={n} {policy}", n * len(clips[0])))
                _add_loss(res, study["alone"])
                res["n"] = n
                study["runs"].append(res)
                if on_result:
                    on_result(study)
    except KeyboardInterrupt as exc:
        study["partial"] = True
        part = getattr(exc, "fleet_partial", None)
        if part and part.get("robots"):
            _add_loss(part, study["alone"])
            part["n"] = len(part["robots"])
            study["runs"].append(part)
        raise StudyInterrupted(study) from exc
    return study


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fleet study; ``study`` holds what was computed (marked partial)."""

    def __init__(self, study: dict) -> None:
        super().__init__("interrupted")
        self.study = study


def _add_loss(res: dict, alone: dict) -> None:
    losses = []
    for name, fig in res["robots"].items():
        ref = alone.get(name)
        if ref is not None:
            fig["miou_loss"] = round(ref["miou_teacher"] - fig["miou_teacher"], 3)
            losses.append(fig["miou_loss"])
    # a mean over some of the robots is not the fleet's: none until every robot has its reference
    whole = bool(losses) and len(losses) == len(res["robots"])
    res["mean_miou_loss"] = round(float(np.mean(losses)), 3) if whole else None
    res["worst_miou_loss"] = round(float(np.max(losses)), 3) if whole else None


def parse_alone(spec: str, n_max: int) -> list[int]:
    """``--alone``: all | none | a list of robots (1-based) and ranges, e.g. ``1-4,7``."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(1, n_max + 1))
    if spec == "none":
        return []
    picked: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            a, _, b = part.partition("-")
            picked.update(range(int(a), int(b or a) + 1))
    except ValueError:
        raise ValueError(f"--alone '{spec}' is not all, none or a list of robots such as 1-4,7") from None
    bad = sorted(i for i in picked if not 1 <= i <= n_max)
    if bad or not picked:
        raise ValueError(f"--alone '{spec}' names robots {bad or 'none'} outside 1..{n_max} (the largest N of --robots); "
                         f"choose robots 1..{n_max}, all or none")
    return sorted(picked)


def largest_n_under(study: dict, budget: float, policy: str | None = None, worst: bool = False) -> int:
    """(issue #31) The largest N of ``study`` whose mean (``worst``: worst robot's) mIoU loss is at most
    ``budget`` points, with every smaller N in the study under it too (0: none); per ``policy`` or
    the best policy at each N."""
    key = "worst_miou_loss" if worst else "mean_miou_loss"
    best: dict[int, float] = {}
    for r in study["runs"]:
        if r.get(key) is None or r.get("partial") or (policy is not None and r["policy"] != policy):
            continue
        best[r["n"]] = min(best.get(r["n"], math.inf), r[key])
    n_ok = 0
    for n in sorted(best):
        if best[n] > budget:
            break
        n_ok = n
    return n_ok


def plan(study: dict, budget: float, fleets: Sequence[int]) -> dict:
    """(issue #31) An operator's answer from a fleet study: robots per GPU at a loss budget (mean and
    worst robot, best policy at each N) and the GPUs (pool actors) a fleet of each size needs."""
    per_gpu = {"mean": largest_n_under(study, budget), "worst": largest_n_under(study, budget, worst=True)}
    tested = max((r["n"] for r in study["runs"]), default=0)
    return {"loss_budget": budget, "robots_per_gpu": per_gpu, "largest_n_tested": tested,
            "gpus": {str(f): {k: (math.ceil(f / n) if n else None) for k, n in per_gpu.items()} for f in fleets},
            "note": ("robots per GPU is at least the largest N tested: run larger N to find the limit"
                     if per_gpu["mean"] == tested else "")}


def markdown(study: dict, preset: Preset) -> str:
    lines = ["# ams-eval fleet" + (" (PARTIAL: interrupted)" if study.get("partial") else ""), "",
             f"GPU cost model (preset {preset.name}): teacher {preset.teacher_call_s:g} s a call + "
             f"{preset.teacher_s:g} s a frame; training "
             + (f"{preset.train_s_per_step:g} s/step" if preset.train_s_per_step > 0 else
                f"measured here / {preset.train_speedup:g}")
             + f", K={preset.iterations}; fused: {'on' if study['fused'] else 'off'}"
             + (f" (extra student x{preset.fleet_fused_step_factor:g} of a step, at most {preset.fleet_fuse_max})"
                if study["fused"] else "")
             + f"; batches {'staggered' if preset.fleet_stagger else 'in lockstep'}.", "",
             "| N | policy | mean (worst) mIoU loss (points) | GPU utilisation (teacher + training) | mIoU vs teacher "
             "per robot | GPU share per robot | up / down Kbps (mean) |", "|---|---|---|---|---|---|---|"]
    for r in study["runs"]:
        robots = r["robots"].values()
        mious = ", ".join(f"{f['miou_teacher']:.1f}" for f in robots)
        shares = ", ".join(f"{f['gpu_share']:.2f}" for f in robots)
        up = np.mean([f["uplink_kbps"] for f in robots])
        down = np.mean([f["downlink_kbps"] for f in robots])
        loss = "-" if r.get("mean_miou_loss") is None else f"{r['mean_miou_loss']:.2f} ({r['worst_miou_loss']:.2f})"
        split = (f" ({100 * r['gpu_teacher']:.0f} + {100 * r['gpu_training']:.0f})" if "gpu_teacher" in r else "")
        lines.append(f"| {r['n']} | {r['policy']}{' (partial)' if r['partial'] else ''} | {loss} | "
                     f"{100 * r['gpu_utilisation']:.0f} %{split} | {mious} | {shares} | {up:.0f} / {down:.0f} |")
    if study["runs"]:
        lines += ["", "Largest N under 1 point of mIoU loss (best policy at each N): mean "
                  f"{largest_n_under(study, 1.0)}, worst robot {largest_n_under(study, 1.0, worst=True)} "
                  f"(of N up to {max(r['n'] for r in study['runs'])} tested)."]
    gt = {n: f["miou_gt"] for n, f in study["alone"].items() if f.get("miou_gt") is not None}
    if gt:
        lines += ["", "mIoU vs human labels, each robot alone: " + ", ".join(f"{n} {v:.1f}" for n, v in gt.items())]
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for policy in study["policies"]:
        pts = sorted((r["n"], r["mean_miou_loss"]) for r in study["runs"]
                     if r["policy"] == policy and r.get("mean_miou_loss") is not None)
        if pts:
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=policy)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("robots per GPU (N)")
    ax.set_ylabel("mean mIoU loss vs alone (points)")
    ax.set_title("Figure 6: accuracy as robots share one GPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_study(out: Path, study: dict, preset: Preset, meta: dict, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({**meta, "preset": dataclasses.asdict(preset), **study}, indent=2))
    (out / "fleet.md").write_text(markdown(study, preset))
    if plots and study["runs"]:
        plot(study, out / "fleet_miou_loss.png")
