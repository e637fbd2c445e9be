"""Sparse update encodings, verification and the edge's double buffer."""

from __future__ import annotations

import copy
import threading
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from small_inputs import small_net  # noqa: E402
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.models.params import FlatAccessor, flatten_params, fingerprint, param_layout
from ams_ros.core.wire.encodings import ENCODINGS, decode_update, encode_snapshot, encode_update, quantize_roundtrip
from ams_ros.core.wire.update import UpdateError, VersionGapError
from ams_ros.core.wire.index_coding import varint_decode, varint_encode


def param_offsets(model: nn.Module) -> list[int]:
    return [s.offset for s in param_layout(model)]



def sparse(model: nn.Module, frac: float = 0.05, seed: int = 0):
    n = flatten_params(model).numel()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max(1, int(n * frac)), replace=False))
    vals = (flatten_params(model).numpy()[idx] + rng.normal(0, 0.01, idx.size)).astype(np.float32)
    return idx, vals


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    m = small_net()
    idx, vals = sparse(m, 0.2)
    base = flatten_params(m).numpy()[idx] if ENCODINGS[encoding].residual else None
    upd = encode_update(m, idx, vals, 3, 4, encoding, base_values=base)
    got_idx, got_vals = decode_update(upd, m)  # m holds the base version
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_vals, quantize_roundtrip(encoding, m, idx, vals, base_values=base))
    enc = ENCODINGS[encoding]
    if enc.values == "ternary":  # each tensor moves by +-mu, mu its mean |change|, in the change's direction
        change, moved = vals - base, got_vals - base
        assert np.all(np.sign(moved) == np.where(change > 0, 1, -1))
        for lo, hi in zip(param_offsets(m), param_offsets(m)[1:] + [flatten_params(m).numel()]):
            sel = (idx >= lo) & (idx < hi)
            if sel.any():
                np.testing.assert_allclose(np.abs(moved[sel]), np.mean(np.abs(change[sel])), rtol=1e-4, atol=1e-6)
        return
    spread = np.ptp(vals - base) if base is not None else np.ptp(vals)
    bound = 1e-3 if enc.values == "fp16" else spread / ((1 << enc.bits) - 1)
    assert np.max(np.abs(got_vals - vals)) <= bound + 1e-6


def test_wrong_architecture_rejected_and_model_untouched():
    m, other = small_net(8), small_net(6)
    idx, vals = sparse(m)
    upd = encode_update(m, idx, vals, 0, 1)
    holder = DoubleBufferedModel(other)
    before = flatten_params(holder.active).clone()
    with pytest.raises(UpdateError, match="architecture"):
        holder.apply_update(upd)
    assert torch.equal(before, flatten_params(holder.active)) and holder.version == 0


