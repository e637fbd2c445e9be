"""Fused training of k students in one vectorised step equals k separate phases (issue #16)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ams_ros.core.fleet.fused_training import fusable, fused_train_phases
from ams_ros.core.models.student import build_student
from ams_ros.core.models.params import flatten_params
from ams_ros.core.server.trainer import AMSTrainer
from ams_ros.core.server.trainer_config import TrainerConfig

W, H = 32, 16
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)


class TinyBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x - 0.5)))
        return self.head(torch.relu(self.conv2(x)))  # half resolution: logits_of upsamples


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyBNNet()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m.eval()


def fill(trainer: AMSTrainer, seed: int, n: int = 12) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = np.zeros((H, W), np.uint8)
        x0 = int(rng.integers(0, W - 8))
        label[:, x0:x0 + 8] = 1 + (i + seed) % 2
        frame = np.clip(COLORS[label] + rng.normal(0, 25, (H, W, 3)), 0, 255).astype(np.uint8)
        trainer.add_sample(float(i), frame, label)


def trainers(k: int, model_fn=make_model, **cfg) -> list[AMSTrainer]:
    out = []
    for j in range(k):
        c = TrainerConfig(**{"iterations": 3, "batch_size": 2, "input_size": (W, H), "gamma": 0.1,
                             "seed": j, "lr": 1e-2 * (1 + j), **cfg})
        t = AMSTrainer(model_fn(j), c)
        fill(t, j)
        out.append(t)
    return out


@pytest.mark.parametrize("strategy", ["gradient_guided", "random", "full"])
def test_fused_phases_of_k_students_give_the_weights_of_k_separate_phases(strategy: str) -> None:
    k = 3
    fused, seq = trainers(k, strategy=strategy), trainers(k, strategy=strategy)
    for phase in range(3):  # three phases: phase 2+ select by the previous phase's |u|
        before = [flatten_params(t.model) for t in fused]
        bn_before = [{k: v.clone() for k, v in t.model.bn1.named_buffers()} for t in fused]
        results = fused_train_phases(fused, [11.0] * k)
        expected = [t.train_phase(11.0) for t in seq]
        for j in range(k):
            r, e = results[j], expected[j]
            np.testing.assert_array_equal(r.indices, e.indices)
            np.testing.assert_allclose(r.values, e.values, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(flatten_params(fused[j].model).numpy(), flatten_params(seq[j].model).numpy(),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fused[j].m, seq[j].m, rtol=1e-4, atol=1e-8)
            assert fused[j].step == seq[j].step and r.phase == e.phase == phase + 1
            assert r.loss == pytest.approx(e.loss, rel=1e-5)
            # only selected coordinates change, per student
            moved = np.nonzero((flatten_params(fused[j].model) != before[j]).numpy())[0]
            assert set(moved) <= set(r.indices.tolist())
            if strategy != "full":
                assert len(r.indices) == round(0.1 * fused[j].num_params)
            for name, v in fused[j].model.bn1.named_buffers():  # frozen BN statistics
                torch.testing.assert_close(v, bn_before[j][name])
        # the students were trained apart: different robots, different selections
        assert strategy == "full" or not np.array_equal(results[0].indices, results[1].indices)


def test_fused_phase_of_the_real_student_matches_separate_phases() -> None:
    def student(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_student("lraspp_mobilenet_v3_large", num_classes=3).eval()

    fused = trainers(2, student, iterations=1)
    seq = trainers(2, student, iterations=1)
    results = fused_train_phases(fused, [11.0, 11.0])
    for j in range(2):
        e = seq[j].train_phase(11.0)
        np.testing.assert_array_equal(results[j].indices, e.indices)
        # Adam's first step divides by sqrt(v) + eps: where |g| is near eps, a float32 rounding
        # difference in g moves the step by a visible fraction of lr (here 1e-2), hence atol
        np.testing.assert_allclose(results[j].values, e.values, rtol=1e-4, atol=1e-5)


def test_unfusable_and_empty_trainers_fall_back_to_their_own_phase() -> None:
    ts = trainers(2) + trainers(1, strategy="gauss_southwell_sgd")
    assert not fusable(ts) and fusable(ts[:2])
    empty = AMSTrainer(make_model(5), TrainerConfig(iterations=3, batch_size=2, input_size=(W, H)))
    results = fused_train_phases(ts + [empty], [11.0] * 4)
    assert all(r is not None for r in results[:3]) and results[3] is None
    assert results[2].strategy == "gauss_southwell_sgd"
    with pytest.raises(ValueError, match="twice"):
        fused_train_phases([ts[0], ts[0]], [1.0, 1.0])


def test_fused_session_phases_ship_the_updates_of_separate_phases_and_keep_each_chain():
    """run_fused_phases over three robots' sessions: each update continues its robot's chain, an
    edge patched from it holds exactly that server's model, and the trained values (before the
    update encoding rounds them) and selected coordinates are those of separate phases."""
    from ams_ros.core.edge.double_buffer import DoubleBufferedModel
    from ams_ros.core.models.labels import get_label_space
    from ams_ros.core.models.weights import load_student
    from ams_ros.core.fleet.fused_training import run_fused_phases
    from ams_ros.core.server.session import RobotSession, SessionConfig
    from ams_ros.core.sources.synthetic import world_from_spec
    from ams_ros.core.server.trainer_config import TrainerConfig

    size = (48, 24)
    torch.manual_seed(1)
    student = load_student("deeplabv3_mobilenet_v2", num_classes=len(get_label_space("synthetic").class_names))

    def sessions():
        cfg = TrainerConfig(iterations=2, batch_size=2, gamma=0.05, lr=2e-3, input_size=size, horizon_s=60.0,
                            update_period_s=5.0)
        return [RobotSession(f"r{i}", copy.deepcopy(student), SessionConfig(trainer=copy.deepcopy(cfg)))
                for i in range(3)]

    fused, alone = sessions(), sessions()
    worlds = [world_from_spec(f"synthetic:{i}", width=size[0], height=size[1]) for i in range(3)]
    edges = [DoubleBufferedModel(copy.deepcopy(student)) for _ in range(3)]
    for edge, s, a in zip(edges, fused, alone):
        edge.apply_update(s.snapshot())
        a.snapshot()
    flat = lambda m: np.concatenate([p.detach().numpy().ravel() for p in m.parameters()])  # noqa: E731
    for phase in range(2):
        for world, s, a in zip(worlds, fused, alone):
            for t in range(5 * phase, 5 * phase + 5):
                rgb, lab = world.frame_at(float(t))
                s.add_labeled(float(t), rgb, lab)
                a.add_labeled(float(t), rgb, lab)
        outcomes = run_fused_phases(fused)
        for edge, s, a, out in zip(edges, fused, alone, outcomes):
            ref = a.run_phase()
            assert (out.update.base_version, out.update.new_version) == (phase, phase + 1)
            assert out.update.chain_tag == s.chain_tag
            edge.apply_update(out.update)
            assert np.array_equal(flat(edge.active), flat(s.model))
            # the same coordinates, but for near-ties at the top-gamma threshold: vmapped gradients
            # differ from plain ones by float rounding, which can swap a few of the 105k (seen once
            # in CI, under load); the values at the common coordinates agree
            got, want = out.result.indices, ref.result.indices
            common, gi, wi = np.intersect1d(got, want, assume_unique=True, return_indices=True)
            swapped = len(got) - len(common)
            assert len(got) == len(want) and swapped <= max(2, int(1e-4 * len(want))), (swapped, len(want))
            np.testing.assert_allclose(out.result.values[gi], ref.result.values[wi], atol=1e-4)
    with pytest.raises(ValueError, match="appears twice"):
        run_fused_phases([fused[0], fused[0]])
