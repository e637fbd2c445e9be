"""Stream-time replay of a clip through every scheme of the paper, on the core library.

Time is stream time, not wall time: an update trained on data up to ``t`` reaches the edge
at ``t + training time / speed-up + bytes / downlink rate`` and is used only from then on;
uplinked frames reach the server after ``bytes / uplink rate``. Each scheme sees the same
frames and is scored on the same frames against the teacher (and human labels if any).
"""

from __future__ import annotations

import copy
import gzip
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ams_ros.core.distill import distill
from ams_ros.core.frame_codec import decode_frames, encode_frames
from ams_ros.core.frame_sampler import FrameSampler
from ams_ros.core.metrics import ConfusionMatrix, miou
from ams_ros.core.models.student import predict
from ams_ros.core.params import flatten_params, write_flat
from ams_ros.core.server_session import DeviceSession, SessionConfig
from ams_ros.core.trainer import TrainerConfig, train_mode_frozen_bn
from ams_ros.core.update_codec import encode_update
from ams_ros.eval.presets import Preset
from ams_ros.eval.schemes import jit_next_stride, shadowtutor_next_stride

SCHEMES = ("none", "one_time", "remote_tracking", "jit", "shadowtutor", "ams")


@dataclass
class Clip:
    """Evaluated frames at the preset size, their teacher labels and human labels (or None)."""

    times: np.ndarray
    frames: list[np.ndarray]
    teacher: list[np.ndarray]
    gt: list[np.ndarray | None]
    num_classes: int


@dataclass
class SchemeResult:
    name: str
    per_frame: list[float] = field(default_factory=list)   # mIoU vs teacher per evaluated frame
    cm_teacher: ConfusionMatrix | None = None
    cm_gt: ConfusionMatrix | None = None
    uplink: list[tuple[float, int]] = field(default_factory=list)
    downlink: list[tuple[float, int]] = field(default_factory=list)
    updates: int = 0
    rates: list[tuple[float, float]] = field(default_factory=list)
    interrupted: bool = False


