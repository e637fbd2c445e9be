"""playlist: sources back to back as one stream (issue #11): continuous stream time, a known start
for each item, mirrored items flipped with their labels, list files, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from small_inputs import write_video  # noqa: E402
from ams_ros.core.sources.frame_sources import PlaylistSource, open_source, playlist_items


def _folder(root, name: str, frames: list[int], colour: int, labels: bool = False):
    """A CamVid-like folder: frames named by frame number at 30 fps, optional labels/ beside."""
    d = root / name / "frames"
    d.mkdir(parents=True)
    for k in frames:
        img = np.full((8, 12, 3), colour, np.uint8)
        img[:, :3] = 255 - colour  # a left stripe: mirroring moves it right
        cv2.imwrite(str(d / f"{k:06d}.png"), img)
        if labels:
            (root / name / "labels").mkdir(exist_ok=True)
            lab = np.zeros((8, 12), np.uint8)
            lab[:, :3] = 7
            cv2.imwrite(str(root / name / "labels" / f"{k:06d}.png"), lab)
    return root / name



def test_items_play_back_to_back_with_continuous_time_and_known_starts(tmp_path):
    a = _folder(tmp_path, "a", [0, 30, 60], colour=40)       # 0, 1, 2 s: 1 fps
    b = write_video(tmp_path / "b.avi", 4, fps=10.0)             # 0 .. 0.3 s
    src = open_source(f"playlist:{a},{b}")
    assert isinstance(src, PlaylistSource) and src.fps == pytest.approx(10.0)
    frames = list(src)
    times = [t for t, _, _ in frames]
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.0, 3.1, 3.2, 3.3])  # b starts one of a's periods after a
    assert src.starts == pytest.approx([0.0, 3.0])
    assert all(t1 > t0 for t0, t1 in zip(times, times[1:]))
    assert frames[3][1].shape == (8, 16, 3) and frames[0][1].shape == (8, 12, 3)


def test_a_mirrored_item_is_flipped_with_its_labels(tmp_path):
    a = _folder(tmp_path, "a", [0, 30], colour=40, labels=True)
    plain, flipped = list(open_source(f"playlist:{a}")), list(open_source(f"playlist:mirror:{a}"))
    for (_, rgb, gt), (_, rgb_m, gt_m) in zip(plain, flipped):
        assert np.array_equal(rgb_m, rgb[:, ::-1]) and np.array_equal(gt_m, gt[:, ::-1])
        assert rgb[0, 0, 0] == 215 and rgb_m[0, -1, 0] == 215  # the stripe moved to the right


def test_a_list_file_resolves_paths_beside_it_and_skips_comments(tmp_path):
    _folder(tmp_path, "a", [0, 30], colour=40)
    write_video(tmp_path / "b.avi", 2)
    listing = tmp_path / "long.txt"
    listing.write_text("# a ten-minute stream, in this order\na\nmirror:b.avi  # the clip again, flipped\na\n")
    assert playlist_items(f"playlist:{listing}") == [(str(tmp_path / "a"), False), (str(tmp_path / "b.avi"), True),
                                                     (str(tmp_path / "a"), False)]
    assert len(list(open_source(f"playlist:{listing}"))) == 2 + 2 + 2


@pytest.mark.parametrize("spec,why", [
    ("playlist:", "names no source"),
    ("playlist:synthetic:0", "not a finite file source"),
    ("playlist:/nonexistent/clip.mp4", "neither synthetic"),
    ("playlist:/nonexistent/list.txt", "does not exist"),
])
def test_bad_playlists_fail_at_once_naming_the_problem(spec, why):
    with pytest.raises(ValueError, match=why):
        open_source(spec)
