"""The schemes of the paper's comparison (Table 1, Table 3, Figure 5) and ShadowTutor, replayed
in stream time on one clip (see :mod:`ams_ros.eval.simulator` for the time model).

- ``none``: the pretrained student, never updated.
- ``one_time``: frames of the first 60 s go up (H.264, 1 fps); the server fine-tunes the whole
  student on them once (the core trainer, strategy ``full``) and sends it down.
- ``remote_tracking``: one full-quality frame per second up, the teacher's label map down (PNG),
  carried to every frame on the edge with Farneback optical flow. ``remote_tracking:robots=N``:
  N robots share the base station's teacher, every one of their sampled frames queued on it
  (the others at their own sampling phases, drawn once from the seed).
- ``jit``: Just-In-Time on the newest key frame (SGD momentum 0.9, lr 0.01, threshold, step limit,
  stride 8..64 doubled on success and halved on failure), 5% gradient-guided updates by default.
- ``shadowtutor``: ShadowTutor's key frames, stride rule and partial distillation (decoder tail,
  up to 8 Adam steps lr 0.01 until 0.8, best model kept).
- ``ams``: the full system (the core's RobotSession: ASR sampling, Algorithm 1 + 2, update codec),
  with any selection strategy and fraction of Table 3 (``ams:strategy=random,gamma=0.1``).

A scheme spec is ``NAME[:KEY=VALUE,...]``; keys are preset fields, looked up with the scheme's
prefix first (``jit:threshold=0.6`` sets ``jit_threshold``), so variants run side by side.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ams_ros.core.server.downlink_budget import DownlinkBudgetConfig
from ams_ros.core.wire.frame_codec import decode_frames, encode_frames
from ams_ros.core.edge.frame_sampler import FrameSampler
from ams_ros.core.models.params import read_flat
from ams_ros.core.server.label_checks import LabelCheckConfig
from ams_ros.core.server.quality_gate import GateConfig
from ams_ros.core.server.rate_control import AdaptivePeriodConfig, RateControlConfig
from ams_ros.core.server.selection import STRATEGIES
from ams_ros.core.server.session import RobotSession, SessionConfig, TrainingDiverged
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.server.shipping import ship_update
from ams_ros.eval.baselines import (
    KeyFrameDistiller,
    KeyFrameOutcome,
    KeyFrameSchedule,
    LabelTracker,
    decoder_tail,
    gray,
    jit_next_stride,
    shadowtutor_next_stride,
)
from ams_ros.eval.presets import Preset, PAPER
from ams_ros.eval.simulator import RunContext, SchemeResult, SchemeRun, UpdateRecord

SCHEMES = ("none", "one_time", "remote_tracking", "jit", "shadowtutor", "ams")
PREFIX = {"one_time": "one_time_", "remote_tracking": "rt_", "jit": "jit_", "shadowtutor": "shadowtutor_", "ams": "", "none": ""}
TABLE3_STRATEGIES = ("last_layers", "first_layers", "first_last", "random", "gradient_guided")
TABLE3_FRACTIONS = (0.2, 0.1, 0.05, 0.01)
COMMAND_BYTES = 32  # a sampling-rate / stride command on the downlink


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SchemeSpec:
    name: str                 # as written (the result's key)
    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def preset_for(self, preset: Preset) -> Preset:
        """The preset with this spec's parameters applied (``KEY`` -> ``prefix + KEY`` if it exists)."""
        known = set(preset.to_dict())
        over = {}
        for k, v in self.params:
            full = PREFIX[self.scheme] + k
            over[full if full in known else k] = v
        return preset.with_overrides(over) if over else preset


def parse_scheme(text: str) -> SchemeSpec:
    """``NAME[:K=V,...]`` -> SchemeSpec; unknown names or keys raise ValueError naming the valid ones."""
    text = text.strip()
    name, _, rest = text.partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme '{name}'; choose from {', '.join(SCHEMES)}")
    params = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise ValueError(f"scheme parameter '{part}' in '{text}' is not KEY=VALUE")
        k, v = part.split("=", 1)
        params.append((k.strip(), v.strip()))
    spec = SchemeSpec(text, name, tuple(params))

    spec.preset_for(PAPER)  # validates the keys now, not after an hour of other schemes
    if name == "ams":
        strategy = dict(params).get("strategy")
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"unknown selection strategy '{strategy}'; valid: {', '.join(STRATEGIES)}")
    return spec


def table3_specs(strategies=TABLE3_STRATEGIES, fractions=TABLE3_FRACTIONS) -> list[str]:
    """The AMS variants of Table 3: each strategy at each fraction, plus full-model training."""
    out = ["ams:strategy=full,gamma=1.0"]
    for s in strategies:
        for g in fractions:
            out.append(f"ams:strategy={s},gamma={g:g}")
    return out


