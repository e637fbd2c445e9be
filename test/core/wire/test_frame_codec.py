"""Video frame batches (H.264, and H.265 / AV1 of issue #10): near the bitrate budget, faithful,
timestamps kept, garbage and a stream of another codec rejected."""

import numpy as np
import pytest

from ams_ros.core.wire.frame_codec import FrameCodecError, batch_checksum, decode_frames, encode_frames
from ams_ros.core.sources.synthetic import SyntheticWorld


def psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


@pytest.fixture(scope="module")
def clip():
    world = SyntheticWorld(seed=1, width=512, height=256)
    stamps = [float(t) for t in range(10)]
    return [world.frame_at(t)[0] for t in stamps], stamps


def test_ten_frames_fit_the_200kbps_budget_and_decode_faithfully(clip):
    frames, stamps = clip
    enc = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0)
    budget = 200_000 / 8 * 10
    assert 0 < len(enc.data) <= 1.3 * budget
    assert enc.timestamps == stamps and enc.num_frames == 10
    dec = decode_frames(enc.data, enc.codec, enc.width, enc.height)
    assert len(dec) == 10 and dec[0].shape == (256, 512, 3)
    assert min(psnr(a, b) for a, b in zip(frames, dec)) > 25.0


def test_lower_bitrate_gives_smaller_batches(clip):
    frames, stamps = clip
    hi = encode_frames(frames, stamps, bitrate_bps=400_000, period_s=10.0)
    lo = encode_frames(frames, stamps, bitrate_bps=25_000, period_s=10.0)
    assert len(lo.data) < len(hi.data)


def test_odd_sizes_and_jpeg(clip):
    frames = [f[:101, :203] for f in clip[0][:3]]
    enc = encode_frames(frames, [0.0, 1.0, 2.0])
    dec = decode_frames(enc.data, "h264", 203, 101)
    assert dec[0].shape == (101, 203, 3)
    jp = encode_frames(frames, [0.0, 1.0, 2.0], codec="jpeg")
    assert min(psnr(a, b) for a, b in zip(frames, decode_frames(jp.data, "jpeg", 203, 101))) > 30


@pytest.mark.parametrize("mangle", [lambda d: np.random.default_rng(0).bytes(4000), lambda d: d[: len(d) // 2],
                                    lambda d: b"", lambda d: d[:40]])
def test_garbage_and_truncated_bytes_raise_clear_error(clip, mangle):
    frames, stamps = clip
    enc = encode_frames(frames[:4], stamps[:4])
    with pytest.raises(FrameCodecError):
        decode_frames(mangle(enc.data), "h264", 512, 256)


@pytest.mark.parametrize("codec", ["h265", "av1"])
def test_h265_and_av1_batches_fit_the_budget_and_decode_faithfully(clip, codec):
    frames, stamps = clip
    enc = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0, codec=codec)
    assert enc.codec == codec and 0 < len(enc.data) <= 1.3 * 200_000 / 8 * 10
    dec = decode_frames(enc.data, codec, enc.width, enc.height, expected_frames=10)
    assert len(dec) == 10 and dec[0].shape == (256, 512, 3)
    assert min(psnr(a, b) for a, b in zip(frames, dec)) > 25.0


@pytest.mark.parametrize("codec", ["h265", "av1"])
def test_small_and_odd_frames_are_padded_for_h265_and_av1_and_cropped_back(clip, codec):
    """x265 corrupts its heap on frames under 64x64 and SVT-AV1 refuses them: the codec pads."""
    frames = [f[:25, :49] for f in clip[0][:3]]
    enc = encode_frames(frames, [0.0, 1.0, 2.0], codec=codec)
    dec = decode_frames(enc.data, codec, 49, 25)
    assert [d.shape for d in dec] == [(25, 49, 3)] * 3
    assert min(psnr(a, b) for a, b in zip(frames, dec)) > 22.0


def test_a_stream_of_another_codec_than_declared_is_rejected(clip):
    frames, stamps = clip
    enc = encode_frames(frames[:3], stamps[:3])
    with pytest.raises(FrameCodecError, match="declares H.265 but holds a 'h264' stream"):
        decode_frames(enc.data, "h265", 512, 256)
    av1 = encode_frames(frames[:3], stamps[:3], codec="av1")
    with pytest.raises(FrameCodecError, match="declares H.264 but holds"):
        decode_frames(av1.data, "h264", 512, 256)


def test_unknown_codec_and_mismatched_inputs():
    f = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(FrameCodecError, match="unknown frame codec"):
        encode_frames(f, [0.0], codec="vp99")
    with pytest.raises(FrameCodecError, match="timestamps"):
        encode_frames(f, [0.0, 1.0])


def test_batch_checksum_covers_every_field_it_names():
    stamps = [0, 1_000_000_000, 2_000_000_001]
    base = batch_checksum("h264", 64, 32, stamps, b"abcdef")
    assert base == batch_checksum("h264", 64, 32, list(stamps), bytearray(b"abcdef"))  # deterministic
    variants = [
        batch_checksum("jpeg", 64, 32, stamps, b"abcdef"),
        batch_checksum("h264", 66, 32, stamps, b"abcdef"),
        batch_checksum("h264", 64, 34, stamps, b"abcdef"),
        batch_checksum("h264", 64, 32, [0, 1_000_000_000, 2_000_000_002], b"abcdef"),  # 1 ns
        batch_checksum("h264", 64, 32, stamps[:2], b"abcdef"),
        batch_checksum("h264", 64, 32, stamps, b"abcdeg"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_an_av1_encode_leaves_the_callers_scheduling_as_it_was():
    """SVT-AV1, run as root, switches the thread that opens it to SCHED_FIFO 99; encode_frames puts
    it back, so processes the robot starts later are not real-time either."""
    import os

    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    frames = [np.full((48, 96, 3), 60 * i, np.uint8) for i in range(3)]
    encode_frames(frames, [0.0, 0.2, 0.4], codec="av1")
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


def test_the_scheduling_guard_restores_a_policy_changed_inside_it():
    """The guard itself, without root: a change made inside it (here to SCHED_BATCH, which any user
    may choose) is undone when it ends."""
    import os

    from ams_ros.core.wire.frame_codec import _scheduling_kept

    before = os.sched_getscheduler(0)
    with _scheduling_kept():
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        assert os.sched_getscheduler(0) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before
