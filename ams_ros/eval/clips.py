"""The labelled clip every scheme of the evaluation is replayed on, built from a frame source.

The sources themselves live in :mod:`ams_ros.core.sources.frame_sources` (the ROS camera sampler uses the same
module): ``open_source(spec, size=None, ...)`` with ``spec`` a video file, an image folder whose
file names are frame numbers at 30 fps (human labels in a sibling ``labels/`` folder), a
rosbag2 (first ``sensor_msgs/Image`` topic), ``device:N`` or ``synthetic[:SEED][?shifts=...]``;
each yields ``(t, rgb, gt_or_None)`` in stream time. This module re-exports it and adds what
the evaluation needs on top:

- :func:`load_clip` picks the scored frames (every frame, or ``eval_fps``), runs the teacher once
  per frame on the *source* frame (the reference labels of the paper's protocol), maps human
  labels (CamVid) into the teacher's selected classes, and stores the labels in ``.npy`` files
  (a cache keyed by source, size, teacher and classes), so a clip of any length is replayed
  from disk without holding it in memory.
- :class:`Clip` replays the scored frames at the evaluation size, as often as needed.
- (issue #11) the bytes each scored frame costs as a full-quality JPEG at the resolution the
  teacher labels (the source's own, capped at the teacher's input size): what Remote+Tracking,
  Just-In-Time and ShadowTutor send up in the paper, where the teacher labels 2048x1024 frames,
  whereas the evaluation itself runs at a reduced size. Stored beside the labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ams_ros.core.wire.frame_codec import jpeg_bytes
from ams_ros.core.models.teachers import label_frames, teacher_input_size
from ams_ros.core.sources.frame_sources import (  # noqa: F401  (re-exported: the one implementation)
    FrameSource, open_source, PLAYLIST, playlist_items)
from ams_ros.core.models.labels import camvid_to_cityscapes
from ams_ros.core.sources.synthetic import teacher_for_source

__all__ = ["Clip", "open_source", "load_clip", "select_frames", "nominal_fps", "gt_mapper"]


def nominal_fps(spec: str, src: FrameSource) -> float:
    """Frame rate that "N frames" means for this source (image folders: 30 fps by naming)."""
    if spec.startswith("synthetic"):
        return float(getattr(src, "fps", 30.0))
    p = Path(spec)
    if p.is_dir() and not (p / "metadata.yaml").exists() and not any(p.glob("*.db3")) and not any(p.glob("*.mcap")):
        return 30.0
    return float(getattr(src, "fps", 30.0) or 30.0)


def _slot(t: float, t0: float, eval_fps: float) -> int:
    """Index of the 1/eval_fps slot of stream time ``t`` (exact multiples land in their own slot)."""
    return int(np.floor((t - t0) * eval_fps + 1e-3))


def select_frames(times: Sequence[float], eval_fps: float) -> list[int]:
    """Indices of the frames scored: all of them, or the first frame in every 1/eval_fps slot."""
    if not eval_fps or eval_fps <= 0:
        return list(range(len(times)))
    keep, last = [], None
    for i, t in enumerate(times):
        s = _slot(float(t), float(times[0]), eval_fps)
        if last is None or s > last:
            keep.append(i)
            last = s
    return keep


def gt_mapper(spec: str, teacher_space_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """Human labels -> the teacher's full label space, or None when there is no mapping.

    Synthetic ground truth is already in the oracle's space; CamVid label folders (11 classes +
    void) map to Cityscapes train ids.
    """

    base = teacher_space_name.split("[", 1)[0].lower()
    if spec.startswith("synthetic"):
        return lambda g: g
    if base == "cityscapes":
        return camvid_to_cityscapes
    return None


@dataclass
class Clip:
    """The scored frames of a source at the evaluation size, with their labels.

    ``teacher`` (N x H x W uint8, selected-class ids, 255 = ignore) are the reference labels;
    ``gt`` the human labels in the same ids (or None) and ``has_gt`` which frames have them.
    ``frames()`` re-reads the source each time (constant memory for long videos); for short clips
    ``cache_frames()`` keeps them in memory.
    """

    spec: str
    times: np.ndarray
    teacher: np.ndarray
    gt: np.ndarray | None
    has_gt: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    size: tuple[int, int]
    nominal_fps: float
    source_indices: list[int] = field(default_factory=list)
    _frames: list[np.ndarray] | None = None
    upload_bytes: np.ndarray | None = None  # per scored frame: JPEG bytes at upload_resolution
    upload_resolution: str = ""             # "WxH" of the first scored frame as uploaded

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def duration(self) -> float:
        """Seconds of stream covered by the scored frames (last minus first, plus one frame)."""
        if len(self) == 0:
            return 0.0
        step = float(np.median(np.diff(self.times))) if len(self) > 1 else 1.0
        return float(self.times[-1] - self.times[0] + step)

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index, stream time, RGB at the evaluation size) of every scored frame, in order."""
        if self._frames is not None:
            for i, f in enumerate(self._frames):
                yield i, float(self.times[i]), f
            return
        for i, rgb in _scored_source_frames(self.spec, self.size, self.source_indices):
            yield i, float(self.times[i]), _to_size(rgb, self.size)

    def head(self, n: int) -> "Clip":
        """The first ``n`` scored frames as a clip of their own (frames held in memory)."""
        frames = [f for i, _, f in self.frames() if i < n] if self._frames is None else self._frames[:n]
        return Clip(self.spec, self.times[:n], self.teacher[:n], None if self.gt is None else self.gt[:n],
                    self.has_gt[:n], self.num_classes, self.class_names, self.size, self.nominal_fps,
                    self.source_indices[:n], frames,
                    None if self.upload_bytes is None else self.upload_bytes[:n], self.upload_resolution)

    def cache_frames(self) -> "Clip":
        self._frames = [f for _, _, f in self.frames()]
        return self


