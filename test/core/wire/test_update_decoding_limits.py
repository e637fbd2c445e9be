"""Malformed updates (issue #13): every one is rejected with UpdateError and leaves the running
model, the inactive copy and the version exactly as they were."""

from __future__ import annotations

import copy
import gzip
import hashlib
import lzma
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.models.params import FlatAccessor, flatten_params
from ams_ros.core.wire.encodings import ENCODINGS, encode_snapshot, encode_update
from ams_ros.core.wire.update import StaleUpdateError, UpdateError, VersionGapError
from ams_ros.core.wire.index_coding import varint_encode
from ams_ros.core.edge.chain_sync import check_version_step


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))


def digest(holder: DoubleBufferedModel) -> tuple[str, str, int]:
    a, b = holder.copies()
    return (hashlib.sha256(flatten_params(a).numpy().tobytes()).hexdigest(),
            hashlib.sha256(flatten_params(b).numpy().tobytes()).hexdigest(), holder.version)


@pytest.fixture
def setup():
    m = net()
    holder = DoubleBufferedModel(copy.deepcopy(m), version=3)
    n = flatten_params(m).numel()
    idx = np.arange(0, n, 7, dtype=np.int64)
    vals = flatten_params(m).numpy()[idx] + 0.01
    # one good update first, so the inactive copy has a pending catch-up (the riskiest state)
    holder.apply_update(encode_update(m, idx, vals, 3, 4, "delta_lzma_fp16"))
    return m, holder, n


def crafted(m, n, encoding, deltas=None, idx_raw=None, vals_raw=None, num_selected=None, base=4, new=5):
    """An update whose streams are what we say, with a valid checksum (as a forger would make it)."""
    k = num_selected if num_selected is not None else (len(deltas) if deltas is not None else 4)
    u = encode_update(m, np.arange(k), np.zeros(k, np.float32), base, new, "delta_lzma_fp16")
    pack = zlib.compress if ENCODINGS[encoding].compressor == "zlib" else lzma.compress
    u.encoding = encoding
    if deltas is not None:
        u.indices_blob = pack(varint_encode(np.asarray(deltas, dtype=np.uint64)))
    if idx_raw is not None:
        u.indices_blob = idx_raw
    u.values_blob = vals_raw if vals_raw is not None else pack(np.zeros(k, np.float16).tobytes())
    u.num_selected = k
    u.checksum = u.compute_checksum()
    return u


def assert_rejected_untouched(holder, update, match=None):
    before = digest(holder)
    with pytest.raises(UpdateError, match=match):
        holder.apply_update(update)
    assert digest(holder) == before


def test_delta_indices_that_wrap_int64_back_into_range_are_rejected(setup):
    m, holder, n = setup
    # 0, 2**62, 2**63 (wraps negative), 3 * 2**62 (wraps to -2**62): first and last look fine
    assert_rejected_untouched(holder, crafted(m, n, "delta_lzma_fp16", deltas=[0, 2**62, 2**62, 2**62]), "deltas")


@pytest.mark.parametrize("deltas,why", [([5, 0, 1], "repeat"), ([5, 3, 10**9], "deltas"), ([10**9], "out of range")])
def test_duplicate_or_out_of_range_delta_indices_are_rejected(setup, deltas, why):
    m, holder, n = setup
    assert_rejected_untouched(holder, crafted(m, n, "delta_lzma_fp16", deltas=deltas), why)


def test_index_count_other_than_num_selected_is_rejected(setup):
    m, holder, n = setup
    u = crafted(m, n, "delta_lzma_fp16", deltas=[1, 1, 1], num_selected=3)
    u.indices_blob = lzma.compress(varint_encode(np.array([1, 1, 1, 1], np.uint64)))
    u.checksum = u.compute_checksum()
    assert_rejected_untouched(holder, u, "indices")


@pytest.mark.parametrize("encoding", ["delta_lzma_fp16", "residual_zlib_q6", "residual_lzma_q8"])
@pytest.mark.parametrize("blob", ["indices_blob", "values_blob"])
def test_trailing_bytes_after_a_compressed_stream_are_rejected(setup, encoding, blob):
    m, holder, n = setup
    idx = np.arange(10, 60, dtype=np.int64)
    base = FlatAccessor(holder.active).read(idx)
    u = encode_update(m, idx, base + 0.01, 4, 5, encoding, base_values=base)
    setattr(u, blob, getattr(u, blob) + b"\x00garbage")
    u.checksum = u.compute_checksum()
    assert_rejected_untouched(holder, u, "trailing")


