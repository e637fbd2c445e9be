"""The double buffer with a fast runtime (issue #30): each copy's runner is rebuilt after an update
is written into it, off the inference thread, and swapped in with the model; a failed rebuild rejects
the update and keeps everything that runs; a refitting runtime is handed every tensor that changed."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

from small_inputs import small_net
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.onnx_export import state_tensors
from ams_ros.core.edge.runtimes import (FrameRunner, OnnxRuntime, OpenVinoRuntime, Runner, Runtime, TorchRuntime,
                                        probe_frame)
from ams_ros.core.models.params import flatten_params, param_layout
from ams_ros.core.wire.encodings import encode_update
from ams_ros.core.wire.update import UpdateError

FRAME = probe_frame((16, 8), seed=5)
X = torch.from_numpy(FRAME).permute(2, 0, 1)[None].float() / 255.0


def update_of(model: nn.Module, version: int, tensors: list[int], shift: float):
    """An update that adds ``shift`` to every value of the parameter tensors numbered ``tensors``."""
    layout = param_layout(model)
    idx = np.concatenate([np.arange(layout[t].offset, layout[t].offset + layout[t].numel) for t in tensors])
    vals = (flatten_params(model).numpy()[idx] + np.float32(shift)).astype(np.float16)  # exact on the wire
    return encode_update(model, idx, vals.astype(np.float32), version, version + 1, "delta_lzma_fp16")


def expected_after(model: nn.Module, updates: list[tuple[list[int], float]]) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        params = list(ref.parameters())
        for tensors, shift in updates:
            for t in tensors:
                params[t].copy_((params[t] + shift).half().float())
    return ref


def logits(net) -> torch.Tensor:
    """The logits of the test frame, whether ``net`` is a model or a frame runner."""
    if isinstance(net, FrameRunner):
        return net.logits(FRAME)
    with torch.no_grad():
        return net(X)


@pytest.mark.parametrize("runtime", [OnnxRuntime, OpenVinoRuntime], ids=lambda r: r.name)
def test_after_each_update_the_runner_computes_the_updated_model(runtime, tmp_path):
    model = small_net().eval()
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=runtime((16, 8), 1, tmp_path))
    steps = [([0], 0.1), ([3], -0.2), ([1, 2], 0.3), ([0, 3], 0.05)]  # each copy lags one update: catch-ups
    for v, (tensors, shift) in enumerate(steps):
        holder.apply_update(update_of(holder.active, v, tensors, shift))
        ref = expected_after(model, steps[: v + 1])
        with holder.use() as runner:
            assert runner is holder.runner and not isinstance(runner, nn.Module)
            torch.testing.assert_close(logits(runner), logits(ref), rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(logits(holder.active), logits(ref), rtol=1e-4, atol=1e-5)
    assert holder.version == len(steps)


class GatedRuntime(Runtime):
    """Wraps a runtime: :meth:`rebuild` waits for ``release`` (a slow compile) or raises when ``fail``."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.name = inner, inner.name
        self.started, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.fail = False

    def build(self, model: nn.Module) -> Runner:
        return self.inner.build(model)

    def rebuild(self, model, runner, touched=None) -> Runner:
        self.started.set()
        assert self.release.wait(10.0)
        if self.fail:
            raise RuntimeError("compile failed")
        return self.inner.rebuild(model, runner, touched)


@pytest.mark.parametrize("runtime", [OnnxRuntime, OpenVinoRuntime], ids=lambda r: r.name)
def test_inference_never_waits_on_a_rebuild(runtime, tmp_path):
    """While the patcher rebuilds the inactive copy's runner, use() hands the running one at once and
    it computes the old weights; the swap happens only when the rebuild is done."""
    model = small_net().eval()
    gated = GatedRuntime(runtime((16, 8), 1, tmp_path))
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=gated)
    old_runner, old_out = holder.runner, logits(holder.runner)
    gated.release.clear()
    patcher = threading.Thread(target=holder.apply_update, args=(update_of(model, 0, [0, 3], 0.5),))
    patcher.start()
    assert gated.started.wait(10.0)  # the update is written into the inactive copy; its rebuild is paused
    for _ in range(3):
        with holder.use() as runner:  # would hang here if inference waited on the rebuild
            assert runner is old_runner and holder.version == 0
            torch.testing.assert_close(logits(runner), old_out)
    gated.release.set()
    patcher.join(10.0)
    assert not patcher.is_alive() and holder.version == 1 and holder.runner is not old_runner
    torch.testing.assert_close(logits(holder.runner), logits(expected_after(model, [([0, 3], 0.5)])),
                               rtol=1e-3, atol=1e-4)