@pytest.mark.parametrize("field,mutate,reason", [
    ("values_blob", lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:], "checksum"),
    ("indices_blob", lambda b: b[: len(b) // 2], "checksum"),
])
def test_corruption_rejected(field, mutate, reason):
    m = small_net()
    idx, vals = sparse(m)
    upd = encode_update(m, idx, vals, 0, 1)
    setattr(upd, field, mutate(getattr(upd, field)))
    holder = DoubleBufferedModel(copy.deepcopy(m))
    before = flatten_params(holder.active).clone()
    with pytest.raises(UpdateError, match=reason):
        holder.apply_update(upd)
    assert torch.equal(before, flatten_params(holder.active))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_truncated_payload_with_valid_checksum_rejected(encoding):
    m = small_net()
    idx, vals = sparse(m)
    base = flatten_params(m).numpy()[idx] if ENCODINGS[encoding].residual else None
    upd = encode_update(m, idx, vals, 0, 1, encoding, base_values=base)
    upd.values_blob = upd.values_blob[: len(upd.values_blob) // 2]
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError):
        decode_update(upd, m)


@pytest.mark.parametrize("encoding,blob", [("paper_gzip_fp16", "values_blob"), ("paper_gzip_fp16", "indices_blob"),
                                           ("delta_lzma_fp16", "values_blob"), ("residual_lzma_q8", "values_blob"),
                                           ("delta_lzma_q8", "indices_blob"), ("residual_zlib_q6", "values_blob"),
                                           ("residual_zlib_q6", "indices_blob"), ("residual_zstd_q3", "values_blob"),
                                           ("residual_zstd_ternary", "indices_blob")])
def test_payload_inflating_past_its_header_is_refused_without_inflating_it(encoding, blob):
    """A "zip bomb" with a valid checksum: 256 MiB of zeros in a few hundred KB must not be
    inflated (the LZMA decoder's own dictionary, 64 MiB at the encoder's preset, is the most)."""
    import gzip
    import lzma
    import tracemalloc

    m = small_net()
    idx, vals = sparse(m)
    base = flatten_params(m).numpy()[idx] if ENCODINGS[encoding].residual else None
    upd = encode_update(m, idx, vals, 0, 1, encoding, base_values=base)
    bomb = bytes(256 << 20)
    if encoding.startswith("paper"):
        packed = gzip.compress(bomb, mtime=0)
    elif "zstd" in encoding:
        import zstandard

        packed = zstandard.ZstdCompressor(level=3).compress(bomb)
    else:
        packed = zlib.compress(bomb, 9) if "zlib" in encoding else lzma.compress(bomb, preset=9)
    del bomb
    assert len(packed) < 400_000
    setattr(upd, blob, packed)
    upd.checksum = upd.compute_checksum()
    tracemalloc.start()
    try:
        with pytest.raises(UpdateError, match="inflates past"):
            decode_update(upd, m)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 << 20, peak  # never held the 256 MiB


def test_lzma_stream_asking_for_a_huge_dictionary_is_refused():
    import lzma

    m = small_net()
    idx, vals = sparse(m)
    upd = encode_update(m, idx, vals, 0, 1, "delta_lzma_fp16")
    raw = lzma.decompress(upd.values_blob)
    upd.values_blob = lzma.compress(raw, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 30}])
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError, match="lzma"):
        decode_update(upd, m)


def test_nan_values_and_size_mismatches_rejected():
    m = small_net()
    idx, vals = sparse(m)
    vals[1] = np.nan
    with pytest.raises(UpdateError, match="non-finite"):
        decode_update(encode_update(m, idx, vals, 0, 1), m)
    idx, vals = sparse(m)
    upd = encode_update(m, idx, vals, 0, 1)
    upd.num_params += 1
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError, match="parameters"):
        decode_update(upd, m)
    upd = encode_update(m, idx, vals, 0, 1)
    upd.num_selected += 1
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError):
        decode_update(upd, m)
    upd = encode_update(m, idx, vals, 0, 1)
    upd.encoding = "zip_of_dreams"
    with pytest.raises(UpdateError, match="unknown update encoding"):
        decode_update(upd, m)


def test_version_chain_and_snapshot():
    m = small_net()
    holder = DoubleBufferedModel(copy.deepcopy(m), version=2)
    idx, vals = sparse(m)
    with pytest.raises(VersionGapError):
        holder.apply_update(encode_update(m, idx, vals, 5, 6))
    assert holder.version == 2
    assert holder.apply_update(encode_update(m, idx, vals, 2, 3)) == 3
    target = copy.deepcopy(m)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.5)
    snap = encode_snapshot(target, 9)
    assert holder.apply_update(snap) == 9
    np.testing.assert_allclose(flatten_params(holder.active), flatten_params(target).half().float())


