"""Label spaces: class names, palettes, class restriction and colour rendering.

Teachers, students, metrics and the ROS nodes exchange plain ``uint8`` label maps (``255`` =
ignore); a :class:`LabelSpace` says what the ids mean. AMS restricts training and evaluation to a
video's selected classes (reference notes), so :meth:`LabelSpace.restrict` returns both the
smaller space and the lookup table that remaps full-space ids into it.

Built in: ``cityscapes``, ``voc``, ``camvid`` and ``synthetic`` (the classes of the synthetic world
in :mod:`ams_ros.core.sources.synthetic`, defined here so that a student of that world needs no
import of the world). Other modules add spaces with :func:`register_label_space`;
:func:`get_label_space` also accepts ``"base[a,b,c]"`` for a restricted space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import cv2
import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """Names and display colours of the class ids ``0 .. N-1`` of one label map convention."""

    name: str
    class_names: tuple[str, ...]
    colors: np.ndarray = field(repr=False)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        colors = np.array(self.colors, dtype=np.uint8).reshape(-1, 3)
        if len(names) != colors.shape[0]:
            raise ValueError(f"label space '{self.name}': {len(names)} names but {colors.shape[0]} colours")
        if len(set(names)) != len(names):
            raise ValueError(f"label space '{self.name}': duplicate class names")
        if not 0 < len(names) <= 255 or self.ignore_index < len(names):
            raise ValueError(f"label space '{self.name}': ids must fit below ignore_index {self.ignore_index}")
        colors.setflags(write=False)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "colors", colors)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.class_names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSpace):
            return NotImplemented
        return (self.name, self.class_names, self.ignore_index) == (
            other.name, other.class_names, other.ignore_index
        ) and np.array_equal(self.colors, other.colors)

    def __hash__(self) -> int:
        return hash((self.name, self.class_names, self.ignore_index))

    def index(self, class_name: str) -> int:
        """Id of ``class_name``; a ValueError lists the valid names."""
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise ValueError(
                f"'{class_name}' is not a class of label space '{self.name}' "
                f"(classes: {', '.join(self.class_names)})"
            ) from None

    def restrict(self, selected_names: Sequence[str]) -> tuple["LabelSpace", np.ndarray]:
        """The space of only ``selected_names`` (in that order) and a ``uint8[256]`` LUT.

        ``lut[full_id]`` is the restricted id, or ``ignore_index`` for every other id (including
        ``ignore_index`` itself), so ``lut[labels]`` remaps a whole label map in one gather.
        """
        selected = [str(s).strip() for s in selected_names]
        if not selected:
            raise ValueError("restrict() needs at least one class name")
        if len(set(selected)) != len(selected):
            raise ValueError(f"duplicate class names in selection {selected}")
        ids = [self.index(n) for n in selected]
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        lut[ids] = np.arange(len(ids), dtype=np.uint8)
        space = LabelSpace(f"{self.name}[{','.join(selected)}]", tuple(selected), self.colors[ids], self.ignore_index)
        return space, lut


# --------------------------------------------------------------------------------------------
# Built-in spaces
# --------------------------------------------------------------------------------------------

CITYSCAPES = LabelSpace(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
     "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
     "motorcycle", "bicycle"),
    np.array([
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ], dtype=np.uint8),
)


def _voc_palette(n: int) -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved class ids)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


VOC = LabelSpace(
    "voc",
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
     "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
     "train", "tvmonitor"),
    _voc_palette(21),
)

CAMVID = LabelSpace(
    "camvid",
    ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
     "bicyclist"),
    np.array([
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ], dtype=np.uint8),
)
CAMVID_VOID = 11
"""Id of 'void' in the CamVid label files; not a class (treat as ignore)."""

CAMVID_TO_CITYSCAPES: dict[str, int] = {
    "sky": 10, "building": 2, "pole": 5, "road": 0, "sidewalk": 1, "tree": 8, "sign": 7,
    "fence": 4, "car": 13, "pedestrian": 11, "bicyclist": 12,
}
"""CamVid class name -> Cityscapes train id (bicyclist -> rider; the bicycle itself is 18)."""

CITYSCAPES_TO_CAMVID: dict[str, str] = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "building",
    "fence": "fence", "pole": "pole", "traffic light": "sign", "traffic sign": "sign",
    "vegetation": "tree", "sky": "sky", "person": "pedestrian", "rider": "bicyclist",
    "car": "car", "truck": "car", "bus": "car", "train": "car", "motorcycle": "bicyclist",
    "bicycle": "bicyclist",
}
"""Cityscapes class -> CamVid class following CamVid's 32->11 grouping; terrain has no match."""


def _names_lut(src: LabelSpace, dst: LabelSpace, mapping: dict[str, int | str]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for name, target in mapping.items():
        lut[src.index(name)] = target if isinstance(target, int) else dst.index(target)
    return lut


CAMVID_TO_CITYSCAPES_LUT = _names_lut(CAMVID, CITYSCAPES, CAMVID_TO_CITYSCAPES)
CITYSCAPES_TO_CAMVID_LUT = _names_lut(CITYSCAPES, CAMVID, CITYSCAPES_TO_CAMVID)


def camvid_to_cityscapes(labels: np.ndarray) -> np.ndarray:
    """CamVid label map (void 11 included) -> Cityscapes train ids, unmapped -> 255."""
    return remap(labels, CAMVID_TO_CITYSCAPES_LUT)


def cityscapes_to_camvid(labels: np.ndarray) -> np.ndarray:
    """Cityscapes train ids -> CamVid ids (e.g. to score a Cityscapes teacher on CamVid)."""
    return remap(labels, CITYSCAPES_TO_CAMVID_LUT)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "person", "car")
