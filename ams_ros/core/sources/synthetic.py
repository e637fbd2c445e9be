"""A procedural driving-like world with exact labels: the offline default and test fixture.

Deterministic from a seed, at any resolution, rendered from the stream time ``t``: a road in
perspective with lane marks, sidewalks, buildings and trees that scroll past as the camera
moves, cars and people that come and go, textured so the task is not trivial. Scheduled
domain shifts change lighting, colours, layout and object appearance, so a model trained
before a shift measurably loses accuracy after it — the situation AMS exists for.
The :class:`OracleTeacher` returns ground truth with realistic noise.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from ams_ros.core.models.labels import SYNTHETIC, SYNTHETIC_CLASSES
from ams_ros.core.models.teachers import register_teacher_factory

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR = range(7)
SYNTHETIC_TO_CITYSCAPES = {ROAD: 0, SIDEWALK: 1, BUILDING: 2, VEGETATION: 8, SKY: 10, PERSON: 11, CAR: 13}


@dataclass(frozen=True)
class Appearance:
    """How the world looks: base colour per class, lighting and layout."""

    colors: tuple[tuple[int, int, int], ...] = ((95, 95, 100), (170, 160, 150), (150, 110, 90), (60, 130, 50),
                                                (140, 180, 230), (200, 60, 60), (30, 60, 170))
    brightness: float = 1.0
    contrast: float = 1.0
    fog: float = 0.0          # 0..1 blend towards grey with distance
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    horizon: float = 0.42     # fraction of the height
    road_width: float = 0.9   # half-width of the road at the bottom, fraction of the width
    n_cars: int = 3
    n_people: int = 3
    texture: float = 18.0


@dataclass(frozen=True)
class DomainShift:
    t: float
    name: str
    appearance: Appearance


def default_shifts(duration_s: float = 180.0) -> list[DomainShift]:
    """Shifts at 1/3 and 2/3 of the duration: dusk with a new palette, then fog and a new layout."""
    base = Appearance()
    dusk = Appearance(colors=((70, 60, 90), (120, 90, 130), (200, 170, 80), (30, 90, 90), (230, 120, 60),
                              (240, 230, 80), (220, 40, 40)),
                      brightness=0.75, tint=(1.15, 0.85, 0.8), horizon=0.5, road_width=0.6, n_cars=5, n_people=2)
    fog = Appearance(colors=((150, 140, 120), (90, 90, 100), (110, 140, 170), (140, 120, 60), (200, 200, 200),
                             (40, 40, 40), (230, 230, 230)),
                     brightness=1.1, fog=0.45, horizon=0.35, road_width=1.1, n_cars=2, n_people=5, texture=28.0)
    return [DomainShift(duration_s / 3.0, "dusk-palette-layout", dusk),
            DomainShift(2.0 * duration_s / 3.0, "fog-palette-layout", fog)][: (2 if duration_s > 0 else 0)] if base else []


# Recently rendered frames of any world, by content: lets the oracle label frames it is handed
# uncompressed (e.g. in offline evaluation) without their time stamps.
_RENDERED: "OrderedDict[bytes, np.ndarray]" = OrderedDict()


def _key(rgb: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16).digest()


def _remember(rgb: np.ndarray, lab: np.ndarray, keep: int = 512) -> None:
    _RENDERED[_key(rgb)] = lab
    while len(_RENDERED) > keep:
        _RENDERED.popitem(last=False)


def _hash01(*keys: int) -> float:
    h = hashlib.blake2b(",".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


class SyntheticWorld:
    """``frame_at(t) -> (rgb uint8 HxWx3, labels uint8 HxW)``, deterministic from ``seed``."""

    def __init__(self, seed: int = 0, width: int = 512, height: int = 256, fps: float = 30.0,
                 shifts: list[DomainShift] | None = None, speed: float = 0.35) -> None:
        self.seed, self.width, self.height, self.fps = int(seed), int(width), int(height), float(fps)
        self.shifts = sorted(shifts if shifts is not None else default_shifts(), key=lambda s: s.t)
        self.base = Appearance()
        self.speed = speed  # scene widths per second of lateral scroll
        rng = np.random.default_rng(self.seed)
        self._noise = rng.normal(0.0, 1.0, (height * 2, width * 2)).astype(np.float32)
        self._noise = cv2.GaussianBlur(self._noise, (0, 0), 1.2)
        self._noise /= self._noise.std() + 1e-6
        yy, xx = np.mgrid[0:height, 0:width]
        self._yy, self._xx = yy.astype(np.float32), xx.astype(np.float32)

    def appearance_at(self, t: float) -> Appearance:
        app = self.base
        for s in self.shifts:
            if t >= s.t:
                app = s.appearance
        return app

    # ------------------------------------------------------------------ geometry
    def labels_at(self, t: float) -> np.ndarray:
        a = self.appearance_at(t)
        h, w = self.height, self.width
        yy, xx = self._yy / h, self._xx / w
        hz = a.horizon
        lab = np.full((h, w), SKY, np.uint8)
        below = yy >= hz
        depth = np.clip((yy - hz) / (1.0 - hz), 1e-3, 1.0)  # 0 at horizon, 1 at the bottom
        cx = 0.5 + 0.08 * np.sin(0.11 * t + self.seed)
        half = a.road_width * 0.5 * depth
        dx = np.abs(xx - cx)
        ground = below & (dx >= half * 1.35)
        lab[ground] = VEGETATION
        lab[below & (dx < half * 1.35)] = SIDEWALK
        lab[below & (dx < half)] = ROAD
        # buildings and trees above the horizon, scrolling past (world coordinate u)
        scroll = self.speed * t
        u = xx + scroll
        block = np.floor(u * 6.0).astype(np.int64)
        cols = np.unique(block)
        top = np.zeros_like(xx)
        kind = np.zeros(block.shape, np.int64)
        for b in cols:
            r = _hash01(self.seed, int(b))
            m = block == b
            top[m] = hz - (0.08 + 0.3 * r) * hz / 0.42
            kind[m] = 0 if r > 0.3 else 1  # 0 building, 1 tree
        above = ~below & (yy >= top)
        lab[above & (kind == 0)] = BUILDING
        # trees: round crowns in gaps
        tree_cols = above & (kind == 1)
        crown = ((np.mod(u * 6.0, 1.0) - 0.5) ** 2 * 4 + ((yy - (top + hz) / 2) / (hz - top + 1e-3)) ** 2 * 3) < 1.0
        lab[tree_cols & crown] = VEGETATION
        lab[tree_cols & ~crown & (np.abs(np.mod(u * 6.0, 1.0) - 0.5) < 0.06)] = VEGETATION
        # cars on the road and people on the sidewalks, entering and leaving
        for i in range(a.n_cars):
            phase = (t * (0.05 + 0.04 * _hash01(self.seed, 7, i)) + _hash01(self.seed, 8, i)) % 1.0
            d = 0.15 + 0.8 * phase  # depth of the car
            y0 = hz + d * (1 - hz)
            lane = (_hash01(self.seed, 9, i) - 0.5) * 1.2
            xc = cx + lane * a.road_width * 0.5 * d
            cw, ch = 0.16 * d, 0.11 * d
            m = (np.abs(xx - xc) < cw / 2) & (yy < y0) & (yy > y0 - ch)
            lab[m] = CAR
        for i in range(a.n_people):
            phase = (t * (0.03 + 0.03 * _hash01(self.seed, 17, i)) + _hash01(self.seed, 18, i)) % 1.0
            d = 0.2 + 0.75 * phase
            y0 = hz + d * (1 - hz)
            side = -1 if _hash01(self.seed, 19, i) < 0.5 else 1
            xc = cx + side * a.road_width * 0.5 * d * 1.17
            pw, ph = 0.03 * d, 0.22 * d
            body = (np.abs(xx - xc) < pw / 2) & (yy < y0) & (yy > y0 - ph)
            head = ((xx - xc) / (pw * 0.6)) ** 2 + ((yy - (y0 - ph - 0.02 * d)) / (0.025 * d)) ** 2 < 1
            lab[body | head] = PERSON
        return lab

    # ------------------------------------------------------------------ appearance
    def frame_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The camera frame at stream time ``t`` and its exact label map."""
        a = self.appearance_at(t)
        lab = self.labels_at(t)
        h, w = self.height, self.width
        colors = np.asarray(a.colors, np.float32)
        img = colors[lab]
        ox = int((self.speed * t * w * 0.5) % w)
        tex = self._noise[:h, ox:ox + w] if ox + w <= 2 * w else self._noise[:h, :w]
        img += (a.texture * tex)[..., None]
        # windows on buildings, lane marks on the road: structure inside classes
        u = self._xx / w + self.speed * t
        win = (lab == BUILDING) & (np.mod(u * 60, 1.0) < 0.45) & (np.mod(self._yy / h * 30, 1.0) < 0.5)
        img[win] *= 0.6
        hz = a.horizon
        lane = (lab == ROAD) & (np.abs(self._xx / w - (0.5 + 0.08 * np.sin(0.11 * t + self.seed))) < 0.006 + 0.01 * (self._yy / h - hz)) \
            & (np.mod((self._yy / h) * 12 + 3.0 * t, 1.0) < 0.5)
        img[lane] = 235.0
        shade = 0.75 + 0.25 * (self._yy / h)
        img *= shade[..., None]
        img = (img - 128.0) * a.contrast + 128.0
        img *= a.brightness * np.asarray(a.tint, np.float32)
        if a.fog > 0:
            dist = np.clip(1.0 - np.abs(self._yy / h - hz) * 2.5, 0, 1)
            f = (a.fog * dist)[..., None]
            img = img * (1 - f) + 200.0 * f
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        _remember(rgb, lab)
        return rgb, lab

    def iter_frames(self, t0: float, t1: float, fps: float | None = None) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
        step = 1.0 / (fps or self.fps)
        n = int(np.floor((t1 - t0) / step + 1e-9))
        for i in range(n):
            t = t0 + i * step
            rgb, lab = self.frame_at(t)
            yield t, rgb, lab

    def lookup_labels(self, rgb: np.ndarray) -> np.ndarray | None:
        """Ground truth of a frame this world rendered recently (by content hash)."""
        return _RENDERED.get(_key(rgb))