def test_both_copies_stay_identical_over_many_updates():
    m = small_net()
    holder = DoubleBufferedModel(copy.deepcopy(m))
    ref = copy.deepcopy(m)
    for v in range(6):
        idx, vals = sparse(m, 0.1, seed=v)
        upd = encode_update(m, idx, vals, v, v + 1, "delta_lzma_q8")
        holder.apply_update(upd)
        from ams_ros.core.models.params import write_flat

        write_flat(ref, idx, quantize_roundtrip("delta_lzma_q8", m, idx, vals))
        assert torch.equal(flatten_params(holder.active), flatten_params(ref))
    # the swapped-out copy catches up before it is written again
    idx, vals = sparse(m, 0.1, seed=99)
    holder.apply_update(encode_update(m, idx, vals, 6, 7, "delta_lzma_fp16"))
    write_flat(ref, idx, quantize_roundtrip("delta_lzma_fp16", m, idx, vals))
    assert torch.equal(flatten_params(holder.active), flatten_params(ref))


def test_readers_never_see_a_half_written_model():
    """Each version sets every parameter to one constant; a reader checks all-equal."""
    m = small_net()
    n = flatten_params(m).numel()
    holder = DoubleBufferedModel(copy.deepcopy(m))
    idx = np.arange(n)
    initial = flatten_params(m)
    stop = threading.Event()
    bad: list[str] = []
    seen: set[float] = set()

    def reader():
        while not stop.is_set():
            with holder.use() as net:
                flat = flatten_params(net)
                if torch.equal(flat, initial):
                    continue
                if not bool(torch.all(flat == flat[0])):
                    bad.append(f"mixed model near v{holder.version}")
                seen.add(float(flat[0]))

    t = threading.Thread(target=reader)
    t.start()
    for v in range(40):
        holder.apply_update(encode_update(m, idx, np.full(n, float(v + 1), np.float32), v, v + 1, "delta_lzma_fp16"))
    stop.set()
    t.join()
    assert not bad, bad[:3]
    assert len(seen) > 1  # the reader really ran across swaps
    assert float(flatten_params(holder.active)[0]) == 40.0