SYNTHETIC = LabelSpace("synthetic", SYNTHETIC_CLASSES, np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180], [220, 20, 60], [0, 0, 142]],
    dtype=np.uint8))

LABEL_SPACES: dict[str, LabelSpace] = {s.name: s for s in (CITYSCAPES, VOC, CAMVID, SYNTHETIC)}


def register_label_space(space: LabelSpace, replace: bool = False) -> LabelSpace:
    """Make ``space`` reachable by name; re-registering an equal space is a no-op."""
    key = space.name.lower()
    old = LABEL_SPACES.get(key)
    if old is not None and not replace:
        if old != space:
            raise ValueError(f"a different label space named '{space.name}' is already registered")
        return old
    LABEL_SPACES[key] = space
    return space


def get_label_space(name: str | LabelSpace) -> LabelSpace:
    """A registered space by (case-insensitive) name, or ``"base[a,b]"`` for a restricted one."""
    if isinstance(name, LabelSpace):
        return name
    key = str(name).strip()
    if key.endswith("]") and "[" in key:
        base, _, sel = key[:-1].partition("[")
        return get_label_space(base).restrict([s for s in sel.split(",") if s.strip()])[0]
    key = key.lower()
    if key not in LABEL_SPACES:
        known = sorted(LABEL_SPACES)
        raise ValueError(f"unknown label space '{name}' (known: {', '.join(known)})")
    return LABEL_SPACES[key]


def resolve_label_space(name: str | LabelSpace, selected: Sequence[str] = ()) -> LabelSpace:
    """The space the student predicts: ``name`` restricted to the ``selected`` class names when
    any are given (empty strings, the ROS placeholder for an empty list, are ignored). The edge,
    the server, the demo and ``ams-eval`` all resolve the student's classes here."""
    space = get_label_space(name)
    names = [s for s in selected if s]
    return space.restrict(names)[0] if names else space


def parse_class_list(text: str) -> list[str]:
    """``"road, car,sky"`` -> ``["road", "car", "sky"]`` (command-line class lists)."""
    return [c.strip() for c in str(text or "").split(",") if c.strip()]


# --------------------------------------------------------------------------------------------
# Label map helpers
# --------------------------------------------------------------------------------------------


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label ids must lie in 0..255, got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    return labels


def remap(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[labels]`` as uint8 (``lut`` has 256 entries, e.g. from :meth:`LabelSpace.restrict`)."""
    lut = np.asarray(lut, dtype=np.uint8)
    if lut.shape != (256,):
        raise ValueError(f"a label LUT has 256 entries, got shape {lut.shape}")
    return lut[_check_labels(labels)]


def remap_to_selected(labels: np.ndarray, space: LabelSpace, selected: Sequence[str]) -> np.ndarray:
    """Full-space labels -> ids of the ``selected`` classes, everything else ignore."""
    return remap(labels, space.restrict(selected)[1])


def _palette_lut(space: LabelSpace) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)  # ids outside the space (and 255) render black
    lut[: space.num_classes] = space.colors
    return lut


def colorize(labels: np.ndarray, space: LabelSpace) -> np.ndarray:
    """H x W x 3 uint8 RGB rendering of a label map; ignore and unknown ids are black."""
    return _palette_lut(space)[_check_labels(labels)]


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an RGB image: ``(1 - alpha) * image + alpha * mask``.

    A mask of another size is resized (nearest) onto the image so that a low-resolution
    prediction can be shown on the full camera frame.
    """
    image = np.asarray(image)
    mask = np.asarray(color_mask)
    if image.ndim != 3 or image.shape[2] != 3 or mask.ndim != 3 or mask.shape[2] != 3:
        raise ValueError(f"overlay() takes two H x W x 3 images, got {image.shape} and {mask.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if mask.shape[:2] != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = image.astype(np.float32) * (1.0 - alpha) + mask.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def labels_from_colors(color_image: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Invert :func:`colorize`: exact palette colours -> ids, any other colour -> ignore.

    Reads colour-coded annotations such as Cityscapes ``gtFine_color.png`` (RGB order).
    """
    img = np.asarray(color_image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an H x W x 3 colour image, got {img.shape}")
    key = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
    out = np.full(key.shape, space.ignore_index, dtype=np.uint8)
    for i, (r, g, b) in enumerate(space.colors.astype(np.int32)):
        out[key == ((r << 16) | (g << 8) | b)] = i
    return out


def class_histogram(labels: np.ndarray, space: LabelSpace) -> dict[str, int]:
    """Pixel count per class name (ignore excluded); handy in logs and tests."""
    counts = np.bincount(_check_labels(labels).reshape(-1), minlength=256)
    return {n: int(counts[i]) for i, n in enumerate(space.class_names) if counts[i]}


def known_label_spaces() -> Iterable[str]:
    return sorted(LABEL_SPACES)
