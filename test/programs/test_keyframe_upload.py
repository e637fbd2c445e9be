"""(issue #11) Key frames are counted on the uplink at the resolution the teacher labels: the
source's own, capped at the teacher's input size, as full-quality JPEGs; measured once per clip
and kept beside its labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.student import build_student
from ams_ros.eval import schemes as S
from ams_ros.eval import simulator as sim
from ams_ros.eval.clips import jpeg_upload_bytes, load_clip, upload_size
from ams_ros.eval.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _TeacherWithInput:
    """Labels every pixel road; labels at 48x24 like a model with a fixed input."""

    name = "fixed-input"
    label_space = get_label_space("synthetic")
    input_size = (48, 24)

    def label(self, images):
        return [np.zeros(img.shape[:2], np.uint8) for img in images]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 64))
    rng = np.random.default_rng(0)
    for _ in range(12):
        out.write(rng.integers(0, 255, (64, 128, 3), np.uint8))
    out.release()
    return path


def test_the_upload_size_is_the_sources_capped_at_the_teachers_input_keeping_the_aspect():
    assert upload_size(1920, 1080, (2048, 1024)) == (1820, 1024)
    assert upload_size(960, 720, (2049, 1025)) == (960, 720)   # never scaled up
    assert upload_size(960, 720, None) == (960, 720)
    assert upload_size(128, 64, (48, 24)) == (48, 24)


def test_a_clip_carries_each_frames_upload_bytes_and_the_cache_keeps_or_remakes_them(video, tmp_path):
    teacher = _TeacherWithInput()
    clip = load_clip(str(video), (32, 16), teacher, progress=False, cache_dir=tmp_path)
    assert clip.upload_resolution == "48x24" and clip.upload_bytes.shape == (len(clip),) == (12,)
    cap = cv2.VideoCapture(str(video))
    ok, bgr = cap.read()
    cap.release()
    first, wh = jpeg_upload_bytes(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (48, 24), 95)
    assert wh == (48, 24) and clip.upload_bytes[0] == first
    again = load_clip(str(video), (32, 16), teacher, progress=False, cache_dir=tmp_path)
    assert np.array_equal(again.upload_bytes, clip.upload_bytes)
    for f in tmp_path.glob("*/upload-*"):  # an entry from before issue #11: labels but no upload sizes
        f.unlink()
    remade = load_clip(str(video), (32, 16), teacher, progress=False, cache_dir=tmp_path)
    assert np.array_equal(remade.upload_bytes, clip.upload_bytes) and remade.upload_resolution == "48x24"


def test_remote_tracking_pays_the_teachers_resolution_unless_told_to_count_the_evaluation_size(video):
    teacher = _TeacherWithInput()
    clip = load_clip(str(video), (32, 16), teacher, progress=False)
    student = build_student("deeplabv3_mobilenet_v2", num_classes=clip.num_classes).eval()
    runs = {}
    for mode in ("teacher", "eval"):
        preset = PRESETS["cpu-quick"].with_overrides({"width": 32, "height": 16, "eval_fps": 0, "rt_fps": 5,
                                                      "keyframe_upload": mode})
        ctx = sim.RunContext(clip, student, preset)
        runs[mode] = S.run_remote_tracking(ctx, S.parse_scheme("remote_tracking"))
    sent = [b for _, b in runs["teacher"].uplink]
    idx = [int(np.argmin(np.abs(clip.times - t))) for t in runs["teacher"].sent_times]
    assert sent == [int(clip.upload_bytes[i]) for i in idx]
    assert runs["teacher"].params["upload_resolution"] == "48x24"
    assert runs["eval"].params["upload_resolution"] == "32x16"
    assert sum(b for _, b in runs["eval"].uplink) < sum(sent)  # 32x16 JPEGs are smaller than 48x24 ones
    from ams_ros.eval.report import markdown, summarize

    schemes = {k: summarize(r, None, clip.times, 0.0, 0.1) for k, r in (("remote_tracking", runs["teacher"]),
                                                                         ("rt_eval", runs["eval"]))}
    table = markdown({"source": str(video), "preset": "cpu-quick", "frames_evaluated": len(clip),
                      "stream_seconds": 1.2, "classes": ["road"], "schemes": schemes})
    assert "| frames sent up as | JPEG 48x24 | JPEG 32x16 |" in table  # the results table states the resolutions


def test_the_paper_timing_preset_scores_every_frame_with_a_stated_training_cost():
    p = PRESETS["cpu-paper-timing"]
    assert (p.eval_fps, p.train_s_per_step, p.teacher_s, p.keyframe_upload) == (0.0, 0.1, 0.25, "teacher")
    assert (p.update_period_s, p.horizon_s, p.iterations, p.gamma) == (10.0, 240.0, 20, 0.05)  # the paper's
    with pytest.raises(ValueError, match="keyframe_upload 'full' is not one of teacher, eval"):
        p.with_overrides({"keyframe_upload": "full"})