def test_better_encoding_smaller_than_paper_on_trained_like_values():
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Conv2d(64, 64, 3) for _ in range(8)])  # ~300k params
    flat = flatten_params(m).numpy()
    rng = np.random.default_rng(0)
    k = int(flat.size * 0.05)
    idx = np.sort(np.argsort(-np.abs(rng.normal(size=flat.size) * np.repeat(rng.random(8 * 64), flat.size // 512 + 1)[: flat.size]))[:k])
    vals = flat[idx] + rng.normal(0, 1e-3, k).astype(np.float32)
    paper = encode_update(m, idx, vals, 0, 1, "paper_gzip_fp16").wire_bytes
    best = encode_update(m, idx, vals, 0, 1, "delta_lzma_q8").wire_bytes
    assert best < 0.75 * paper, (best, paper)
    residual = encode_update(m, idx, vals, 0, 1, "residual_lzma_q8", base_values=flat[idx]).wire_bytes
    assert residual < best, (residual, best)
    q6 = encode_update(m, idx, vals, 0, 1, "residual_lzma_q6", base_values=flat[idx]).wire_bytes
    assert q6 < residual, (q6, residual)
    q6z = encode_update(m, idx, vals, 0, 1, "residual_zlib_q6", base_values=flat[idx]).wire_bytes
    assert q6 <= q6z < 0.75 * paper, (q6, q6z, paper)  # zlib trades a little size for decode speed


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 1001])
def test_six_bit_packing_keeps_the_wire_format(count):
    """The shift-based 6-bit packer writes exactly the MSB-first bit stream of the generic one
    (what residual_lzma_q6 updates always carried), and reads it back."""
    from ams_ros.core.wire.quantize import pack_bits, unpack_bits

    q = np.random.default_rng(count).integers(0, 64, count).astype(np.uint8)
    generic = np.packbits(np.unpackbits(q[:, None], axis=1)[:, 2:].reshape(-1)).tobytes()
    assert pack_bits(q, 6) == generic
    np.testing.assert_array_equal(unpack_bits(generic, count, 6), q)


@pytest.mark.parametrize("encoding", ["residual_lzma_q8", "residual_lzma_q6", "residual_zlib_q6"])
def test_residual_updates_keep_edge_and_server_identical(encoding):
    from ams_ros.core.models.params import write_flat

    server = small_net()
    edge = DoubleBufferedModel(copy.deepcopy(server))
    rng = np.random.default_rng(1)
    for v in range(5):
        idx, _ = sparse(server, 0.1, seed=v)
        base = flatten_params(server).numpy()[idx]
        new = base + rng.normal(0, 0.01, idx.size).astype(np.float32)
        write_flat(server, idx, quantize_roundtrip(encoding, server, idx, new, base_values=base))
        edge.apply_update(encode_update(server, idx, new, v, v + 1, encoding, base_values=base))
        assert torch.equal(flatten_params(edge.active), flatten_params(server))
    with pytest.raises(ValueError, match="base_values"):
        encode_update(server, idx, new, 5, 6, encoding)


def test_update_fingerprint_matches_model():
    # signing moved to ams_ros.core.security.signing (Ed25519, test/core/security/test_signing.py); the shared HMAC is gone
    m = small_net()
    idx, vals = sparse(m)
    upd = encode_update(m, idx, vals, 0, 1)
    assert fingerprint(m) == upd.fingerprint and upd.signature == b"" and upd.signer_key_id == ""


@pytest.mark.parametrize("stage", ["decode_update", "write"])
def test_inference_is_handed_the_active_model_while_a_patch_is_half_done(monkeypatch, stage):
    """The structural half of "swaps never stall inference": while the patcher is stopped in the
    middle of an update (decoding it, or writing the inactive copy), inference still gets the
    active model at once, at the old version; the swap happens after."""
    import ams_ros.core.edge.double_buffer as db

    m = small_net()
    holder = DoubleBufferedModel(copy.deepcopy(m))
    inside, release = threading.Event(), threading.Event()

    def paused(real):
        def wrapper(*args, **kwargs):
            inside.set()
            assert release.wait(20)
            return real(*args, **kwargs)
        return wrapper

    if stage == "decode_update":
        monkeypatch.setattr(db, "decode_update", paused(db.decode_update))
    else:
        monkeypatch.setattr(FlatAccessor, "write", paused(FlatAccessor.write))
    idx, vals = sparse(m)
    patcher = threading.Thread(target=holder.apply_update, args=(encode_update(m, idx, vals, 0, 1),))
    patcher.start()
    assert inside.wait(20)
    got: list = []

    def infer() -> None:
        with holder.use() as net:
            got.append((net is holder.active, holder.version))

    reader = threading.Thread(target=infer)
    reader.start()
    reader.join(5.0)
    handed_over = not reader.is_alive()
    release.set()
    patcher.join(20)
    reader.join(20)
    assert handed_over, "inference waited for the patch"
    assert got == [(True, 0)]
    assert holder.version == 1


@pytest.mark.parametrize("mutate,reason", [
    (lambda blob: blob + b"\x00\x01", "unused data"),  # trailing bytes after the frame
    (lambda blob: blob + blob, "unused data"),  # a second frame
    (lambda blob: blob[:-4], "corrupted or truncated"),
])
def test_zstd_streams_must_be_exactly_one_whole_frame(mutate, reason):
    m = small_net()
    idx, vals = sparse(m)
    base = flatten_params(m).numpy()[idx]
    upd = encode_update(m, idx, vals, 0, 1, "residual_zstd_ternary", base_values=base)
    upd.values_blob = mutate(upd.values_blob)
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError, match=reason):
        decode_update(upd, m)


def test_zstd_frame_that_hides_its_size_is_refused():
    """Streaming zstd frames need not declare their size; ours always do, so one that does not
    (and could inflate to anything) is refused before inflating."""
    import io

    import zstandard

    m = small_net()
    idx, vals = sparse(m)
    base = flatten_params(m).numpy()[idx]
    upd = encode_update(m, idx, vals, 0, 1, "residual_zstd_q4", base_values=base)
    sink = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False) as w:
        w.write(bytes(1000))
    upd.values_blob = sink.getvalue()
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError, match="content size"):
        decode_update(upd, m)


