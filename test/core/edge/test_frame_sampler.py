"""Edge sampling by stamp at the commanded rate, one batch per update period."""

import numpy as np
import pytest

from ams_ros.core.edge.frame_sampler import FrameSampler


def frames(n, fps, h=32, w=64):
    for i in range(n):
        yield i / fps, np.full((h, w, 3), i % 255, np.uint8)


def test_samples_at_rate_and_closes_batch_per_period():
    s = FrameSampler(sampling_rate=1.0, update_period=10.0)
    batches = [b for t, f in frames(30 * 25, 30) if (b := s.offer(t, f)) is not None]
    assert len(batches) == 2
    b = batches[0]
    assert b.seq == 0 and batches[1].seq == 1
    assert len(b.frames) == 10
    assert np.allclose(np.diff(b.timestamps), 1.0)
    assert b.timestamps[0] == 0.0
    assert batches[1].timestamps[0] == pytest.approx(10.0)


def test_command_changes_rate_and_period_from_next_frame():
    s = FrameSampler(sampling_rate=1.0, update_period=10.0)
    out = []
    for t, f in frames(30 * 5, 30):
        if (b := s.offer(t, f)) is not None:
            out.append(b)
    s.command(sampling_rate=0.25, update_period=20.0)
    for i in range(30 * 5, 30 * 40):
        if (b := s.offer(i / 30, np.zeros((4, 4, 3), np.uint8))) is not None:
            out.append(b)
    assert len(out) == 1
    b = out[0]
    assert b.update_period == 20.0 and b.sampling_rate == 0.25
    gaps = np.diff(b.timestamps)
    assert np.allclose(gaps[gaps > 1.5], 4.0)  # after the command, one frame every 4 s


def test_resizes_to_training_size_and_rejects_bad_commands():
    s = FrameSampler(sampling_rate=2.0, update_period=1.0, size=(16, 8))
    b = None
    for t, f in frames(40, 10):
        b = s.offer(t, f) or b
    assert b is not None and b.frames[0].shape == (8, 16, 3)
    with pytest.raises(ValueError):
        s.command(sampling_rate=0.0)
    with pytest.raises(ValueError):
        s.command(update_period=float("nan"))


def test_flush_returns_partial_batch_once():
    s = FrameSampler(sampling_rate=1.0, update_period=100.0)
    for t, f in frames(90, 30):
        assert s.offer(t, f) is None
    b = s.flush()
    assert b is not None and len(b.frames) == 3
    assert s.flush() is None


def test_a_first_period_closes_the_first_batch_early_and_later_ones_every_period():
    s = FrameSampler(sampling_rate=1.0, update_period=10.0, first_period=3.0)
    batches = [b for t, f in frames(30 * 25, 30) if (b := s.offer(t, f)) is not None]
    assert [b.timestamps[0] for b in batches] == [0.0, pytest.approx(3.0), pytest.approx(13.0)]
    assert [len(b.frames) for b in batches] == [3, 10, 10]


def test_shift_period_moves_the_batch_being_buffered_once():
    s = FrameSampler(sampling_rate=1.0, update_period=10.0)
    out = []
    for t, f in frames(30 * 35, 30):
        if t == 5.0:
            s.shift_period(3.0)  # the batch being buffered (0..10 s) closes at 13 s instead
        if (b := s.offer(t, f)) is not None:
            out.append(b.timestamps[0])
    assert out == [0.0, pytest.approx(13.0), pytest.approx(23.0)]


def test_a_shift_to_a_time_already_past_closes_the_batch_at_the_next_frame():
    s = FrameSampler(sampling_rate=1.0, update_period=10.0)
    closed = []
    for t, f in frames(30 * 12, 30):
        if t == 6.0:
            s.shift_period(-5.0)  # 5 s was already past
        if (b := s.offer(t, f)) is not None:
            closed.append((b.timestamps[0], b.timestamps[-1]))
    assert closed == [(0.0, pytest.approx(5.0))]  # closed at the 6 s frame, which starts the next batch
    with pytest.raises(ValueError, match="finite"):
        s.shift_period(float("nan"))