def test_a_failed_rebuild_rejects_the_update_and_keeps_what_runs(tmp_path):
    model = small_net().eval()
    gated = GatedRuntime(OnnxRuntime((16, 8), 1, tmp_path))
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=gated)
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    active, runner, flat = holder.active, holder.runner, flatten_params(holder.active).clone()
    gated.fail = True
    upd = update_of(holder.active, 1, [3], 0.4)
    with pytest.raises(UpdateError, match=r"rebuilding the onnxruntime runtime failed \(RuntimeError: compile "
                                          r"failed\); model unchanged"):
        holder.apply_update(upd)
    assert holder.version == 1 and holder.active is active and holder.runner is runner
    assert torch.equal(flatten_params(holder.active), flat)
    inactive = holder.copies()[1]
    assert torch.equal(flatten_params(inactive), flat)  # the written copy was restored
    gated.fail = False
    holder.apply_update(upd)  # the same update, once the runtime works again
    torch.testing.assert_close(logits(holder.runner), logits(expected_after(model, [([0], 0.1), ([3], 0.4)])),
                               rtol=1e-3, atol=1e-4)


class SnapshotRunner(Runner):
    """A refittable 'engine': a copy of the weights it was given, computing with them."""

    name = "refit-fake"

    def __init__(self, model: nn.Module) -> None:
        self.net = copy.deepcopy(model)
        self.weights = {k: v.detach().clone() for k, v in state_tensors(self.net).items()}

    def set(self, name: str, value: torch.Tensor) -> None:
        with torch.no_grad():
            state_tensors(self.net)[name].copy_(value)
        self.weights[name] = value.detach().clone()

    def __call__(self, x):
        with torch.no_grad():
            return self.net(x)


class RefittingRuntime(Runtime):
    """Refits in place only the tensors it is told changed (as TensorRT's IRefitter), recording them."""

    name, refits = "refit-fake", True

    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []
        self.fail_next = False

    def build(self, model):
        return SnapshotRunner(model)

    def rebuild(self, model, runner, touched=None):
        self.calls.append(None if touched is None else set(touched))
        tensors = state_tensors(model)
        names = list(tensors) if touched is None else sorted(touched)
        if self.fail_next:  # half refitted, then failing: the runner is now neither old nor new
            runner.set(names[0], tensors[names[0]] + 1.0)
            self.fail_next = False
            raise RuntimeError("refit failed")
        for name in names:
            runner.set(name, tensors[name])
        return runner


def assert_runner_matches_active(holder: DoubleBufferedModel) -> None:
    for name, t in state_tensors(holder.active).items():
        assert torch.equal(holder.runner.weights[name], t), name


def test_a_refitting_runtime_is_given_every_tensor_changed_since_its_copy_was_refitted():
    """Each copy misses the update applied to the other one: its refit must include that update's
    tensors (the catch-up) and this one's, and nothing else; after a failed refit, all of them."""
    model = small_net().eval()
    rt = RefittingRuntime()
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=rt)
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))  # into copy B
    assert rt.calls[-1] == {names[0]}
    assert_runner_matches_active(holder)
    holder.apply_update(update_of(holder.active, 1, [3], 0.2))  # into copy A, which lacks v1
    assert rt.calls[-1] == {names[0], names[3]}
    assert_runner_matches_active(holder)
    holder.apply_update(update_of(holder.active, 2, [2], 0.3))  # into B, which lacks v2
    assert rt.calls[-1] == {names[3], names[2]}
    assert_runner_matches_active(holder)
    rt.fail_next = True
    with pytest.raises(UpdateError, match="refit failed"):
        holder.apply_update(update_of(holder.active, 3, [1], 0.4))  # into A: refit fails half-way
    assert holder.version == 3
    assert_runner_matches_active(holder)  # the running engine (B's) untouched
    holder.apply_update(update_of(holder.active, 3, [1], 0.4))
    assert rt.calls[-1] is None  # A's half-refitted engine gets every weight again
    assert_runner_matches_active(holder)
    holder.apply_update(update_of(holder.active, 4, [0], 0.5))  # into B, which lacks v4
    assert rt.calls[-1] == {names[1], names[0]}
    assert_runner_matches_active(holder)
    torch.testing.assert_close(logits(holder.runner), logits(expected_after(
        model, [([0], 0.1), ([3], 0.2), ([2], 0.3), ([1], 0.4), ([0], 0.5)])), rtol=1e-4, atol=1e-5)