@pytest.mark.parametrize("encoding", ["residual_zstd_q4", "residual_zstd_q2"])
def test_quantised_symbols_past_their_width_are_refused(encoding):
    import struct

    import zstandard

    m = small_net()
    idx, vals = sparse(m)
    base = flatten_params(m).numpy()[idx]
    upd = encode_update(m, idx, vals, 0, 1, encoding, base_values=base)
    raw = bytearray(zstandard.ZstdDecompressor().decompress(upd.values_blob))
    (nslots,) = struct.unpack_from("<I", raw, 0)
    raw[4 + 12 * nslots] = 1 << ENCODINGS[encoding].bits
    upd.values_blob = zstandard.ZstdCompressor().compress(bytes(raw))
    upd.checksum = upd.compute_checksum()
    with pytest.raises(UpdateError, match="symbol past"):
        decode_update(upd, m)


def test_flat_storage_reads_and_writes_match_per_tensor_ones_and_survive_a_replaced_tensor():
    """The edge's copies live in one flat buffer (one index_copy_ per update); a parameter whose
    tensor was replaced afterwards (``.data = ...``, as ``model.to`` does) sends the accessor
    back to per-tensor writes instead of writing into a buffer the model no longer uses."""
    m = small_net()
    plain, flat_model = copy.deepcopy(m), copy.deepcopy(m)
    fa = FlatAccessor(flat_model, flatten=True)
    params = list(flat_model.parameters())
    assert all(p.untyped_storage().data_ptr() == params[0].untyped_storage().data_ptr() for p in params)
    idx, vals = sparse(m, 0.3)
    FlatAccessor(plain).write(idx, vals)
    fa.write(idx, vals)
    assert torch.equal(flatten_params(plain), flatten_params(flat_model))
    np.testing.assert_array_equal(fa.read(idx), vals)
    params[0].data = params[0].data.clone()  # no longer a view of the flat buffer
    idx2, vals2 = sparse(m, 0.3, seed=1)
    FlatAccessor(plain).write(idx2, vals2)
    fa.write(idx2, vals2)
    assert torch.equal(flatten_params(plain), flatten_params(flat_model))
    np.testing.assert_array_equal(fa.read(idx2), vals2)


@pytest.mark.parametrize("values", [
    [0, 1, 127],                                  # one byte each
    [128, 1, 300, 2, 16383, 16384, 5],            # one- and multi-byte values mixed
    [2**63 - 1, 0, 2**35 + 7, 1],                 # the longest int64 gaps
], ids=["one_byte", "mixed", "long"])
def test_gap_varints_decode_to_what_was_encoded(values):
    v = np.array(values, dtype=np.uint64)
    assert np.array_equal(varint_decode(varint_encode(v), v.size).view(np.uint64), v)
    rng = np.random.default_rng(1)  # a 5 % selection's gaps: mostly one byte, a tail of longer ones
    gaps = np.concatenate([rng.geometric(0.05, 20000), rng.integers(1, 2**40, 50)]).astype(np.uint64)
    rng.shuffle(gaps)
    assert np.array_equal(varint_decode(varint_encode(gaps), gaps.size).view(np.uint64), gaps)


def test_a_gap_varint_longer_than_an_int64_is_refused():
    blob = bytes([0x05]) + bytes([0xFF] * 9) + bytes([0x01])  # 10 bytes: past int64's 9 groups of 7 bits
    with pytest.raises(UpdateError, match="over-long varint"):
        varint_decode(blob, 2)