class _Edge:
    """The edge's model over stream time: updates wait in a queue until they arrive."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.pending: list[tuple[float, Callable[[nn.Module], None]]] = []

    def deliver(self, t_arrive: float, apply: Callable[[nn.Module], None]) -> None:
        self.pending.append((t_arrive, apply))
        self.pending.sort(key=lambda p: p[0])

    def advance(self, t: float) -> None:
        while self.pending and self.pending[0][0] <= t:
            self.pending.pop(0)[1](self.model)


def _pred(model: nn.Module, frame: np.ndarray) -> np.ndarray:
    """Student labels of a frame already at the evaluation size."""
    return predict(model, [frame], size=(frame.shape[1], frame.shape[0]))[0]


def _score(res: SchemeResult, clip: Clip, i: int, pred: np.ndarray) -> None:
    res.per_frame.append(miou(pred, clip.teacher[i], clip.num_classes))
    res.cm_teacher.update(pred, clip.teacher[i])
    if clip.gt[i] is not None:
        res.cm_gt.update(pred, clip.gt[i])


def _new_result(name: str, clip: Clip) -> SchemeResult:
    return SchemeResult(name, cm_teacher=ConfusionMatrix(clip.num_classes), cm_gt=ConfusionMatrix(clip.num_classes))


def _write_sparse(idx: np.ndarray, vals: np.ndarray) -> Callable[[nn.Module], None]:
    return lambda m: write_flat(m, idx, vals)


def _transfer_s(nbytes: int, bps: float) -> float:
    return nbytes * 8.0 / bps


def run_none(clip: Clip, student: nn.Module, preset: Preset, progress) -> SchemeResult:
    res = _new_result("none", clip)
    for i, frame in enumerate(clip.frames):
        _score(res, clip, i, _pred(student, frame))
        progress(1)
    return res


def run_one_time(clip: Clip, student: nn.Module, preset: Preset, progress) -> SchemeResult:
    """Fine-tune the whole student once on the first ``one_time_s`` seconds (1 frame/s)."""
    res = _new_result("one_time", clip)
    edge = _Edge(copy.deepcopy(student))
    picks = _one_per_second(clip.times, until=preset.one_time_s)
    samples = [(clip.frames[i], clip.teacher[i]) for i in picks]
    if samples:
        enc = encode_frames([s[0] for s in samples], [float(clip.times[i]) for i in picks], preset.bitrate_bps,
                            period_s=preset.one_time_s)
        res.uplink.append((float(clip.times[picks[-1]]), len(enc.data)))
        model = copy.deepcopy(student)
        t0 = time.perf_counter()
        distill(model, samples, steps=preset.iterations * 6, batch_size=preset.batch_size, lr=1e-3)
        train_s = (time.perf_counter() - t0) / preset.training_speedup
        flat = flatten_params(model).numpy()
        upd = encode_update(model, np.arange(flat.size), flat, 0, 1, full_snapshot=True)
        arrive = float(clip.times[picks[-1]]) + train_s + _transfer_s(upd.wire_bytes, preset.downlink_bps)
        edge.deliver(arrive, _write_sparse(np.arange(flat.size), flat.astype(np.float16).astype(np.float32)))
        res.downlink.append((arrive, upd.wire_bytes))
        res.updates = 1
    for i, frame in enumerate(clip.frames):
        edge.advance(float(clip.times[i]))
        _score(res, clip, i, _pred(edge.model, frame))
        progress(1)
    return res


def _one_per_second(times: np.ndarray, until: float | None = None) -> list[int]:
    picks, nxt = [], -1e9
    for i, t in enumerate(times):
        if until is not None and t > until:
            break
        if t >= nxt:
            picks.append(i)
            nxt = t + 1.0
    return picks


def run_remote_tracking(clip: Clip, student: nn.Module, preset: Preset, progress) -> SchemeResult:
    """Teacher labels of 1 frame/s sent down and propagated to every frame with Farneback flow."""
    res = _new_result("remote_tracking", clip)
    keys = set(_one_per_second(clip.times))
    key_label, key_gray, key_arrival = None, None, np.inf
    pending: list[tuple[float, np.ndarray, np.ndarray]] = []
    h, w = clip.frames[0].shape[:2]
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    for i, frame in enumerate(clip.frames):
        t = float(clip.times[i])
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if i in keys:  # full-quality frame up (JPEG), label down (PNG)
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            ok, png = cv2.imencode(".png", clip.teacher[i])
            up_s = _transfer_s(jpg.size, 2_000_000.0)
            arrive = t + up_s + _transfer_s(png.size, preset.downlink_bps)
            res.uplink.append((t, int(jpg.size)))
            res.downlink.append((arrive, int(png.size)))
            pending.append((arrive, clip.teacher[i], gray))
            res.updates += 1
        while pending and pending[0][0] <= t:
            _, key_label, key_gray = pending.pop(0)
        if key_label is None:
            pred = _pred(student, frame)  # nothing arrived yet: the local model
        else:
            flow = cv2.calcOpticalFlowFarneback(gray, key_gray, None, 0.5, 3, 64, 5, 5, 1.1, 0)
            pred = cv2.remap(key_label, grid[1] + flow[..., 0], grid[0] + flow[..., 1], cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_REPLICATE)
        _score(res, clip, i, pred)
        progress(1)
    return res


def _frame_batch(frames, labels):
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(np.stack(labels).astype(np.int64))


def _keyframe_loop(name: str, clip: Clip, student: nn.Module, preset: Preset, progress, *, threshold: float,
                   max_steps: int, make_opt, trainable: Callable[[str], bool], next_stride, gamma: float | None,
                   skip_if_good: bool) -> SchemeResult:
    """Shared loop of Just-In-Time and ShadowTutor: train on the newest key frame until its
    accuracy passes ``threshold`` (at most ``max_steps``), then ship the changed parameters."""
    res = _new_result(name, clip)
    server = copy.deepcopy(student)
    edge = _Edge(copy.deepcopy(student))
    params = [p for n, p in server.named_parameters() if trainable(n)]
    names = {id(p) for p in params}
    for p in server.parameters():
        p.requires_grad_(id(p) in names)
    opt = make_opt(params)
    stride, next_key = 8, 0
    for i, frame in enumerate(clip.frames):
        t = float(clip.times[i])
        if i == next_key:
            label = clip.teacher[i]
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            res.uplink.append((t, int(jpg.size)))
            acc = miou(_pred(server, frame), label, clip.num_classes)
            steps = 0
            before = flatten_params(server).numpy()
            t0 = time.perf_counter()
            if not (skip_if_good and acc >= threshold):
                x, y = _frame_batch([frame], [label])
                train_mode_frozen_bn(server)
                while steps < max_steps and acc < threshold:
                    out = server(x)
                    logits = out["out"] if isinstance(out, dict) else out
                    yy = torch.where(y >= logits.shape[1], torch.full_like(y, 255), y)
                    loss = F.cross_entropy(logits, yy, ignore_index=255)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                    server.eval()
                    acc = miou(_pred(server, frame), label, clip.num_classes)
                    train_mode_frozen_bn(server)
                server.eval()
            train_s = (time.perf_counter() - t0) / preset.training_speedup
            if steps:
                after = flatten_params(server).numpy()
                changed = np.flatnonzero(after != before)
                if gamma is not None and changed.size:  # send only the gamma fraction that moved most
                    k = max(1, int(gamma * after.size))
                    changed = np.sort(changed[np.argsort(-np.abs(after[changed] - before[changed]))[:k]])
                    keep = after.copy()
                    revert = np.setdiff1d(np.arange(after.size), changed)
                    keep[revert] = before[revert]
                    write_flat(server, revert, before[revert])  # server == edge after the update
                    after = keep
                vals = after[changed].astype(np.float16).astype(np.float32)
                write_flat(server, changed, vals)
                upd = encode_update(server, changed, vals, res.updates, res.updates + 1)
                arrive = t + train_s + _transfer_s(upd.wire_bytes, preset.downlink_bps)
                edge.deliver(arrive, _write_sparse(changed, vals))
                res.downlink.append((arrive, upd.wire_bytes))
                res.updates += 1
            stride = next_stride(stride, acc)
            next_key = i + stride
        edge.advance(t)
        _score(res, clip, i, _pred(edge.model, frame))
        progress(1)
    return res


def run_jit(clip: Clip, student: nn.Module, preset: Preset, progress) -> SchemeResult:
    thr = preset.jit_threshold
    return _keyframe_loop(
        "jit", clip, student, preset, progress, threshold=thr, max_steps=preset.jit_max_steps,
        make_opt=lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5),
        trainable=lambda n: True, next_stride=lambda s, a: jit_next_stride(s, a >= thr), gamma=0.05,
        skip_if_good=True)


def run_shadowtutor(clip: Clip, student: nn.Module, preset: Preset, progress) -> SchemeResult:
    thr = preset.shadowtutor_threshold
    return _keyframe_loop(
        "shadowtutor", clip, student, preset, progress, threshold=thr, max_steps=8,
        make_opt=lambda ps: torch.optim.Adam(ps, lr=0.01),
        trainable=lambda n: not n.startswith(("backbone.", "net.backbone.")),  # decoder tail only
        next_stride=lambda s, a: shadowtutor_next_stride(s, a, thr), gamma=None, skip_if_good=True)


def run_ams(clip: Clip, student: nn.Module, preset: Preset, progress, strategy: str = "gradient_guided",
            gamma: float | None = None, encoding: str = "paper_gzip_fp16") -> SchemeResult:
    """The full system: ASR sampling, H.264 batches, Algorithm 1+2 training, sparse updates."""
    res = _new_result("ams" if strategy == "gradient_guided" and gamma is None else f"ams_{strategy}_{gamma}", clip)
    g = preset.gamma if gamma is None else gamma
    cfg = SessionConfig(
        trainer=TrainerConfig(iterations=preset.iterations, batch_size=preset.batch_size, horizon_s=preset.horizon_s,
                              update_period_s=preset.update_period_s, gamma=g, strategy=strategy,
                              input_size=(preset.width, preset.height)),
        update_encoding=encoding, r_min=preset.r_min, r_max=preset.r_max, rate_period_s=preset.update_period_s)
    session = DeviceSession("eval", copy.deepcopy(student), cfg)
    edge = _Edge(copy.deepcopy(student))
    sampler = FrameSampler(sampling_rate=preset.r_max, update_period=preset.update_period_s)
    label_of = {float(t): i for i, t in enumerate(clip.times)}
    for i, frame in enumerate(clip.frames):
        t = float(clip.times[i])
        batch = sampler.offer(t, frame)
        if batch is not None:
            enc = encode_frames(batch.frames, batch.timestamps, preset.bitrate_bps, period_s=batch.update_period)
            res.uplink.append((t, len(enc.data)))
            arrive_server = t + _transfer_s(len(enc.data), preset.bitrate_bps * 1.5)
            decoded = decode_frames(enc.data, enc.codec, enc.width, enc.height)
            for ts, dec in zip(batch.timestamps, decoded):  # teacher labels of the frames (see docs)
                session.add_labeled(ts, dec, clip.teacher[label_of[ts]])
            out = session.run_phase(batch.timestamps[-1])
            if out is not None:
                idx = out.result.indices
                vals = flatten_params(session.model).numpy()[idx]  # what the edge decodes (server == edge)
                arrive = arrive_server + out.wall_s / preset.training_speedup + _transfer_s(out.update.wire_bytes, preset.downlink_bps)
                edge.deliver(arrive, _write_sparse(idx, vals.copy()))
                res.downlink.append((arrive, out.update.wire_bytes))
                res.updates += 1
            cmd = session.sampling_command(t)
            if cmd is not None:
                sampler.command(cmd[0], cmd[1])
                res.rates.append((t, cmd[0]))
        edge.advance(t)
        _score(res, clip, i, _pred(edge.model, frame))
        progress(1)
    return res


RUNNERS = {"none": run_none, "one_time": run_one_time, "remote_tracking": run_remote_tracking,
           "jit": run_jit, "shadowtutor": run_shadowtutor, "ams": run_ams}