def test_gzip_mask_with_a_second_member_or_padding_bits_is_rejected(setup):
    m, holder, n = setup
    u = encode_update(m, np.arange(5), np.zeros(5, np.float32), 4, 5, "paper_gzip_fp16")
    good_mask = u.indices_blob
    u.indices_blob = good_mask + gzip.compress(b"x", mtime=0)
    u.checksum = u.compute_checksum()
    assert_rejected_untouched(holder, u, "trailing")
    if n % 8:
        bits = np.zeros((n + 7) // 8 * 8, bool)
        bits[:5] = True
        bits[-1] = True  # a padding bit
        u.indices_blob = gzip.compress(np.packbits(bits).tobytes(), mtime=0)
        u.checksum = u.compute_checksum()
        assert_rejected_untouched(holder, u, "padding")


def test_raw_streams_with_extra_bytes_are_rejected(setup):
    m, holder, n = setup
    u = crafted(m, n, "delta_lzma_fp16", deltas=[1, 1, 1, 1], vals_raw=lzma.compress(np.zeros(5, np.float16).tobytes()))
    assert_rejected_untouched(holder, u, "inflates past")  # the header bounds the value stream exactly
    u = crafted(m, n, "delta_lzma_fp16", deltas=[1, 1, 1, 1])
    u.indices_blob = lzma.compress(varint_encode(np.array([1, 1, 1, 1], np.uint64)) + b"\x80")  # a dangling byte
    u.checksum = u.compute_checksum()
    assert_rejected_untouched(holder, u, "index stream")


def test_num_params_other_than_the_models_is_rejected(setup):
    m, holder, n = setup
    u = encode_update(m, np.arange(5), np.zeros(5, np.float32), 4, 5)
    u.num_params = n + 1
    u.checksum = u.compute_checksum()
    assert_rejected_untouched(holder, u, "parameters")


@pytest.mark.parametrize("base,new,err", [(4, 4, StaleUpdateError), (4, 3, StaleUpdateError), (4, 6, StaleUpdateError),
                                          (9, 9, VersionGapError), (5, 6, VersionGapError), (2, 6, VersionGapError),
                                          (2, 3, StaleUpdateError), (3, 4, StaleUpdateError)])
def test_sparse_update_must_move_the_version_exactly_one_step(setup, base, new, err):
    """At v4: a gap (base ahead, or behind with a new version past v4) asks for a resync; an update
    the robot already has (ending at or below v4: a duplicate, replay or late one) is only stale."""
    m, holder, n = setup
    u = encode_update(m, np.arange(5), np.zeros(5, np.float32), base, new)
    before = digest(holder)
    with pytest.raises(err):
        holder.apply_update(u)
    assert digest(holder) == before


def test_catch_up_update_may_span_several_versions_when_allowed(setup):
    m, holder, n = setup
    u = encode_update(m, np.arange(5), np.zeros(5, np.float32), 4, 7)
    with pytest.raises(StaleUpdateError, match="v5"):
        check_version_step(u, 4)
    check_version_step(u, 4, max_span=3)
    assert holder.apply_update(u, max_span=3) == 7
    with pytest.raises(StaleUpdateError, match="v8..v9"):
        check_version_step(encode_update(m, np.arange(5), np.zeros(5, np.float32), 7, 10), 7, max_span=2)


def test_a_catch_up_applies_on_a_version_it_covers_and_lands_on_its_end(setup):
    """At v4 (an update v3->v4 came in while the robot asked): the catch-up v3->v6 the server
    answered with still applies and gives exactly v6's weights; a plain update v3->v6 does not."""
    from ams_ros.core.wire.encodings import encode_catch_up

    m, holder, n = setup
    target = copy.deepcopy(m)
    idx = np.arange(0, n, 5, dtype=np.int64)  # every coordinate changed in v4..v6 (a superset of v4's)
    with torch.no_grad():
        FlatAccessor(target).write(idx, (flatten_params(m).numpy()[idx] - 0.02).astype(np.float32))
    with pytest.raises(VersionGapError):
        check_version_step(encode_update(target, idx, flatten_params(target).numpy()[idx], 3, 6), 4, max_span=64)
    catch_up = encode_catch_up(target, idx, 3, 6)
    assert holder.apply_update(catch_up) == 6
    got = flatten_params(holder.active).numpy()
    want = flatten_params(target).numpy()
    assert np.allclose(got[idx], want[idx].astype(np.float16).astype(np.float32))
    with pytest.raises(StaleUpdateError):  # and played again at v6: already there
        holder.apply_update(catch_up)


def test_snapshot_not_newer_than_the_running_version_is_rejected(setup):
    m, holder, n = setup
    for v in (2, 4):  # older (a replay) and the same version
        assert_rejected_untouched(holder, encode_snapshot(m, v), "not newer")
    assert holder.apply_update(encode_snapshot(m, 5)) == 5


def test_a_fresh_robot_takes_a_snapshot_of_its_own_start_version():
    m = net()
    holder = DoubleBufferedModel(copy.deepcopy(m), version=0)
    assert holder.apply_update(encode_snapshot(m, 0)) == 0 and holder.synced
    with pytest.raises(StaleUpdateError):
        holder.apply_update(encode_snapshot(m, 0))


def test_a_failing_write_restores_the_inactive_copy(setup, monkeypatch):
    m, holder, n = setup
    u = encode_update(m, np.arange(0, n, 3), np.zeros(len(range(0, n, 3)), np.float32), 4, 5)
    real = FlatAccessor.write

    def half_then_fail(self, idx, vals):
        real(self, idx[: idx.size // 2], vals[: idx.size // 2])
        raise IndexError("simulated")

    active_before = hashlib.sha256(flatten_params(holder.active).numpy().tobytes()).hexdigest()
    monkeypatch.setattr(FlatAccessor, "write", half_then_fail)
    with pytest.raises(UpdateError, match="writing the update failed"):
        holder.apply_update(u)
    monkeypatch.undo()
    a, b = holder.copies()
    assert holder.version == 4
    assert hashlib.sha256(flatten_params(a).numpy().tobytes()).hexdigest() == active_before
    assert torch.equal(flatten_params(a), flatten_params(b))  # the inactive copy is the active one again
    assert holder.apply_update(u) == 5


def test_only_an_update_marked_catch_up_may_span_several_versions(setup):
    from ams_ros.core.wire.encodings import encode_catch_up

    m, holder, n = setup
    target = copy.deepcopy(holder.active)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.01)
    cu = encode_catch_up(target, np.arange(0, n, 4), 4, 7)
    plain = copy.copy(cu)
    plain.catch_up = False
    plain.checksum = plain.compute_checksum()
    assert_rejected_untouched(holder, plain, "must move the version to v5")
    far = encode_catch_up(target, np.arange(0, n, 4), 4, 4 + holder.max_catch_up_span + 1)
    assert_rejected_untouched(holder, far, "must move the version")
    assert holder.apply_update(cu) == 7