# ----------------------------------------------------------------------------- helpers


def _index_of(clip) -> dict[float, int]:
    return {float(t): i for i, t in enumerate(clip.times)}


def _server_labeler(ctx: RunContext, index: dict[float, int]) -> Callable:
    """``label(frames, stamps)`` for :meth:`RobotSession.add_encoded_batch`: the server's
    teacher labels of the decoded frames (or the clip's reference labels, per the preset)."""
    return lambda frames, stamps: ctx.server_labels([index[s] for s in stamps], frames, stamps)


# ----------------------------------------------------------------------------- none


def run_none(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    run = SchemeRun(ctx, spec.name, "none", dict(spec.params))
    edge = run.new_edge()
    for i, t, frame in ctx.clip.frames():
        run.score(i, t, edge.infer(frame))
    return run.finish()


def _phase(session: RobotSession, t_data: float):
    """``session.run_phase``, with a diverged phase (undone by the session) as None."""
    try:
        return session.run_phase(t_data)
    except TrainingDiverged:
        return None


def _diverged_note(session: RobotSession) -> list[str]:
    n = session.diverged_phases
    return [f"training diverged in {n} phase(s): weights past what '{session.config.update_encoding}' carries; "
            f"each was undone and nothing was shipped (lower lr)"] if n else []


# ----------------------------------------------------------------------------- one-time


def run_one_time(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    p = spec.preset_for(ctx.preset)
    run = SchemeRun(ctx, spec.name, "one_time", {"one_time_s": p.one_time_s, "steps": p.one_time_train_steps(),
                                                   **dict(spec.params)})
    w, h = ctx.size
    cfg = SessionConfig(
        trainer=TrainerConfig(iterations=p.one_time_train_steps(), batch_size=p.batch_size,
                              horizon_s=p.one_time_s + 2 * p.update_period_s, update_period_s=p.update_period_s,
                              gamma=1.0, strategy="full", lr=p.lr, input_size=(w, h), seed=p.seed,
                              train_precision=p.train_precision),
        update_encoding=p.encoding, adaptive_period=AdaptivePeriodConfig(enabled=False))
    session = RobotSession("one_time", copy.deepcopy(ctx.student), cfg)
    edge = run.new_edge()
    sampler = FrameSampler(sampling_rate=p.r_max, update_period=p.update_period_s)
    index = _index_of(ctx.clip)
    t0 = float(ctx.clip.times[0])
    done = False
    arrivals: list[float] = []
    t_data = -np.inf

    def upload(t: float, batch) -> None:
        """A batch goes up; the server labels its frames as soon as it arrives."""
        nonlocal t_data
        enc = encode_frames(batch.frames, batch.timestamps, p.bitrate_bps, codec=p.uplink_codec,
                            period_s=batch.update_period)
        arrive = run.up.send(t, len(enc.data))
        run.res.sent_times += list(batch.timestamps)
        session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, enc.timestamps,
                                  _server_labeler(ctx, index))
        arrivals.append(run.server.run(arrive, p.teacher_cost_s(len(enc.timestamps)))[1])
        t_data = max(t_data, max(enc.timestamps))

    run.res.rates.append((t0, p.r_max))
    for i, t, frame in ctx.clip.frames():
        if not done and t < t0 + p.one_time_s:
            batch = sampler.offer(t, frame)
            if batch is not None:
                upload(t, batch)
        elif not done:
            done = True
            run.res.rates.append((t, 0.0))
            last = sampler.flush(t)
            if last is not None:
                upload(t, last)
            out = _phase(session, t_data) if arrivals else None  # the one fine-tuning, once the last batch is labelled
            if out is not None:
                train_s = run.timer.modelled(out.wall_s, p.one_time_train_steps())
                start, end = run.server.run(max(arrivals), train_s)
                arrive = run.down.send(end, out.update.wire_bytes)
                edge.deliver(arrive, out.update)
                run.res.updates.append(UpdateRecord(t_data, start, end, arrive, out.update.wire_bytes,
                                                    p.one_time_train_steps()))
        edge.advance(t)
        run.score(i, t, edge.infer(frame))
    if not done:
        run.res.notes.append(f"clip shorter than one_time_s={p.one_time_s:g} s: never fine-tuned")
    run.res.notes += _diverged_note(session)
    return run.finish()


# ----------------------------------------------------------------------------- remote + tracking


def run_remote_tracking(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    p = spec.preset_for(ctx.preset)
    run = SchemeRun(ctx, spec.name, "remote_tracking", {"fps": p.rt_fps, "jpeg_quality": p.jpeg_quality,
                                                         "upload_resolution": ctx.keyframe_upload_resolution,
                                                         "robots_sharing_teacher": p.rt_robots,
                                                         **dict(spec.params)})
    edge = run.new_edge()  # labels the frames before the first label map arrives
    sched = KeyFrameSchedule(1, p.rt_fps)
    tracker = LabelTracker()
    # robots=N: the other N-1 robots sample at rt_fps too, each at its own phase (drawn once,
    # seeded: robots' clocks are not synchronised); their frames reach the teacher that long
    # before each of this robot's, teacher_s each, in arrival order
    others = sorted(np.random.default_rng(p.seed).uniform(0.0, 1.0 / p.rt_fps, p.rt_robots - 1), reverse=True)
    pending: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
    run.res.rates.append((float(ctx.clip.times[0]), p.rt_fps))
    for i, t, frame in ctx.clip.frames():
        g = gray(frame)
        if sched.due(t):
            sched.mark(t)
            enc = encode_frames([frame], [t], codec="jpeg", jpeg_quality=p.jpeg_quality)
            arrive_up = run.up.send(t, ctx.keyframe_upload_bytes(i, len(enc.data)))
            run.res.sent_times.append(t)
            dec = decode_frames(enc.data, enc.codec, enc.width, enc.height)
            label = ctx.server_labels([i], dec, [t])[0]
            for phase in others:  # the other robots' frames of the interval before it, oldest first
                run.server.run(arrive_up - phase, p.teacher_cost_s(1))
            start, end = run.server.run(arrive_up, p.teacher_cost_s(1))
            ok, png = cv2.imencode(".png", label)
            arrive = run.down.send(end, int(png.size))
            pending.append((arrive, label, g))
            run.res.updates.append(UpdateRecord(t, start, end, arrive, int(png.size)))
        while pending and pending[0][0] <= t:  # FIFO link: arrivals are in order
            _, label, key_gray = pending.popleft()
            tracker.reset(label, key_gray)
        pred = tracker.track(g)
        run.score(i, t, pred if pred is not None else edge.infer(frame))
    return run.finish()


# ----------------------------------------------------------------------------- key-frame schemes


def _run_keyframes(ctx: RunContext, spec: SchemeSpec, p: Preset, distiller_of: Callable, next_stride: Callable,
                   min_stride: int, params: dict) -> SchemeResult:
    """Shared loop of Just-In-Time and ShadowTutor: key frames go up at full quality; the server
    distils the newest one into its copy (a key frame still waiting when a newer one arrives is
    stale and dropped), ships the changed parameters and tells the edge the next stride; the
    edge keeps sending at the stride it last heard."""
    run = SchemeRun(ctx, spec.name, spec.scheme, {**params, "upload_resolution": ctx.keyframe_upload_resolution})
    server_model = copy.deepcopy(ctx.student).eval()
    distiller: KeyFrameDistiller = distiller_of(server_model)
    edge = run.new_edge()
    sched = KeyFrameSchedule(min_stride, ctx.clip.nominal_fps)
    fps = ctx.clip.nominal_fps
    state = {"stride": int(min_stride), "version": 0, "dropped": 0}
    waiting: list[tuple[float, int, float, np.ndarray]] = []   # at most one: the newest unserved key frame
    run.res.rates.append((float(ctx.clip.times[0]), fps / state["stride"]))
    accs: list[tuple[float, float, float, int]] = []

    def serve(now: float) -> None:
        if not waiting:
            return
        arrive_up, i, t, dec = waiting[0]
        start = max(run.server.free_at, arrive_up)
        if start > now:
            return
        waiting.clear()
        label = ctx.server_labels([i], [dec], [t])[0]
        with run.timer.measure() as span:
            out: KeyFrameOutcome = distiller.distill(dec, label)
            upd = (ship_update(server_model, out.indices, read_flat(server_model, out.indices), state["version"],
                               p.encoding, base_values=out.base_values)
                   if out.indices.size else None)
            span.steps = out.steps
        start, end = run.server.run(start, p.teacher_cost_s(1) + span.seconds)
        state["stride"] = stride = next_stride(state["stride"], out)
        accs.append((t, out.acc_before, out.acc_after, out.steps))
        if upd is not None:
            state["version"] += 1
            arrive = run.down.send(end, upd.wire_bytes)
            edge.deliver(arrive, upd)
            run.res.updates.append(UpdateRecord(t, start, end, arrive, upd.wire_bytes, out.steps))
        else:
            arrive = run.down.send(end, COMMAND_BYTES)

        def tell(s=stride, a=arrive) -> None:
            if s != sched.stride:
                run.res.rates.append((a, fps / s))
            sched.set_stride(s)

        edge.schedule(arrive, tell)

    for i, t, frame in ctx.clip.frames():
        if sched.due(t):
            sched.mark(t)
            enc = encode_frames([frame], [t], codec="jpeg", jpeg_quality=p.jpeg_quality)
            arrive_up = run.up.send(t, ctx.keyframe_upload_bytes(i, len(enc.data)))
            run.res.sent_times.append(t)
            dec = decode_frames(enc.data, enc.codec, enc.width, enc.height)[0]
            serve(arrive_up)  # the server may start on the previous key frame before this one arrives
            if waiting:
                state["dropped"] += 1
                waiting.clear()
            waiting.append((arrive_up, i, t, dec))
        serve(t)
        edge.advance(t)
        run.score(i, t, edge.infer(frame))
    run.res.params["stale_key_frames_dropped"] = state["dropped"]
    run.res.params["key_frames"] = len(accs)
    if distiller.diverged:
        run.res.notes.append(f"training diverged (non-finite loss, or weights past what float16 carries; step undone) on {distiller.diverged} key frames")
    run.res.params["mean_steps"] = float(np.mean([a[3] for a in accs])) if accs else 0.0
    return run.finish()


def run_jit(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    p = spec.preset_for(ctx.preset)
    params = {"threshold": p.jit_threshold, "accuracy": p.jit_accuracy, "max_steps": p.jit_max_steps,
              "gamma": p.jit_gamma, "lr": p.jit_lr, "momentum": p.jit_momentum, **dict(spec.params)}
    lo, hi = p.jit_min_stride, p.jit_max_stride
    return _run_keyframes(
        ctx, spec, p,
        lambda m: KeyFrameDistiller(m, ctx.clip.num_classes, optimizer="sgd", lr=p.jit_lr, momentum=p.jit_momentum,
                                    nesterov=True, weight_decay=p.jit_weight_decay, max_steps=p.jit_max_steps,
                                    threshold=p.jit_threshold, accuracy=p.jit_accuracy, gamma=p.jit_gamma,
                                    seed=p.seed),
        lambda s, out: jit_next_stride(s, out.success, lo, hi), lo, params)


def run_shadowtutor(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    p = spec.preset_for(ctx.preset)
    params = {"threshold": p.shadowtutor_threshold, "max_steps": p.shadowtutor_max_steps,
              "lr": p.shadowtutor_lr, **dict(spec.params)}
    lo, hi, thr = p.shadowtutor_min_stride, p.shadowtutor_max_stride, p.shadowtutor_threshold
    return _run_keyframes(
        ctx, spec, p,
        lambda m: KeyFrameDistiller(m, ctx.clip.num_classes, optimizer="adam", lr=p.shadowtutor_lr,
                                    max_steps=p.shadowtutor_max_steps, threshold=thr, accuracy="miou",
                                    trainable=decoder_tail(m), gamma=1.0, keep_best=True, seed=p.seed),
        lambda s, out: shadowtutor_next_stride(s, out.acc_before, thr, lo, hi), lo, params)


# ----------------------------------------------------------------------------- AMS


def run_ams(ctx: RunContext, spec: SchemeSpec) -> SchemeResult:
    p = spec.preset_for(ctx.preset)
    run = SchemeRun(ctx, spec.name, "ams", {"strategy": p.strategy, "gamma": p.gamma, "iterations": p.iterations,
                                            "batch_size": p.batch_size, "horizon_s": p.horizon_s,
                                            "update_period_s": p.update_period_s, "gate_frames": p.gate_frames,
                                            "gate_margin": p.gate_margin, "gate_scene_drop": p.gate_scene_drop,
                                            "drift_phases": p.drift_phases,
                                            "min_frame_std": p.min_frame_std, "one_class_share": p.one_class_share,
                                            **dict(spec.params)})
    w, h = ctx.size
    cfg = SessionConfig(
        trainer=TrainerConfig(iterations=p.iterations, batch_size=p.batch_size, horizon_s=p.horizon_s,
                              update_period_s=p.update_period_s, gamma=p.gamma, strategy=p.strategy, lr=p.lr,
                              input_size=(w, h), seed=p.seed, train_precision=p.train_precision),
        update_encoding=p.encoding, downlink=DownlinkBudgetConfig(downlink_budget_kbps=p.downlink_budget_kbps),
        rate=RateControlConfig(r_min=p.r_min, r_max=p.r_max, r_init=p.r_max, period_s=p.update_period_s),
        adaptive_period=AdaptivePeriodConfig(enabled=p.adaptive_update_period),
        gate=GateConfig(gate_frames=p.gate_frames, gate_margin=p.gate_margin, gate_scene_drop=p.gate_scene_drop,
                        drift_phases=p.drift_phases),
        labels=LabelCheckConfig(min_frame_std=p.min_frame_std, one_class_share=p.one_class_share,
                                one_class_batches=p.one_class_batches))
    session = RobotSession("eval", copy.deepcopy(ctx.student), cfg)
    edge = run.new_edge()
    sampler = FrameSampler(sampling_rate=p.r_max, update_period=p.update_period_s)
    index = _index_of(ctx.clip)
    pending: deque[tuple[float, object]] = deque()   # H.264 batches on their way / waiting at the server
    run.res.rates.append((float(ctx.clip.times[0]), sampler.sampling_rate))

    def command(r: float, period: float, at: float) -> Callable[[], None]:
        def apply() -> None:
            if r != sampler.sampling_rate:
                run.res.rates.append((at, r))
            sampler.command(r, period)
        return apply

    def serve(now: float) -> None:
        """Server work that could start by ``now``: label what arrived, train a phase, answer."""
        while pending and max(run.server.free_at, pending[0][0]) <= now:
            start = max(run.server.free_at, pending[0][0])
            label_s, t_data = 0.0, -np.inf
            while pending and pending[0][0] <= start:
                _, enc = pending.popleft()  # one teacher call per batch, on all its frames (kept or not)
                session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, enc.timestamps,
                                          _server_labeler(ctx, index))
                label_s += p.teacher_cost_s(len(enc.timestamps))
                t_data = max(t_data, max(enc.timestamps))
            out = _phase(session, t_data)
            train_s = run.timer.modelled(out.wall_s, p.iterations) if out is not None else 0.0
            start, end = run.server.run(start, label_s + train_s)
            if out is not None:
                arrive = run.down.send(end, out.update.wire_bytes)
                edge.deliver(arrive, out.update)
                run.res.updates.append(UpdateRecord(t_data, start, end, arrive, out.update.wire_bytes, p.iterations))
            cmd = session.sampling_command(t_data)
            if cmd is not None:
                at = run.down.send(end, COMMAND_BYTES)
                edge.schedule(at, command(cmd[0], cmd[1], at))

    for i, t, frame in ctx.clip.frames():
        batch = sampler.offer(t, frame)
        if batch is not None:
            enc = encode_frames(batch.frames, batch.timestamps, p.bitrate_bps, codec=p.uplink_codec,
                                period_s=batch.update_period)
            pending.append((run.up.send(t, len(enc.data)), enc))
            run.res.sent_times += list(batch.timestamps)
        serve(t)
        edge.advance(t)
        run.score(i, t, edge.infer(frame))
    run.res.params["phases"] = len(run.res.updates)
    run.res.params["phases_discarded"] = session.discarded_phases
    run.res.params["phases_unjudged"] = session.unjudged_phases
    run.res.params["batches_refused"] = session.refused_batches
    run.res.params["frames_refused"] = session.refused_frames
    if session.discarded_phases:
        run.res.notes.append(f"the gate discarded {session.discarded_phases} phase(s) (last: {session.last_discard})")
    if session.unjudged_phases:
        run.res.notes.append(f"the gate shipped {session.unjudged_phases} phase(s) unjudged across a scene change "
                             f"(last: {session.last_unjudged})")
    if session.refused_frames:
        run.res.notes.append(f"the label checks kept {session.refused_frames} frame(s) from training, "
                             f"{session.refused_batches} whole batch(es) (last: {session.last_refusal})")
    if session.rollbacks:
        run.res.notes.append(f"the drift rule sent the robot back to its starting weights {session.rollbacks} time(s)")
    if not run.res.updates:
        run.res.notes.append(f"no update reached the edge: the clip ({ctx.clip.duration:.1f} s) is shorter than "
                             f"what one phase needs (T_update={p.update_period_s:g} s of frames + training + transfer)")
    run.res.notes += _diverged_note(session)
    return run.finish()


RUNNERS: dict[str, Callable[[RunContext, SchemeSpec], SchemeResult]] = {
    "none": run_none, "one_time": run_one_time, "remote_tracking": run_remote_tracking,
    "jit": run_jit, "shadowtutor": run_shadowtutor, "ams": run_ams,
}


def run_scheme(ctx: RunContext, spec: SchemeSpec | str) -> SchemeResult:
    spec = parse_scheme(spec) if isinstance(spec, str) else spec
    return RUNNERS[spec.scheme](ctx, spec)
