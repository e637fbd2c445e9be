"""The robot's one way in for a model (issue #29 parts): a frozen model holds every update, catch-up and
snapshot without counting it as a fault; a version the robot stepped back from is not taken again,
a newer one is."""

from __future__ import annotations

import copy

import numpy as np
import torch

from small_inputs import small_net
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.receiver import APPLIED, HELD, REJECTED, RESYNC, UpdateReceiver
from ams_ros.core.models.params import flatten_params
from ams_ros.core.wire.encodings import encode_snapshot, encode_update


def update(model, base: int, shift: float, tensor_slice=slice(0, 20)):
    flat = flatten_params(model).numpy()
    idx = np.arange(flat.size)[tensor_slice]
    vals = (flat[idx] + np.float32(shift)).astype(np.float16).astype(np.float32)
    return encode_update(model, idx, vals, base, base + 1, "delta_lzma_fp16")


def test_a_frozen_model_holds_updates_and_snapshots_until_unfrozen():
    model = small_net().eval()
    rx = UpdateReceiver(DoubleBufferedModel(copy.deepcopy(model)), "robot1")
    before = flatten_params(rx.holder.active).clone()
    rx.frozen = "freeze_model is true"
    first = update(model, 0, 0.1)
    v = rx.receive(first)
    assert v.kind == HELD and not v.resync and v.version == 0
    assert v.reason == "update v0->v1: held, the model is frozen (freeze_model is true); the robot catches up when " \
                       "it is unfrozen"
    assert rx.receive(encode_snapshot(model, 3), RESYNC).kind == HELD
    assert torch.equal(flatten_params(rx.holder.active), before) and rx.holder.version == 0
    rx.frozen = ""
    assert rx.receive(first).kind == APPLIED and rx.holder.version == 1


def test_a_version_stepped_back_from_is_held_and_a_newer_one_taken():
    model = small_net().eval()
    rx = UpdateReceiver(DoubleBufferedModel(copy.deepcopy(model)), "robot1")
    server = copy.deepcopy(model)
    u1 = update(server, 0, 0.1)
    assert rx.receive(u1).applied
    u2 = update(rx.holder.active, 1, 5.0, slice(20, 40))
    assert rx.receive(u2).applied
    assert rx.step_back(2, "collapsed") == 1 and rx.stepped_back_from == 2
    assert rx.receive(u2).kind == HELD  # the same bad version again (a resync answer, a duplicate)
    snap2 = encode_snapshot(rx.holder.copies()[1], 2)
    held = rx.receive(snap2, RESYNC)
    assert held.kind == HELD and "stepped back from v2 and takes a newer version only" in held.reason
    u3 = update(rx.holder.active, 2, 0.2, slice(40, 60))  # v3 built on v2, as the server's next phase
    gap = rx.receive(u3)
    assert gap.kind == REJECTED and gap.resync  # the robot is at v1: it asks for a catch-up to v3
    snap3 = encode_snapshot(rx.holder.active, 3)
    assert rx.receive(snap3, RESYNC).applied and rx.holder.version == 3 and rx.stepped_back_from is None


def test_step_back_with_nothing_to_go_back_to_refuses_nothing():
    model = small_net().eval()
    rx = UpdateReceiver(DoubleBufferedModel(copy.deepcopy(model)), "robot1")
    assert rx.step_back(0, "collapsed") is None and rx.stepped_back_from is None