def _to_size(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == tuple(size):
        return np.ascontiguousarray(img)
    return cv2.resize(img, tuple(size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def upload_size(width: int, height: int, cap: tuple[int, int] | None) -> tuple[int, int]:
    """A frame's size as uploaded for the teacher: its own, scaled down (aspect kept) to fit
    within ``cap`` (the teacher's input size; None = no cap)."""
    if cap is None:
        return int(width), int(height)
    scale = min(1.0, cap[0] / width, cap[1] / height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def jpeg_upload_bytes(rgb: np.ndarray, cap: tuple[int, int] | None, quality: int) -> tuple[int, tuple[int, int]]:
    """Bytes of ``rgb`` as one JPEG at its upload size (see :func:`upload_size`), and that size."""
    w, h = upload_size(rgb.shape[1], rgb.shape[0], cap)
    return len(jpeg_bytes(_to_size(rgb, (w, h)), quality)), (w, h)


def _upload_name(cap: tuple[int, int] | None, quality: int) -> str:
    return f"upload-q{int(quality)}-{'nocap' if cap is None else f'{cap[0]}x{cap[1]}'}"


def _write_uploads(root: Path, cap: tuple[int, int] | None, quality: int, sizes: np.ndarray, resolution: str) -> None:
    """Store the upload sizes in a cache entry; the array is renamed into place last (its presence
    marks the pair complete), so a concurrent run never reads half of it."""
    name = _upload_name(cap, quality)
    (root / f"{name}.txt").write_text(resolution)
    tmp = root / f".{name}.{os.getpid()}.npy"
    np.save(tmp, sizes)
    os.replace(tmp, root / f"{name}.npy")


def _load_or_measure_uploads(root: Path, clip: "Clip", cap: tuple[int, int] | None, quality: int) -> None:
    """Upload bytes from the cache entry, or measured now by re-reading the scored source frames
    (an entry written before issue #11 has labels but no upload sizes)."""
    name = _upload_name(cap, quality)
    if (root / f"{name}.npy").exists():
        clip.upload_bytes = np.load(root / f"{name}.npy")
        clip.upload_resolution = (root / f"{name}.txt").read_text().strip()
        return
    sizes, first = [], None
    for _, rgb in _scored_source_frames(clip.spec, clip.size, clip.source_indices):
        n, wh = jpeg_upload_bytes(rgb, cap, quality)
        sizes.append(n)
        first = first or wh
    clip.upload_bytes = np.asarray(sizes, dtype=np.int64)
    clip.upload_resolution = f"{first[0]}x{first[1]}" if first else ""
    _write_uploads(root, cap, quality, clip.upload_bytes, clip.upload_resolution)


def open_scored_source(spec: str, size: tuple[int, int]) -> FrameSource:
    """The source as the evaluation reads it: synthetic worlds render at the evaluation size, real
    sources at their own (the teacher's input)."""
    return open_source(spec, size=size if spec.startswith("synthetic") else None)


def _source_frames(spec: str, size: tuple[int, int]) -> Iterator[tuple[float, np.ndarray, np.ndarray | None]]:
    return iter(open_scored_source(spec, size))


def _scored_source_frames(spec: str, size: tuple[int, int], source_indices: Sequence[int]
                          ) -> Iterator[tuple[int, np.ndarray]]:
    """(scored index, RGB as the source gives it) of the source frames at ``source_indices``."""
    want = iter(enumerate(source_indices))
    nxt = next(want, None)
    for k, (_, rgb, _) in enumerate(_source_frames(spec, size)):
        if nxt is None:
            return
        if k == nxt[1]:
            yield nxt[0], rgb
            nxt = next(want, None)


def _cache_key(spec: str, size, eval_fps: float, max_seconds: float, teacher_name: str, lut: np.ndarray | None) -> str:
    p = Path(spec)
    paths = [Path(item) for item, _ in playlist_items(spec)] if spec.startswith(PLAYLIST) else [p]
    stamp = ";".join(f"{q.resolve()}:{q.stat().st_mtime_ns}:{q.stat().st_size}" for q in paths if q.exists())
    h = hashlib.sha1(json.dumps([spec, stamp, list(size), eval_fps, max_seconds, teacher_name,
                                 None if lut is None else lut.tolist(), 3]).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (spec if spec.startswith(PLAYLIST) else p.name or spec))[:40]
    return f"{name}-{size[0]}x{size[1]}-{h}"


def load_clip(spec: str, size: tuple[int, int], teacher, lut: np.ndarray | None = None, eval_fps: float = 0.0,
              max_seconds: float = 0.0, cache_dir: str | os.PathLike | None = None, progress: bool = True,
              in_memory: bool | None = None, upload_quality: int = 95) -> Clip:
    """Read ``spec``, label every scored frame with ``teacher`` (once; cached in ``cache_dir``).

    ``lut`` maps the teacher's ids to the selected classes (``LabelSpace.restrict``); ``None``
    keeps all of the teacher's classes. ``max_seconds`` cuts the clip (0 = all of it).
    ``upload_quality``: the JPEG quality of the frames' upload sizes (``Clip.upload_bytes``).
    """
    teacher = teacher_for_source(teacher, spec)  # an oracle labels the world this clip shows
    cap = teacher_input_size(teacher)
    size = (int(size[0]), int(size[1]))
    if not max_seconds and spec.startswith("synthetic"):
        max_seconds = 180.0  # the synthetic world's default span (its shifts are scheduled over it)
    if not max_seconds and spec.startswith("device:"):
        raise ValueError("a live camera never ends: give max_seconds (--max-seconds)")
    n_cls, names = _selected_classes(teacher.label_space, lut)
    src = open_source(spec, size=size if spec.startswith("synthetic") else None)
    nfps = nominal_fps(spec, src)
    key = _cache_key(spec, size, eval_fps, max_seconds,
                     getattr(teacher, "cache_name", None) or getattr(teacher, "name", type(teacher).__name__), lut)
    tmp_root = None
    if cache_dir:
        root = Path(cache_dir) / key
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix="ams-eval-labels-"))
        root = tmp_root / key
    if (root / "meta.json").exists():
        clip = _cached_clip(root, spec, n_cls, names, size, nfps, cap, upload_quality)
        return clip.cache_frames() if (in_memory if in_memory is not None else len(clip) <= 4000) else clip
    root.parent.mkdir(parents=True, exist_ok=True)
    done = _label_pass(spec, src, size, teacher, lut, eval_fps, max_seconds, cap, upload_quality, in_memory, progress)
    _store(root, key, done, spec, size, eval_fps, max_seconds, teacher, names, cap, upload_quality)
    clip = Clip(spec, done.times, done.teacher, done.gt, done.has_gt, n_cls, names, size, nfps, done.source_indices,
                done.kept, done.uploads, done.upload_res)
    if tmp_root is not None:  # the labels are in memory; frames are re-read from the source if not kept
        shutil.rmtree(tmp_root, ignore_errors=True)
    return clip


def _selected_classes(space, lut: np.ndarray | None) -> tuple[int, tuple[str, ...]]:
    """(class count, names) the clip is scored in: the teacher's, or those ``lut`` keeps, in its order."""
    if lut is None:
        return space.num_classes, tuple(space.class_names)
    n_cls = int(len([v for v in np.unique(lut) if v != 255]))
    ids = sorted((c for c in range(space.num_classes) if lut[c] != 255), key=lambda c: int(lut[c]))
    return n_cls, tuple(space.class_names[c] for c in ids)


def _cached_clip(root: Path, spec: str, n_cls: int, names: tuple[str, ...], size: tuple[int, int], nfps: float,
                 cap, upload_quality: int) -> Clip:
    meta = json.loads((root / "meta.json").read_text())
    times = np.load(root / "times.npy")
    teacher_labels = np.load(root / "teacher.npy", mmap_mode="r")
    gt = np.load(root / "gt.npy", mmap_mode="r") if meta["has_any_gt"] else None
    has_gt = np.load(root / "has_gt.npy")
    clip = Clip(spec, times, teacher_labels, gt, has_gt, n_cls, names, size, nfps, meta["source_indices"])
    _load_or_measure_uploads(root, clip, cap, upload_quality)
    return clip


@dataclass
class _Labelled:
    """What one pass over a source gives: the scored frames' times, teacher labels, ground truth."""

    times: np.ndarray
    teacher: np.ndarray
    gt: np.ndarray | None
    has_gt: np.ndarray
    source_indices: list[int]
    uploads: np.ndarray
    upload_res: str
    kept: list[np.ndarray] | None


def _label_pass(spec: str, src, size: tuple[int, int], teacher, lut: np.ndarray | None, eval_fps: float,
                max_seconds: float, cap, upload_quality: int, in_memory: bool | None, progress: bool) -> _Labelled:
    """Every scored frame of ``src`` labelled by ``teacher`` (at ``eval_fps``, up to ``max_seconds``),
    with its ground truth where the source has it and its upload size; the frames too when kept."""
    to_gt = gt_mapper(spec, teacher.label_space.name)
    w, h = size
    times_all: list[float] = []
    t_labels: list[np.ndarray] = []
    g_labels: list[np.ndarray | None] = []
    src_idx: list[int] = []
    uploads: list[int] = []
    upload_wh: tuple[int, int] | None = None
    kept: list[np.ndarray] | None = [] if in_memory is not False else None
    t_first, last_slot = None, None
    bar = tqdm(desc=f"teacher labels {Path(spec).name or spec}", unit="frame", disable=not progress)
    try:
        for k, (t, rgb, gt) in enumerate(src):
            if max_seconds and t > max_seconds + 1e-9:
                break
            if eval_fps:
                t_first = t if t_first is None else t_first
                slot = _slot(t, t_first, eval_fps)
                if last_slot is not None and slot <= last_slot:
                    continue
                last_slot = slot
            lab = _to_size(label_frames(teacher, [rgb], [t])[0], size, nearest=True)
            t_labels.append(lut[lab] if lut is not None else lab)
            if gt is not None and to_gt is not None:
                g = _to_size(to_gt(gt), size, nearest=True)
                g_labels.append(lut[g] if lut is not None else g)
            else:
                g_labels.append(None)
            times_all.append(float(t))
            src_idx.append(k)
            n_up, wh = jpeg_upload_bytes(rgb, cap, upload_quality)
            uploads.append(n_up)
            upload_wh = upload_wh or wh
            if kept is not None:
                kept.append(_to_size(rgb, size))
                if in_memory is None and len(kept) > 4000:
                    kept = None
            bar.update(1)
    finally:
        bar.close()
        close = getattr(src, "close", None)
        if close is not None:
            close()
    if not times_all:
        raise ValueError(f"no frames read from '{spec}'")
    has_gt = np.array([g is not None for g in g_labels], dtype=bool)
    gt_arr = None
    if has_gt.any():
        gt_arr = np.stack([g if g is not None else np.full((h, w), 255, np.uint8) for g in g_labels]).astype(np.uint8)
    return _Labelled(np.asarray(times_all, dtype=np.float64), np.stack(t_labels).astype(np.uint8), gt_arr, has_gt,
                     src_idx, np.asarray(uploads, dtype=np.int64),
                     f"{upload_wh[0]}x{upload_wh[1]}" if upload_wh else "", kept)


def _store(root: Path, key: str, done: _Labelled, spec: str, size: tuple[int, int], eval_fps: float,
           max_seconds: float, teacher, names: tuple[str, ...], cap, upload_quality: int) -> None:
    """Write a pass into the cache: into a private folder renamed into place, so runs sharing the
    cache never read a half-written entry (a concurrent run that finished first wins; ours is identical)."""
    part = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    np.save(part / "times.npy", done.times)
    np.save(part / "teacher.npy", done.teacher)
    np.save(part / "has_gt.npy", done.has_gt)
    _write_uploads(part, cap, upload_quality, done.uploads, done.upload_res)
    if done.gt is not None:
        np.save(part / "gt.npy", done.gt)
    (part / "meta.json").write_text(json.dumps({"spec": spec, "size": list(size), "eval_fps": eval_fps,
                                               "max_seconds": max_seconds, "teacher": getattr(teacher, "name", ""),
                                               "classes": list(names), "frames": int(done.times.size),
                                               "has_any_gt": bool(done.has_gt.any()),
                                               "source_indices": done.source_indices}))
    try:
        os.rename(part, root)
    except OSError:  # another run stored the same entry meanwhile
        shutil.rmtree(part, ignore_errors=True)
