"""Teacher labels worth learning from (issue #29): frames with no picture are left out, a batch with
no labelled pixel or one class where the robot's scene was varied is refused (not trained on, not
fed to the rate control, counted and said why), and a scene that really became one class is
trained on again once enough one-class batches in a row say so."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import load_student
from ams_ros.core.server.label_checks import LabelCheckConfig, LabelChecks, frame_has_picture, top_class_share
from ams_ros.core.server.session import RobotSession, SessionConfig
from ams_ros.core.server.session_store import SessionStore
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.wire.frame_codec import encode_frames

RNG = np.random.default_rng(0)


def picture(h: int = 16, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def varied(h: int = 16, w: int = 32) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[:, w // 3:] = 1
    lab[h // 2:, 2 * w // 3:] = 2
    return lab


def one_class(c: int = 0, h: int = 16, w: int = 32) -> np.ndarray:
    return np.full((h, w), c, np.uint8)


def test_a_black_or_flat_frame_carries_no_picture_and_a_real_one_does():
    assert not frame_has_picture(np.zeros((16, 32, 3), np.uint8), 3.0)
    assert not frame_has_picture(np.full((16, 32, 3), 200, np.uint8) + RNG.integers(0, 2, (16, 32, 3), dtype=np.uint8), 3.0)
    assert frame_has_picture(picture(), 3.0)
    assert frame_has_picture(np.zeros((16, 32, 3), np.uint8), 0.0)  # 0 = the check is off


def test_top_class_share_counts_labelled_pixels_only():
    lab = one_class(1)
    lab[:, :8] = 255  # a quarter ignored
    lab[0, 8:12] = 2
    assert top_class_share([lab], 255) == pytest.approx((24 * 16 - 4) / (24 * 16))
    assert np.isnan(top_class_share([np.full((4, 4), 255, np.uint8)], 255))


def test_dark_frames_are_left_out_and_the_rest_of_their_batch_kept():
    checks = LabelChecks()
    frames = [picture(), np.zeros((16, 32, 3), np.uint8), picture()]
    v = checks.check(frames, [varied()] * 3)
    assert v.keep == [0, 2] and not v.refused
    assert v.reason == "1 of 3 frames carry no picture (pixel std below 3: a covered lens or black frames)"
    v = checks.check([np.zeros((16, 32, 3), np.uint8)] * 2, [varied()] * 2)
    assert v.refused and v.reason.startswith("2 of 2 frames carry no picture")


def test_a_batch_without_one_labelled_pixel_is_refused():
    v = LabelChecks().check([picture()], [np.full((16, 32), 255, np.uint8)])
    assert v.refused and "the teacher labelled no pixel" in v.reason


def test_one_class_after_varied_batches_is_refused_until_enough_in_a_row_say_the_scene_is_one_class():
    checks = LabelChecks(LabelCheckConfig(one_class_batches=3))
    assert checks.check([picture()], [one_class()]).keep == [0]  # one class from the start: nothing says it is wrong
    assert checks.check([picture()], [varied()]).keep == [0]
    verdicts = [checks.check([picture()], [one_class(2)]) for _ in range(5)]
    assert [v.refused for v in verdicts] == [True, True, True, False, False]  # the 4th in a row: the scene is so
    assert verdicts[0].reason == ("100.0 % of the teacher's labels are one class after varied batches (one-class batch "
                                  "1 in a row; trained on from the 4th: one_class_share 0.97, one_class_batches 3)")
    assert checks.check([picture()], [varied()]).keep == [0]
    assert checks.check([picture()], [one_class(1)]).refused  # a varied batch starts the count again
    off = LabelChecks(LabelCheckConfig(one_class_share=1.0))
    assert off.check([picture()], [varied()]).keep == [0]
    assert not off.check([picture()], [one_class()]).refused  # 1.0 = off, even for labels all of one class


def test_bad_label_check_settings_name_the_value():
    with pytest.raises(ValueError, match=r"one_class_share must be in \(0.5, 1\] \(1.0 = off\), got 0.3"):
        LabelCheckConfig(one_class_share=0.3)
    with pytest.raises(ValueError, match="min_frame_std is a pixel standard deviation on 0-255"):
        LabelCheckConfig(min_frame_std=-1)
    with pytest.raises(ValueError, match="one_class_batches must be >= 1, got 0"):
        LabelCheckConfig(one_class_batches=0)


@pytest.fixture(scope="module")
def student():
    return load_student("deeplabv3_mobilenet_v2", len(get_label_space("synthetic").class_names), weights=None)


def _batch(frames: list[np.ndarray], t0: float):
    stamps = [t0 + i for i in range(len(frames))]
    enc = encode_frames(frames, stamps, bitrate_bps=2_000_000, codec="jpeg")
    return enc, stamps


def test_a_refused_batch_is_not_trained_on_nor_fed_to_rate_control_and_is_counted_and_kept_across_a_restart(
        student, tmp_path):
    session = RobotSession("r", copy.deepcopy(student), SessionConfig(
        trainer=TrainerConfig(iterations=1, batch_size=2, input_size=(32, 16), horizon_s=60.0)))
    labels: list[np.ndarray] = []

    def teacher(frames, stamps):
        return [labels.pop(0) for _ in frames]

    for k in range(3):  # three varied batches
        enc, stamps = _batch([picture(), picture()], 10.0 * k)
        labels += [varied(), varied()]
        assert session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, stamps, teacher) == 2
    assert (session.new_samples, session.refused_batches) == (6, 0)
    phis, prev = len(session.rate._phis), session.rate._prev
    enc, stamps = _batch([picture(), picture()], 30.0)
    labels += [one_class(1), one_class(1)]
    assert session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, stamps, teacher) == 0
    assert (session.new_samples, session.latest_t, session.refused_batches, session.refused_frames) == (6, 21.0, 1, 2)
    assert session.last_refusal.startswith("batch at t=31.0 s refused: 100.0 % of the teacher's labels are one class")
    assert session.label_checks.one_class_run == 1
    assert len(session.trainer.buffer.window(31.0, 60.0)) == 6
    assert len(session.rate._phis) == phis and session.rate._prev is prev  # the rate control never saw them
    enc, stamps = _batch([np.zeros((16, 32, 3), np.uint8), picture()], 40.0)  # one dark frame: left out
    labels += [varied(), varied()]
    assert session.add_encoded_batch(enc.data, enc.codec, enc.width, enc.height, stamps, teacher) == 1
    assert (session.refused_batches, session.refused_frames) == (1, 3)
    assert session.last_refusal.startswith("batch at t=41.0 s 1 of 2 frames left out: 1 of 2 frames carry no picture")

    store = SessionStore(tmp_path)
    store.save(session)
    back = store.load("r", copy.deepcopy(student), session.config).session
    assert (back.refused_batches, back.refused_frames, back.last_refusal) == (1, 3, session.last_refusal)
    assert (back.label_checks.seen_varied, back.label_checks.one_class_run) == (True, 0)
