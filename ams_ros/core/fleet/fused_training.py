"""Fused training phases: k robots' students trained in one vectorised step (issue #16).

When several robots' phases are due at once, running them one after another leaves a GPU
mostly idle (a small student at batch 8 fills little of it) and pays k times the per-kernel
launch cost. Here the k students (same architecture) are stacked along a leading "model"
dimension and every iteration is one ``torch.func.vmap`` of ``grad`` of a
``functional_call``: one forward and one backward for all k.

Everything that makes a phase *one robot's* stays per robot and is exactly the sequential
trainer's (``core/trainer.py``): its own mini-batches (its buffer, its batch RNG), its Algorithm 2
selection (gradient-guided top-gamma of ``|u_{n-1}|``, its selection RNG), its mask, its Adam
moments, step count and learning rate, its phase counter. BatchNorm statistics stay frozen
(the BN layers run in eval mode inside ``functional_call``, buffers are never written). So a
fused phase of k students gives, within float tolerance, the weights of k separate
``AMSTrainer.train_phase`` calls (test/test_fused_training.py checks that, and that only the
selected coordinates move).

Trainers that cannot be fused with the others (a different architecture, iterations, batch
size or input size; ``gauss_southwell_sgd``, the authors' variant, class weights) are trained
separately, with the sequential trainer, in the same call.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import ExitStack
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ams_ros.core.models.losses import logits_of, mask_unknown_classes
from ams_ros.core.models.student import train_mode_frozen_bn
from ams_ros.core.models.params import flatten_params, load_flat
from ams_ros.core.models.samples import batch_to_tensors
from ams_ros.core.server.selection import FULL, GAUSS_SOUTHWELL_SGD, mask_from_indices, phase_indices, validate_strategy
from ams_ros.core.server.session import PhaseOutcome, RobotSession, TrainingDiverged
from ams_ros.core.server.trainer import AMSTrainer
from ams_ros.core.server.stop_hooks import PhaseInterrupted, stop_hooks
from ams_ros.core.server.trainer_config import PhaseResult

__all__ = ["fusable", "fused_train_phases"]


def _group_key(t: AMSTrainer) -> Optional[tuple]:
    """Trainers with the same key can share a fused step; None: train this one alone."""
    c = t.config
    if c.strategy == GAUSS_SOUTHWELL_SGD or c.authors_variant or c.class_weights is not None:
        return None
    return (t._fingerprint, c.iterations, c.batch_size, tuple(c.input_size), c.ignore_index, str(t.device))


def fusable(trainers: Sequence[AMSTrainer]) -> bool:
    """True when all ``trainers`` can be trained in one fused step."""
    keys = {_group_key(t) for t in trainers}
    return len(keys) == 1 and None not in keys


def fused_train_phases(trainers: Sequence[AMSTrainer], nows: Sequence[float]) -> list[Optional[PhaseResult]]:
    """One training phase for each trainer (at its stream time ``nows[i]``), fused where possible.

    Returns what each ``trainer.train_phase(now)`` would return (None for a trainer whose
    horizon holds no sample). ``duration_s`` of a fused phase is the fused step's wall time
    divided by the number of students in it (each robot's GPU-seconds).
    """
    if len(trainers) != len(nows):
        raise ValueError(f"{len(trainers)} trainers but {len(nows)} stream times")
    if len({id(t) for t in trainers}) != len(trainers):
        raise ValueError("a trainer appears twice: one phase per robot per fused step")
    results: list[Optional[PhaseResult]] = [None] * len(trainers)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trainers):
        key = _group_key(t)
        if key is None:
            results[i] = t.train_phase(nows[i])
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        active = []
        for i in members:
            t, now = trainers[i], float(nows[i])
            t.buffer.evict(now - t.config.horizon_s)
            if len(t.buffer.window(now, t.config.horizon_s)) > 0:
                active.append(i)
        if len(active) == 1:
            results[active[0]] = trainers[active[0]].train_phase(nows[active[0]])
        elif active:
            for i, r in zip(active, _fused_group([trainers[i] for i in active], [float(nows[i]) for i in active])):
                results[i] = r
    return results


def _fused_group(trainers: list[AMSTrainer], nows: list[float]) -> list[PhaseResult]:
    t0 = time.perf_counter()
    num_samples, masks, selected = _selections(trainers, nows)
    first, dev = trainers[0], trainers[0].device
    w_before = torch.stack([flatten_params(t.model).to(dev) for t in trainers])  # k x n
    w = w_before.clone()
    losses = _train_fused(trainers, nows, w, masks)
    wall = time.perf_counter() - t0
    results = []
    for j, (t, now) in enumerate(zip(trainers, nows)):
        load_flat(t.params, w[j])
        w_after = flatten_params(t.model).to(dev)
        changed = w_after != w_before[j]
        ship = selected[j] | changed
        indices = torch.nonzero(ship).reshape(-1)
        finite = [v for v in losses[j] if math.isfinite(v)]
        results.append(PhaseResult(
            indices=indices.cpu().numpy().astype(np.int64),
            values=w_after[indices].cpu().numpy().astype(np.float32),
            phase=t.phase,
            loss=float(np.mean(finite)) if finite else float("nan"),
            duration_s=wall / len(trainers),
            num_samples=num_samples[j],
            strategy=t.config.strategy,
            changed_fraction=float(changed.float().mean()) if first.num_params else 0.0,
            num_params=first.num_params,
            iterations=t.config.iterations,
            now=float(now),
        ))
    return results


def _selections(trainers: list[AMSTrainer], nows: list[float]):
    """Per robot (Algorithm 2): its samples in the horizon, the phase's coordinate mask (None: all)
    and the boolean selection it ships; each trainer's phase counter moves on."""
    n, dev = trainers[0].num_params, trainers[0].device
    num_samples, masks, selected = [], [], []
    for t, now in zip(trainers, nows):
        cfg = t.config
        validate_strategy(cfg.strategy)
        num_samples.append(len(t.buffer.window(now, cfg.horizon_s)))
        t.phase += 1
        idx = phase_indices(cfg.strategy, n, cfg.gamma, t.select_rng, t.u)
        mask = None if cfg.strategy == FULL else mask_from_indices(n, idx, dev)
        masks.append(mask)
        selected.append(torch.ones(n, dtype=torch.bool, device=dev) if mask is None else mask.bool())
    return num_samples, masks, selected


def _train_fused(trainers: list[AMSTrainer], nows: list[float], w: torch.Tensor,
                 masks: list[torch.Tensor | None]) -> list[list[float]]:
    """K fused iterations on the stacked weights ``w`` (k x n, changed in place): one vmapped
    forward and backward for every student, each robot's Adam step on its own masked coordinates.
    Returns each robot's losses."""
    k, first, dev = len(trainers), trainers[0], trainers[0].device
    slots = first.slots
    params = {s.name: w[:, s.offset:s.offset + s.numel].view(k, *s.shape) for s in slots}  # views of w
    buffers = {name: torch.stack([dict(t.model.named_buffers())[name].detach() for t in trainers])
               for name, _ in first.model.named_buffers()}
    base = copy.deepcopy(first.model)
    train_mode_frozen_bn(base)  # BN in eval mode: running statistics read, never written
    ignore = first.config.ignore_index

    def loss_fn(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(lambda inp: functional_call(base, (p, b), (inp,)), x, tuple(y.shape[-2:]))
        ce = F.cross_entropy(logits, y, ignore_index=ignore, reduction="sum")
        count = (y != ignore).sum()
        loss = ce / count.clamp(min=1)
        return loss, loss.detach()

    step = vmap(grad(loss_fn, has_aux=True))
    losses: list[list[float]] = [[] for _ in trainers]

    def stop() -> bool:
        return any(t.stop_requested is not None and t.stop_requested() for t in trainers)

    try:
        for it in range(first.config.iterations):
            for t in trainers:
                t.check_stop(it)
            xs, ys, valid = [], [], []
            for t, now in zip(trainers, nows):
                x, y = batch_to_tensors(t.next_batch(now), dev)
                y = mask_unknown_classes(y, _num_classes(first), ignore)
                xs.append(x)
                ys.append(y)
                valid.append(bool((y != ignore).any()))
            with stop_hooks(base, stop, f"fused phase of {k} robots"):
                grads, loss = step(params, buffers, torch.stack(xs), torch.stack(ys))
            g = torch.cat([grads[s.name].reshape(k, -1).float() for s in slots], dim=1)
            with torch.no_grad():
                for j, t in enumerate(trainers):
                    losses[j].append(float(loss[j]) if valid[j] else float("nan"))
                    u = t.adam_update(g[j])  # this robot's moments, step count and lr
                    w[j] -= u if masks[j] is None else u * masks[j]
                    t.u = u
    finally:
        for t in trainers:
            t.model.eval()
    return losses


def _num_classes(t: AMSTrainer) -> int:
    """Output channels of the student (its classes), from its last parameter with a channel dim."""
    cached = getattr(t, "_fused_num_classes", None)
    if cached is None:
        x = torch.zeros(1, 3, t.config.input_size[1], t.config.input_size[0], device=t.device)
        with torch.no_grad():
            was = t.model.training
            t.model.eval()
            cached = int(logits_of(t.model, x).shape[1])
            t.model.train(was)
        t._fused_num_classes = cached  # type: ignore[attr-defined]
    return cached


def run_fused_phases(sessions: Sequence[RobotSession]) -> list[PhaseOutcome | TrainingDiverged | None]:
    """One phase for each of several robots' sessions with their students trained in one fused
    step (:func:`~ams_ros.core.fleet.fused_training.fused_train_phases`: per-robot selection, masks
    and Adam state; the weights within float tolerance of separate phases), each then encoded
    and versioned exactly as :meth:`RobotSession.run_phase` does. Per session: its outcome,
    None (nothing to train, or shutting down) or the TrainingDiverged that undid its phase.
    The sessions' locks are taken in device-id order, so two callers cannot deadlock."""
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a session appears twice: one phase per robot per fused step")
    out: list[PhaseOutcome | TrainingDiverged | None] = [None] * len(sessions)
    live = [i for i, s in enumerate(sessions) if s.latest_t is not None]
    t0 = time.perf_counter()
    with ExitStack() as held:
        for i in sorted(live, key=lambda i: sessions[i].device_id):
            held.enter_context(sessions[i].lock)
        starts = {i: sessions[i].begin_phase(float(sessions[i].latest_t)) for i in live}
        try:
            results = fused_train_phases([sessions[i].trainer for i in live], [starts[i].train_now for i in live])
        except PhaseInterrupted:  # shutting down: as if no phase had started
            for i in live:
                sessions[i].abandon_phase(starts[i])
            return out
        finally:
            for i in live:
                sessions[i].trainer.config = starts[i].configured
        for i, result in zip(live, results):
            try:
                out[i] = sessions[i].finish_phase(starts[i], result, t0)
            except TrainingDiverged as exc:
                out[i] = exc
    return out
