"""Frame batches from the network (issue #13): what a batch declares (frame count, frame size) is
checked against the server's limits before anything is decoded, decoding stops at the declared
count, and an H.264 "bomb" (a tiny batch that decodes to hundreds of large frames) is rejected
quickly without its decoded size in memory."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from ams_ros.core.wire.frame_codec import BatchLimits, FrameCodecError, decode_frames, encode_frames
from ams_ros.core.server.session import RobotSession
from ams_ros.fuzz.batches import solid_h264


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = solid_h264(600, 1280, 720)
    assert len(data) < 120_000  # 600 HD frames (1.6 GB as RGB) in a small batch
    return data


def test_h264_bomb_declaring_ten_small_frames_is_rejected_fast_with_bounded_memory(bomb):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FrameCodecError, match="1280x720"):
            decode_frames(bomb, "h264", 256, 128, expected_frames=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 50 << 20  # numpy/python allocations: not one decoded HD frame converted


def test_bomb_of_the_declared_size_stops_at_the_declared_count():
    data = solid_h264(300, 256, 128)
    t0 = time.perf_counter()
    with pytest.raises(FrameCodecError, match="more than the 10 frames"):
        decode_frames(data, "h264", 256, 128, expected_frames=10)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("frames,w,h,reason", [
    (601, 64, 32, "max_batch_frames"), (0, 64, 32, "no frames"), (4, 3840, 2160, "max_frame_pixels"),
    (4, 0, 32, "empty frame size"),
])
def test_declared_count_and_size_beyond_the_limits_are_rejected_before_decoding(frames, w, h, reason):
    with pytest.raises(FrameCodecError, match=reason):  # the bytes are never looked at
        decode_frames(b"\x00not a video", "h264", w, h, expected_frames=frames)


def test_batch_decoding_to_fewer_or_other_sized_frames_than_declared_is_rejected():
    frames = [np.full((32, 64, 3), 100, np.uint8)] * 4
    enc = encode_frames(frames, [0.0, 1.0, 2.0, 3.0])
    assert len(decode_frames(enc.data, "h264", 64, 32, expected_frames=4)) == 4
    with pytest.raises(FrameCodecError, match="declares 32x64"):
        decode_frames(enc.data, "h264", 32, 64, expected_frames=4)
    jp = encode_frames(frames, [0.0, 1.0, 2.0, 3.0], codec="jpeg")
    with pytest.raises(FrameCodecError, match="more than the 3 frames"):
        decode_frames(jp.data, "jpeg", 64, 32, expected_frames=3)
    with pytest.raises(FrameCodecError, match="declares 60x32"):
        decode_frames(jp.data, "jpeg", 60, 32, expected_frames=4)


def test_session_rejects_a_bomb_and_labels_nothing(bomb):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    session = RobotSession("r", net)
    labelled = []
    with pytest.raises(FrameCodecError):
        session.add_encoded_batch(bomb, "h264", 256, 128, [float(t) for t in range(10)],
                                  lambda f, s: labelled.append(f) or [np.zeros((128, 256), np.uint8)] * len(f),
                                  limits=BatchLimits())
    assert not labelled and session.new_samples == 0


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_frames"):
        BatchLimits(0, 10)