def parse_spec(spec: str) -> tuple[int, list[float] | None]:
    """``synthetic[:SEED][?shifts=T1,T2]`` -> (seed, shift times or None for the default)."""
    if not spec.startswith("synthetic"):
        raise ValueError(f"not a synthetic source spec: '{spec}'")
    rest = spec[len("synthetic"):]
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    seed = int(rest[1:]) if rest.startswith(":") and rest[1:] else 0
    shifts = None
    for part in query.split("&"):
        if part.startswith("shifts="):
            shifts = [float(x) for x in part[len("shifts="):].split(",") if x]
    return seed, shifts


def world_from_spec(spec: str, width: int = 512, height: int = 256, duration_s: float = 180.0) -> SyntheticWorld:
    """A world from a source spec; explicit shift times reuse the default shift appearances."""
    seed, times = parse_spec(spec)
    shifts = default_shifts(duration_s)
    if times is not None:
        shifts = [DomainShift(t, shifts[i % len(shifts)].name, shifts[i % len(shifts)].appearance)
                  for i, t in enumerate(times)]
    return SyntheticWorld(seed=seed, width=width, height=height, shifts=shifts)


class OracleTeacher:
    """Ground truth of the synthetic world with realistic teacher noise (ragged boundaries,
    a few wrong blobs), deterministic from ``seed``.

    Frames reach the server H.264-compressed, so they cannot be matched to the world by
    content; the oracle renders the labels at each frame's stream time instead
    (``label(images, stamps=...)``, stamps as the camera sampler sets them with
    ``stamp_origin: stream``). Without stamps it looks frames up by content hash, which works
    for frames that came straight from ``world.frame_at``.
    """

    name = "oracle"
    uses_stamps = True

    def __init__(self, spec: str = "synthetic:0", noise: float = 0.04, seed: int = 0) -> None:
        self.spec = spec
        self.noise = float(noise)
        self.seed = seed
        self.label_space = SYNTHETIC
        self._worlds: dict[tuple[int, int], SyntheticWorld] = {}
        self._calls = 0

    @property
    def cache_name(self) -> str:
        """Names the world (and noise) the labels come from, for caches of labelled clips."""
        return f"oracle[{self.spec},noise={self.noise:g},seed={self.seed}]"

    def for_world(self, spec: str) -> "OracleTeacher":
        """The same oracle over the world of source ``spec`` (``synthetic[:SEED][?shifts=...]``).

        Why: an oracle renders labels from the stream time, not from the pixels, so one built for
        ``synthetic:0`` labels a ``synthetic:1`` clip with world 0's truth (about 73 % agreement
        with that clip's truth where its own oracle gives 95 %). A clip is always labelled by the
        oracle of the world it shows, as the demo does per robot."""
        if spec == self.spec:
            return self
        return OracleTeacher(spec=spec, noise=self.noise, seed=self.seed)

    def world(self, width: int, height: int) -> SyntheticWorld:
        key = (width, height)
        if key not in self._worlds:
            self._worlds[key] = world_from_spec(self.spec, width=width, height=height)
        return self._worlds[key]

    def _noisy(self, gt: np.ndarray) -> np.ndarray:
        if self.noise <= 0:
            return gt.copy()
        rng = np.random.default_rng([self.seed, self._calls])
        self._calls += 1
        out = gt.copy()
        k = np.ones((3, 3), np.uint8)
        shifted = cv2.dilate(gt, k) if rng.random() < 0.5 else cv2.erode(gt, k)
        flip = (shifted != gt) & (rng.random(gt.shape) < 0.5)
        out[flip] = shifted[flip]
        h, w = gt.shape
        for _ in range(int(round(self.noise * 25))):
            r = max(1, int(min(h, w) * rng.uniform(0.02, 0.05)))
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            cv2.circle(out, (cx, cy), r, int(rng.integers(0, len(SYNTHETIC_CLASSES))), -1)
        return out

    def label(self, images: list[np.ndarray], stamps: list[float] | None = None) -> list[np.ndarray]:
        out = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            world = self.world(w, h)
            if stamps is not None:
                gt = world.labels_at(float(stamps[i]))
            else:
                gt = world.lookup_labels(img)
                if gt is None:
                    raise ValueError("oracle teacher: frame not rendered by this world; pass its stream time as stamps")
            out.append(self._noisy(gt))
        return out


def teacher_for_source(teacher, spec: str):
    """The teacher that labels source ``spec``: an oracle follows the synthetic world the source
    shows (:meth:`OracleTeacher.for_world`); any other teacher labels every source itself."""
    if isinstance(teacher, OracleTeacher) and spec.startswith("synthetic"):
        return teacher.for_world(spec)
    return teacher


def _oracle_factory(arg: str, label_space=None) -> OracleTeacher:
    """``oracle[:SEED][?shifts=...]`` -> an oracle over the matching synthetic world."""
    return OracleTeacher(spec="synthetic" + (f":{arg}" if arg and not arg.startswith(("?", ":")) else arg))


# the world's oracle is a teacher spec (``oracle[:SEED]``) as soon as the world is imported
# (importing anything of ams_ros.core.sources does: its __init__ imports this module)
register_teacher_factory("oracle", _oracle_factory)