def test_eager_pytorch_hands_the_model_itself_and_tracks_nothing():
    model = small_net().eval()
    holder = DoubleBufferedModel(copy.deepcopy(model))
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    with holder.use() as net:
        assert net is holder.active and holder.runner is holder.active


@pytest.mark.parametrize("runtime", [None, OnnxRuntime], ids=["torch", "onnxruntime"])
def test_step_back_runs_the_previous_weights_at_once_and_the_next_update_builds_on_them(runtime, tmp_path):
    """(issue #29) Right after a swap the other copy still holds the previous version: stepping back is
    one assignment (model, runner, version); the next update is written onto the previous weights."""
    model = small_net().eval()
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=runtime((16, 8), 1, tmp_path) if runtime else None)
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    good_model, good_runner, good = holder.active, holder.runner, flatten_params(holder.active).clone()
    holder.apply_update(update_of(holder.active, 1, [3], 5.0))  # the bad one
    assert holder.step_back(1) is None  # not the running version: nothing happens
    assert holder.step_back(2) == 1
    assert holder.version == 1 and holder.active is good_model and holder.runner is good_runner
    assert torch.equal(flatten_params(holder.active), good)
    torch.testing.assert_close(logits(holder.runner), logits(expected_after(model, [([0], 0.1)])), rtol=1e-4, atol=1e-5)
    assert holder.step_back(1) is None  # one step only: the copy before v1 is gone
    holder.apply_update(update_of(holder.active, 1, [2], 0.3))  # a new v2, on v1's weights, not the bad ones
    ref = expected_after(model, [([0], 0.1), ([2], 0.3)])
    assert torch.equal(flatten_params(holder.active), flatten_params(ref))
    torch.testing.assert_close(logits(holder.runner), logits(ref), rtol=1e-4, atol=1e-5)
    holder.apply_update(update_of(holder.active, 2, [1], 0.2))  # and the copy that held the bad weights catches up
    assert torch.equal(flatten_params(holder.active), flatten_params(expected_after(
        model, [([0], 0.1), ([2], 0.3), ([1], 0.2)])))


def test_step_back_never_waits_for_the_patcher():
    model = small_net().eval()
    gated = GatedRuntime(TorchRuntime())
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=gated)
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    gated.release.clear()
    patcher = threading.Thread(target=holder.apply_update, args=(update_of(holder.active, 1, [3], 0.2),))
    patcher.start()
    assert gated.started.wait(10.0)
    assert holder.step_back(1) is None and holder.version == 1  # the patcher holds the buffer: no wait, no step
    gated.release.set()
    patcher.join(10.0)
    assert holder.version == 2 and holder.step_back(2) == 1


def test_nothing_to_step_back_to_after_a_failed_write_or_at_start():
    model = small_net().eval()
    gated = GatedRuntime(TorchRuntime())
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=gated)
    assert holder.step_back(0) is None
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    gated.fail = True
    with pytest.raises(UpdateError):
        holder.apply_update(update_of(holder.active, 1, [3], 0.2))
    assert holder.step_back(1) is None  # the other copy was made equal to the running one


@pytest.mark.parametrize("runtime", [None, OnnxRuntime], ids=["torch", "onnxruntime"])
def test_the_previous_weights_run_beside_the_new_ones_until_the_next_write(runtime, tmp_path):
    """(issue #29) Right after a swap the previous version's runner computes the previous weights (a
    suspected collapse is checked on the same frame); held, the patcher waits before writing into it."""
    model = small_net().eval()
    holder = DoubleBufferedModel(copy.deepcopy(model), runtime=runtime((16, 8), 1, tmp_path) if runtime else None)
    with holder.use_previous() as prev:
        assert prev is None  # at start: no previous version
    holder.apply_update(update_of(holder.active, 0, [0], 0.1))
    holder.apply_update(update_of(holder.active, 1, [3], 5.0))
    with holder.use_previous() as prev:
        torch.testing.assert_close(logits(prev), logits(expected_after(model, [([0], 0.1)])), rtol=1e-4, atol=1e-5)
        writer = threading.Thread(target=holder.apply_update, args=(update_of(holder.active, 2, [1], 0.2),))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and holder.version == 2  # waits for this reader of the other copy
    writer.join(10.0)
    assert holder.version == 3
    holder.step_back(3)
    with holder.use_previous() as prev:
        assert prev is None  # after a step back the other copy holds the rejected weights
