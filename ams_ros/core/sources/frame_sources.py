"""Frame sources by spec, yielding ``(t, rgb, gt_or_None)`` in stream time.

Used by the camera sampler when no camera driver runs, and by the demo:
``synthetic[:SEED][?shifts=T1,T2]``, a video file, an image folder whose file names are frame
numbers at 30 fps (CamVid layout, human labels in a sibling ``labels/`` folder), a rosbag2
folder or file (first ``sensor_msgs/Image`` topic, via ``rosbags``), ``device:N``, or
``playlist:A,B,...`` / ``playlist:LIST.txt`` (issue #11: finite sources back to back as one
stream, ``mirror:`` before an item flips it left-right; see :class:`PlaylistSource`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np
from ams_ros.core.sources.pixel_formats import image_to_rgb
from ams_ros.core.sources.synthetic import world_from_spec

Frame = tuple[float, np.ndarray, "np.ndarray | None"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class FrameSource(Protocol):
    fps: float

    def __iter__(self) -> Iterator[Frame]: ...


def _resize(img: np.ndarray, size: tuple[int, int] | None, nearest: bool = False) -> np.ndarray:
    if size is None or (img.shape[1], img.shape[0]) == tuple(size):
        return img
    return cv2.resize(img, tuple(size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


class SyntheticSource:
    def __init__(self, spec: str, size: tuple[int, int] | None, fps: float = 30.0, duration_s: float = 180.0) -> None:
        w, h = size or (512, 256)
        self.world = world_from_spec(spec, width=w, height=h, duration_s=duration_s)
        self.fps = fps

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while True:
            t = i / self.fps
            rgb, gt = self.world.frame_at(t)
            yield t, rgb, gt
            i += 1


class VideoSource:
    def __init__(self, path: str, size: tuple[int, int] | None, loop: bool = False) -> None:
        self.path, self.size, self.loop = path, size, loop
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ValueError(f"cannot open video '{path}'")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
        cap.release()

    def __iter__(self) -> Iterator[Frame]:
        offset = 0.0
        while True:
            cap = cv2.VideoCapture(self.path)
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield offset + i / self.fps, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.size), None
                i += 1
            cap.release()
            if not self.loop or i == 0:
                return
            offset += i / self.fps


class ImageFolderSource:
    """Frames named by frame number (``000930.jpg`` = frame 930 at ``frame_rate`` fps)."""

    def __init__(self, path: str, size: tuple[int, int] | None, loop: bool = False, frame_rate: float = 30.0) -> None:
        root = Path(path)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"no images in folder '{path}'")
        try:
            self.times = [int(p.stem) / frame_rate for p in files]
        except ValueError:
            self.times = [i / frame_rate for i in range(len(files))]
        t0 = self.times[0]
        self.times = [t - t0 for t in self.times]
        self.files, self.size, self.loop = files, size, loop
        span = self.times[-1] if len(files) > 1 else 1.0
        self.fps = (len(files) - 1) / span if span > 0 else frame_rate
        labels_dir = root.parent / "labels"
        self.labels = {p.stem: labels_dir / f"{p.stem}.png" for p in files} if labels_dir.is_dir() else {}

    def __iter__(self) -> Iterator[Frame]:
        offset = 0.0
        while True:
            for t, f in zip(self.times, self.files):
                bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                gt = None
                lp = self.labels.get(f.stem)
                if lp is not None and lp.exists():
                    gt = _resize(cv2.imread(str(lp), cv2.IMREAD_GRAYSCALE), self.size, nearest=True)
                yield offset + t, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.size), gt
            if not self.loop:
                return
            offset += self.times[-1] + 1.0 / max(self.fps, 1e-6)


class RosbagSource:
    """The first (or named) sensor_msgs/Image topic of a rosbag2 (sqlite3 or mcap)."""

    def __init__(self, path: str, size: tuple[int, int] | None, topic: str | None = None) -> None:
        from rosbags.highlevel import AnyReader

        self.path, self.size, self.topic = Path(path), size, topic
        with AnyReader([self.path]) as reader:
            conns = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image" and (topic is None or c.topic == topic)]
            if not conns:
                raise ValueError(f"rosbag '{path}' has no sensor_msgs/Image topic{f' {topic}' if topic else ''}")
            c = conns[0]
            self.topic = c.topic
            self.fps = float(c.msgcount) / max((reader.duration or 1) * 1e-9, 1e-9)

    def __iter__(self) -> Iterator[Frame]:
        from rosbags.highlevel import AnyReader

        with AnyReader([self.path]) as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            t0 = None
            for conn, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                t0 = t if t0 is None else t0
                yield t - t0, _resize(image_to_rgb(msg), self.size), None


class DeviceSource:
    def __init__(self, index: int, size: tuple[int, int] | None) -> None:
        self.cap = cv2.VideoCapture(index)
        if not self.cap.isOpened():
            raise ValueError(f"cannot open camera device {index}")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 30.0)
        self.size = size

    def __iter__(self) -> Iterator[Frame]:
        t0 = time.monotonic()
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                return
            yield time.monotonic() - t0, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.size), None

    def close(self) -> None:
        self.cap.release()


PLAYLIST = "playlist:"
MIRROR = "mirror:"
PLAYLIST_FILE_SUFFIXES = (".txt", ".list", ".m3u")


def playlist_items(spec: str) -> list[tuple[str, bool]]:
    """``(source spec, mirrored)`` of each item of ``playlist:A,mirror:B,...`` or of a list file
    (``playlist:streams/long.txt``: one item per line, ``#`` comments, paths relative to the file)."""
    body = spec[len(PLAYLIST):].strip()
    listing = Path(body)
    if listing.suffix.lower() in PLAYLIST_FILE_SUFFIXES:
        if not listing.is_file():
            raise ValueError(f"playlist file '{body}' does not exist (write one source per line)")
        raw = [ln.split("#", 1)[0].strip() for ln in listing.read_text().splitlines()]
        base = listing.parent
    else:
        raw, base = [part.strip() for part in body.split(",")], None
    items = []
    for entry in filter(None, raw):
        mirrored = entry.startswith(MIRROR)
        item = entry[len(MIRROR):].strip() if mirrored else entry
        if base is not None and not Path(item).is_absolute():
            item = str(base / item)
        if item.startswith(("synthetic", "device:", PLAYLIST)):
            raise ValueError(f"playlist item '{item}' is not a finite file source; a playlist plays video files, "
                             f"image folders and rosbags back to back")
        items.append((item, mirrored))
    if not items:
        raise ValueError(f"playlist '{spec}' names no source; e.g. playlist:a.mp4,mirror:b.mp4 or playlist:list.txt")
    return items


class PlaylistSource:
    """Finite sources played back to back as one stream (issue #11: streams as long as the
    paper's from short clips). Stream time is continuous: an item starts one of its own frame
    periods after the previous item's last frame, so a change of item is an abrupt scene change
    at a known time (``starts``, filled as the stream plays). A mirrored item is flipped
    left-right (frames and human labels), so a clip played twice is not the same video twice.
    ``fps`` is the fastest item's rate."""

    def __init__(self, spec: str, size: tuple[int, int] | None, loop: bool = False) -> None:
        self.spec, self.size, self.loop = spec, size, loop
        self.items = playlist_items(spec)
        self.sources = [open_source(item, size=size) for item, _ in self.items]  # each checked now
        self.fps = max(float(getattr(src, "fps", 30.0) or 30.0) for src in self.sources)
        self.starts: list[float] = []

    def __iter__(self) -> Iterator[Frame]:
        offset, self.starts = 0.0, []
        while True:
            for (_, mirrored), src in zip(self.items, self.sources):
                first = last = None
                for t, rgb, gt in src:
                    if first is None:
                        first = t
                        self.starts.append(offset)
                    last = offset + (t - first)
                    if mirrored:
                        rgb = np.ascontiguousarray(rgb[:, ::-1])
                        gt = None if gt is None else np.ascontiguousarray(gt[:, ::-1])
                    yield last, rgb, gt
                if last is not None:
                    offset = last + 1.0 / max(float(getattr(src, "fps", 30.0) or 30.0), 1e-6)
            if not self.loop or not self.starts:
                return


def open_source(spec: str, size: tuple[int, int] | None = None, loop: bool = False,
                fps: float | None = None) -> FrameSource:
    """A frame source for ``spec`` (see the module docstring); errors say what was wrong.

    ``fps`` sets the frame rate of the synthetic world (real sources keep their own)."""
    if spec.startswith(PLAYLIST):
        return PlaylistSource(spec, size, loop)
    if spec.startswith("synthetic"):
        return SyntheticSource(spec, size, fps=fps or 30.0)
    if spec.startswith("device:"):
        return DeviceSource(int(spec.split(":", 1)[1]), size)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"source '{spec}' is neither synthetic[:seed], device:N nor an existing path")
    if path.is_dir():
        if (path / "metadata.yaml").exists() or any(path.glob("*.db3")) or any(path.glob("*.mcap")):
            return RosbagSource(str(path), size)
        if (path / "frames").is_dir():
            path = path / "frames"
        return ImageFolderSource(str(path), size, loop)
    if path.suffix in (".db3", ".mcap"):
        return RosbagSource(str(path), size)
    return VideoSource(str(path), size, loop)
