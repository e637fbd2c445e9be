"""Tests of the AMS server trainer (paper Algorithms 1 and 2, Table 3 strategies).

The central check replays the trainer's own mini-batches through an independent float64
NumPy implementation of Algorithm 2 and compares masks, Adam updates and weights.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ams_ros.core.models.params import flatten_params, num_params, read_flat, write_flat
from ams_ros.core.server.selection import STRATEGIES, num_selected, top_k_indices
from ams_ros.core.models.student import train_mode_frozen_bn
from ams_ros.core.server.sample_buffer import SampleBuffer
from ams_ros.core.server.trainer import AMSTrainer
from ams_ros.core.server.trainer_config import PhaseResult, TrainerConfig

W, H = 32, 16
NUM_CLASSES = 3
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)


class TinyNet(nn.Module):
    """A 3-conv segmentation net with one BatchNorm; input [0, 1] RGB, logits at input size."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x - 0.5)))
        x = torch.relu(self.conv2(x))
        return self.head(x)


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():  # non-trivial running stats, so that a change would show
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_sample(rng: np.random.Generator, w: int = W, h: int = H) -> tuple[np.ndarray, np.ndarray]:
    """Colour-coded regions: background class 0 with two rectangles of classes 1 and 2."""
    label = np.zeros((h, w), dtype=np.uint8)
    for c in (1, 2):
        x0, y0 = rng.integers(0, w - 6), rng.integers(0, h - 4)
        label[y0 : y0 + rng.integers(3, h // 2 + 2), x0 : x0 + rng.integers(4, w // 2)] = c
    frame = COLORS[label] + rng.normal(0.0, 25.0, size=(h, w, 3))
    return np.clip(frame, 0, 255).astype(np.uint8), label


def fill(target, t_values, seed: int = 0) -> None:
    """Add one synthetic sample per timestamp to a SampleBuffer or an AMSTrainer."""
    rng = np.random.default_rng(seed)
    add = target.add_sample if isinstance(target, AMSTrainer) else target.add
    for t in t_values:
        frame, label = make_sample(rng)
        add(float(t), frame, label)


def small_config(**kw) -> TrainerConfig:
    base = dict(iterations=4, batch_size=4, horizon_s=60.0, lr=1e-2, gamma=0.1, input_size=(W, H), seed=3)
    base.update(kw)
    return TrainerConfig(**base)


def recording_sampler(horizon: float, record: list):
    def sampler(buf, now, bs, rng):
        batch = buf.sample(now, horizon, bs, rng)
        record.append(batch)
        return batch

    return sampler


def flat(model: nn.Module) -> np.ndarray:
    return flatten_params(model).numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------
# Independent reference of Algorithm 2 (float64 NumPy, per-step loops)
# ------------------------------------------------------------------------------------------


class ReferenceAlgorithm2:
    """Own weights, own Adam moments; the model copy is only used to evaluate gradients."""

    def __init__(self, model: nn.Module, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.model = model
        self.w = flat(model)
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)
        self.i = 0
        self.u = None
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps

    def gradient(self, batch) -> np.ndarray:
        write_flat(self.model, np.arange(self.w.size), self.w.astype(np.float32))
        self.model.train()
        for mod in self.model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
        self.model.zero_grad()
        x = torch.tensor(np.stack([e.frame for e in batch]), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        y = torch.tensor(np.stack([e.label for e in batch]), dtype=torch.int64)
        F.cross_entropy(self.model(x), y, ignore_index=255).backward()
        return np.concatenate([p.grad.numpy().ravel() for p in self.model.parameters()]).astype(np.float64)

    def mask_from_previous(self, k: int) -> np.ndarray:
        order = np.argsort(-np.abs(self.u), kind="stable")
        return np.sort(order[:k])

    def phase(self, mask_idx: np.ndarray, batches) -> None:
        b = np.zeros_like(self.w)
        b[mask_idx] = 1.0
        for batch in batches:
            g = self.gradient(batch)
            self.m = self.b1 * self.m + (1 - self.b1) * g
            self.v = self.b2 * self.v + (1 - self.b2) * g**2
            self.i += 1
            alpha = self.lr * math.sqrt(1 - self.b2**self.i) / (1 - self.b1**self.i)
            u = np.empty_like(self.w)
            for j in range(self.w.size):  # deliberately elementwise
                u[j] = alpha * self.m[j] / (math.sqrt(self.v[j]) + self.eps)
            self.w = self.w - u * b
            self.u = u


def test_gradient_guided_matches_reference_algorithm2():
    model = make_model(0)
    ref = ReferenceAlgorithm2(copy.deepcopy(model), lr=1e-2)
    record: list = []
    cfg = small_config()
    trainer = AMSTrainer(model, cfg, batch_sampler=recording_sampler(cfg.horizon_s, record))
    n = num_params(model)
    k = num_selected(n, cfg.gamma)
    rng = np.random.default_rng(11)
    t = 0.0
    prev_u = None
    for phase in range(1, 4):
        for _ in range(5):
            frame, label = make_sample(rng)
            trainer.add_sample(t, frame, label)
            t += 1.0
        before, ref_before = flat(model), ref.w.copy()
        record.clear()
        res = trainer.train_phase(now=t)
        assert isinstance(res, PhaseResult) and res.phase == phase
        assert len(record) == cfg.iterations
        mask = res.indices
        assert mask.dtype == np.int64 and np.all(np.diff(mask) > 0)
        assert mask.size == k
        if phase == 1:
            assert np.any(mask != np.arange(k))  # random, not a fixed block
        else:
            # mask of phase n = top-gamma of |u_{n-1}| (trainer's own and the reference's)
            outside = np.setdiff1d(np.arange(n), mask)
            assert np.abs(prev_u[mask]).min() >= np.abs(prev_u[outside]).max()
            np.testing.assert_array_equal(mask, ref.mask_from_previous(k))
        ref.phase(mask, record)
        after = flat(model)
        changed = np.nonzero(after != before)[0]
        assert np.isin(changed, mask).all()  # nothing outside the mask moves
        np.testing.assert_array_equal(changed, np.nonzero(ref.w != ref_before)[0])
        assert changed.size >= 0.9 * mask.size  # (a coordinate with zero gradient stays put)
        np.testing.assert_allclose(after, ref.w, atol=1e-6, rtol=0)
        prev_u = trainer.last_update()
        np.testing.assert_allclose(prev_u, ref.u, atol=1e-7, rtol=1e-4)
        assert res.changed_fraction == pytest.approx(changed.size / n)
        np.testing.assert_array_equal(res.values, read_flat(model, res.indices))
    assert trainer.step == 3 * cfg.iterations


def test_config_defaults_are_the_papers():
    cfg = TrainerConfig()
    assert (cfg.iterations, cfg.batch_size, cfg.horizon_s, cfg.update_period_s) == (20, 8, 240.0, 10.0)
    assert (cfg.lr, cfg.betas, cfg.eps, cfg.gamma) == (1e-3, (0.9, 0.999), 1e-8, 0.05)
    assert (cfg.strategy, cfg.input_size, cfg.ignore_index) == ("gradient_guided", (512, 256), 255)
    assert cfg.class_weights is None and cfg.authors_variant is False


def test_eps_inside_sqrt_option_changes_the_step():
    model_a, model_b = make_model(0), make_model(0)
    ta = AMSTrainer(model_a, small_config(strategy="full", eps=1e-4))
    tb = AMSTrainer(model_b, small_config(strategy="full", eps=1e-4, eps_inside_sqrt=True))
    fill(ta, range(6))
    fill(tb, range(6))
    ta.train_phase(6.0)
    tb.train_phase(6.0)
    assert not np.allclose(flat(model_a), flat(model_b), atol=1e-7)


# ------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------


def _run_one(strategy: str, gamma: float = 0.1, **kw):
    model = make_model(1)
    record: list = []
    cfg = small_config(strategy=strategy, gamma=gamma, **kw)
    trainer = AMSTrainer(model, cfg, batch_sampler=recording_sampler(cfg.horizon_s, record))
    fill(trainer, range(8))
    before = flat(model)
    res = trainer.train_phase(8.0)
    return model, trainer, res, before, record


@pytest.mark.parametrize("strategy", ["full", "random", "first_layers", "last_layers", "first_last"])
def test_static_strategies_select_right_positions(strategy):
    model, trainer, res, before, _ = _run_one(strategy)
    n = trainer.num_params
    k = num_selected(n, 0.1)
    expected = {
        "full": np.arange(n),
        "first_layers": np.arange(k),
        "last_layers": np.arange(n - k, n),
        "first_last": np.concatenate([np.arange(k // 2), np.arange(n - (k - k // 2), n)]),
    }.get(strategy)
    if expected is not None:
        np.testing.assert_array_equal(res.indices, expected)
    else:
        assert res.indices.size == k and np.unique(res.indices).size == k
    changed = np.nonzero(flat(model) != before)[0]
    assert np.isin(changed, res.indices).all() and changed.size > 0
    np.testing.assert_array_equal(res.values, read_flat(model, res.indices))
    assert res.strategy == strategy


def test_random_strategy_draws_a_new_set_each_phase():
    _, trainer, res1, _, _ = _run_one("random")
    res2 = trainer.train_phase(8.0)
    assert res1.indices.size == res2.indices.size
    assert not np.array_equal(res1.indices, res2.indices)


def test_gauss_southwell_sgd_uses_top_gradient_coordinates():
    model0 = make_model(1)
    model, trainer, res, before, record = _run_one("gauss_southwell_sgd", iterations=1, sgd_lr=0.05)
    k = num_selected(trainer.num_params, 0.1)
    ref = ReferenceAlgorithm2(model0, lr=0.0)
    g = ref.gradient(record[0])
    expected = np.sort(np.argsort(-np.abs(g), kind="stable")[:k])
    np.testing.assert_array_equal(res.indices, expected)
    np.testing.assert_allclose(flat(model)[expected], before[expected] - 0.05 * g[expected], atol=1e-6)
    outside = np.setdiff1d(np.arange(trainer.num_params), expected)
    np.testing.assert_array_equal(flat(model)[outside], before[outside])
    assert trainer.step == 0  # SGD leaves the Adam state alone


def test_gauss_southwell_sgd_phase_indices_are_the_union():
    _, trainer, res, _, _ = _run_one("gauss_southwell_sgd", iterations=4)
    k = num_selected(trainer.num_params, 0.1)
    assert k <= res.indices.size <= 4 * k


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        TrainerConfig(strategy="biggest_weights")
    for name in STRATEGIES:
        assert name in str(err.value)
    trainer = AMSTrainer(make_model(0), small_config())
    fill(trainer, range(3))
    trainer.config.strategy = "nope"
    with pytest.raises(ValueError, match="gradient_guided"):
        trainer.train_phase(3.0)


def test_top_k_breaks_ties_towards_lower_index():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    np.testing.assert_array_equal(top_k_indices(scores, 3).numpy(), [1, 2, 3])
    np.testing.assert_array_equal(top_k_indices(scores, 7).numpy(), np.arange(7))


# ------------------------------------------------------------------------------------------
# Authors' variant
# ------------------------------------------------------------------------------------------


def test_authors_variant_restarts_from_pretrained_and_keeps_edge_in_sync():
    model = make_model(2)
    w0 = flat(model)
    edge = copy.deepcopy(model)
    record: list = []
    cfg = small_config(authors_variant=True, iterations=3)
    trainer = AMSTrainer(model, cfg, batch_sampler=recording_sampler(cfg.horizon_s, record))
    k = num_selected(trainer.num_params, cfg.gamma)
    fill(trainer, range(10))
    res1 = trainer.train_phase(10.0)
    write_flat(edge, res1.indices, res1.values)
    np.testing.assert_array_equal(flat(edge), flat(model))
    diff1 = np.nonzero(flat(model) != w0)[0]
    assert 0 < diff1.size <= k

    state = trainer.state_dict()
    record.clear()
    res2 = trainer.train_phase(10.0)
    after = flat(model)
    # restart: only this phase's mask differs from the pretrained weights
    diff2 = np.nonzero(after != w0)[0]
    assert 0 < diff2.size <= k
    # the mask is the top-k of |first full Adam step| taken from w0 with carried-over moments
    ref = ReferenceAlgorithm2(copy.deepcopy(model), lr=cfg.lr)
    ref.w = w0.copy()
    ref.m = state["m"].numpy().astype(np.float64)
    ref.v = state["v"].numpy().astype(np.float64)
    ref.i = state["step"]
    g = ref.gradient(record[0])
    m = 0.9 * ref.m + 0.1 * g
    v = 0.999 * ref.v + 0.001 * g**2
    i = ref.i + 1
    u = cfg.lr * math.sqrt(1 - 0.999**i) / (1 - 0.9**i) * m / (np.sqrt(v) + cfg.eps)
    mask = np.sort(np.argsort(-np.abs(u), kind="stable")[:k])
    assert np.isin(diff2, mask).all()
    assert trainer.step == 2 * cfg.iterations  # Adam step count carried over
    # shipped: this mask plus last phase's coordinates that went back to pretrained values
    assert np.isin(np.setdiff1d(diff1, mask), res2.indices).all()
    write_flat(edge, res2.indices, res2.values)
    np.testing.assert_array_equal(flat(edge), after)


# ------------------------------------------------------------------------------------------
# Buffer
# ------------------------------------------------------------------------------------------


def test_buffer_window_sampling_and_eviction():
    buf = SampleBuffer(input_size=(W, H))
    rng = np.random.default_rng(0)
    frame, label = make_sample(rng)
    for t in range(100):
        buf.add(float(t), frame, label)
    assert len(buf) == 100
    win = buf.window(50.0, 10.0)
    assert [e.t for e in win] == [float(t) for t in range(40, 51)]  # inclusive, no future
    batch = buf.sample(99.0, 30.0, 6200, np.random.default_rng(1))
    ts = np.array([e.t for e in batch])
    assert ts.min() >= 69.0 and ts.max() <= 99.0
    counts = np.bincount(ts.astype(int) - 69, minlength=31)
    assert counts.size == 31 and counts.min() > 130 and counts.max() < 270  # ~200 each
    assert len(buf) == 31  # older entries evicted
    assert buf.sample(500.0, 30.0, 4, rng) == [] and len(buf) == 0


def test_buffer_bounded_by_horizon_on_add_and_orders_by_time():
    buf = SampleBuffer(input_size=(W, H), horizon_s=10.0)
    frame, label = make_sample(np.random.default_rng(0))
    for t in [0.0, 2.0, 1.0, 5.0, 30.0, 25.0, 24.0]:
        buf.add(t, frame, label)
    assert [e.t for e in buf.window(100.0, 100.0)] == [24.0, 25.0, 30.0]


def test_buffer_resizes_frame_linear_and_label_nearest():
    buf = SampleBuffer(input_size=(W, H))
    frame, label = make_sample(np.random.default_rng(0), w=64, h=32)
    label[0, 0] = 255
    buf.add(0.0, frame, label)
    (entry,) = buf.window(0.0, 1.0)
    assert entry.frame.shape == (H, W, 3) and entry.frame.dtype == np.uint8
    assert entry.label.shape == (H, W) and entry.label.dtype == np.uint8
    assert set(np.unique(entry.label)) <= set(np.unique(label))
    with pytest.raises(ValueError):
        buf.add(1.0, frame[..., 0], label)


# ------------------------------------------------------------------------------------------
# Loss, BN, results, persistence
# ------------------------------------------------------------------------------------------


def test_ignore_index_pixels_do_not_contribute():
    model = make_model(0)
    trainer = AMSTrainer(model, small_config())
    rng = np.random.default_rng(5)
    frame, label = make_sample(rng)
    label[:, :10] = 255
    label[0, 20:] = 7  # not a student class: ignored as well
    buf = SampleBuffer()
    buf.add(0.0, frame, label)
    entries = buf.window(0.0, 1.0)
    loss = trainer.compute_loss(entries)
    with torch.no_grad():
        x = torch.tensor(frame, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        logp = torch.log_softmax(model(x), dim=1)[0]
    valid = label < NUM_CLASSES
    y = torch.tensor(label.astype(np.int64))
    manual = -logp.gather(0, y.clamp(max=NUM_CLASSES - 1)[None])[0][torch.tensor(valid)].mean()
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-5)
    # an all-ignored batch gives no gradient, so no motion and a nan (not 0) reported loss
    empty = AMSTrainer(make_model(0), small_config(strategy="full"))
    empty.add_sample(0.0, frame, np.full_like(label, 255))
    before = flat(empty.model)
    res = empty.train_phase(0.0)
    assert math.isnan(res.loss)
    np.testing.assert_array_equal(flat(empty.model), before)


def test_batchnorm_running_stats_frozen_and_model_left_in_eval():
    model = make_model(4)
    bn_state = {k: v.clone() for k, v in model.bn1.state_dict().items() if "running" in k or "num_batches" in k}
    trainer = AMSTrainer(model, small_config(strategy="full"))
    fill(trainer, range(8))
    gamma_before = model.bn1.weight.detach().clone()
    trainer.train_phase(8.0)
    for key, val in bn_state.items():
        assert torch.equal(model.bn1.state_dict()[key], val), key
    assert not torch.equal(model.bn1.weight.detach(), gamma_before)  # BN affine params do train
    assert not model.training
    train_mode_frozen_bn(model)
    assert model.training and model.conv1.training and not model.bn1.training


def test_no_samples_in_horizon_returns_none():
    trainer = AMSTrainer(make_model(0), small_config(horizon_s=10.0))
    assert trainer.train_phase(0.0) is None
    fill(trainer, [0.0, 1.0])
    assert trainer.train_phase(100.0) is None
    assert trainer.phase == 0 and trainer.step == 0


def test_full_snapshot_and_state_roundtrip():
    model = make_model(0)
    cfg = small_config()
    trainer = AMSTrainer(model, cfg)
    idx, vals = trainer.full_snapshot()
    np.testing.assert_array_equal(idx, np.arange(num_params(model)))
    np.testing.assert_array_equal(vals, flatten_params(model).numpy())
    fill(trainer, range(10))
    trainer.train_phase(10.0)
    trainer.train_phase(10.0)
    state = trainer.state_dict()
    other = AMSTrainer(make_model(9), cfg, buffer=trainer.buffer)
    other.load_state_dict(state)
    assert other.phase == 2 and other.step == 2 * cfg.iterations
    a, b = trainer.train_phase(10.0), other.train_phase(10.0)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(trainer.last_update(), other.last_update())

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ValueError):
        AMSTrainer(Other(), cfg).load_state_dict(state)


# ------------------------------------------------------------------------------------------
# Learning
# ------------------------------------------------------------------------------------------


def _eval_loss(trainer: AMSTrainer, entries) -> float:
    with torch.no_grad():
        return float(trainer.compute_loss(entries))


@pytest.mark.parametrize("gamma", [0.05, 0.2])
def test_phases_reduce_loss_on_synthetic_task(gamma):
    model = make_model(7)
    trainer = AMSTrainer(model, small_config(gamma=gamma, iterations=20, batch_size=4, lr=1e-2))
    held_out = SampleBuffer()
    fill(held_out, range(16), seed=99)
    held = held_out.window(100.0, 1000.0)
    start = _eval_loss(trainer, held)
    rng = np.random.default_rng(1)
    t = 0.0
    for _ in range(6):
        for _ in range(4):
            frame, label = make_sample(rng)
            trainer.add_sample(t, frame, label)
            t += 1.0
        res = trainer.train_phase(t)
        assert res.indices.size == num_selected(trainer.num_params, gamma)
    end = _eval_loss(trainer, held)
    print(f"gamma={gamma}: held-out loss {start:.3f} -> {end:.3f}")
    assert end < 0.7 * start, (start, end)


def test_write_flat_writes_unsorted_indices_and_refuses_out_of_range():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    n = num_params(model)
    idx = np.array([n - 1, 0, 17, 5, 16])  # across all four tensors, unsorted
    vals = np.arange(idx.size, dtype=np.float32) + 10
    write_flat(model, idx, vals)
    np.testing.assert_array_equal(read_flat(model, idx), vals)
    before = flatten_params(model).clone()
    with pytest.raises(ValueError, match="indices"):
        write_flat(model, np.array([0, n]), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="values"):
        write_flat(model, np.array([0, 1]), np.zeros(3, np.float32))
    assert torch.equal(before, flatten_params(model))  # nothing written by a refused call


# ------------------------------------------------------------------------------------------
# Mixed precision (issue #14): autocast forward/backward, float32 Adam state and selection
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_phase_changes_exactly_the_selected_coordinates(precision):
    if precision == "float16":
        try:  # autocast to float16 on the CPU needs a recent torch; the CUDA path is the same code
            with torch.autocast("cpu", dtype=torch.float16):
                torch.nn.functional.conv2d(torch.rand(1, 3, 4, 4), torch.rand(2, 3, 1, 1))
        except RuntimeError as exc:
            pytest.skip(f"no float16 autocast on this CPU build: {exc}")
    model = make_model(1)
    cfg = small_config(strategy="gradient_guided", gamma=0.1, train_precision=precision)
    trainer = AMSTrainer(model, cfg)
    fill(trainer, range(8))
    trainer.train_phase(8.0)  # the first phase picks at random (no u yet); the second from |u|
    u_prev = trainer.last_update()
    assert u_prev is not None and u_prev.dtype == np.float32
    before = flat(model)
    res = trainer.train_phase(8.0)
    k = num_selected(trainer.num_params, 0.1)
    expected = top_k_indices(torch.from_numpy(np.abs(u_prev)), k).numpy()  # Algorithm 2's mask, from float32 u
    np.testing.assert_array_equal(res.indices, expected)
    after = flat(model)
    outside = np.setdiff1d(np.arange(trainer.num_params), expected)
    np.testing.assert_array_equal(after[outside], before[outside])  # nothing else moved
    moved = np.flatnonzero(after != before)
    assert moved.size > 0.9 * k and np.isin(moved, expected).all()
    np.testing.assert_array_equal(res.values, read_flat(model, res.indices))
    assert trainer.m.dtype == trainer.v.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert math.isfinite(res.loss)


def test_mixed_precision_gradients_stay_close_to_float32():
    """bfloat16 autocast changes the gradient's rounding, not what is computed: the first
    iteration's gradient agrees with float32's in direction (cosine > 0.99)."""
    grads = {}
    for precision in ("float32", "bfloat16"):
        trainer = AMSTrainer(make_model(1), small_config(train_precision=precision))
        fill(trainer, range(8))
        batch = trainer.buffer.sample(8.0, 60.0, 4, np.random.default_rng(0))
        train_mode_frozen_bn(trainer.model)
        grads[precision] = trainer._loss_and_grad(batch)[1]
    a, b = grads["float32"], grads["bfloat16"]
    assert b.dtype == torch.float32
    assert float(torch.dot(a, b) / (a.norm() * b.norm())) > 0.99


def test_unknown_train_precision_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        TrainerConfig(train_precision="int8")


class DropoutNet(TinyNet):
    """TinyNet with dropout before its head (as the deeplabv3 student's ASPP has)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x - 0.5)))
        return self.head(self.drop(torch.relu(self.conv2(x))))


def test_phase_rng_makes_a_phase_independent_of_what_the_process_drew_before_it():
    """A robot's phase draws its dropout from its own (seed, phase) stream: the same phase after any
    other use of torch's generator gives the same weights, a later phase other masks, and the
    process's generator is left where it was."""
    def one_phase(draws_before: int) -> np.ndarray:
        torch.manual_seed(0)
        model = DropoutNet().eval()
        trainer = AMSTrainer(model, small_config(strategy="full"))
        fill(trainer, np.arange(12.0))
        torch.rand(draws_before)  # another robot's phase, a test before this one
        state = torch.random.get_rng_state()
        trainer.train_phase(12.0)
        assert torch.equal(torch.random.get_rng_state(), state)  # restored
        return flat(model)

    np.testing.assert_array_equal(one_phase(0), one_phase(1000))
    from ams_ros.core.server.trainer import phase_rng
    with phase_rng(3, 1, torch.device("cpu")):
        a = torch.rand(4)
    with phase_rng(3, 2, torch.device("cpu")):
        b = torch.rand(4)
    with phase_rng(3, 1, torch.device("cpu")):
        np.testing.assert_array_equal(torch.rand(4).numpy(), a.numpy())
    assert not torch.equal(a, b)
