"""Label spaces: palettes, restriction LUTs, remapping and rendering."""

from __future__ import annotations

import numpy as np
import pytest

from ams_ros.core.models.labels import (
    CAMVID, CAMVID_TO_CITYSCAPES, CITYSCAPES, LABEL_SPACES, VOC, LabelSpace, camvid_to_cityscapes,
    cityscapes_to_camvid, colorize, get_label_space, labels_from_colors, overlay, register_label_space,
    remap, remap_to_selected,
)


def test_builtin_spaces():
    assert (CITYSCAPES.num_classes, VOC.num_classes, CAMVID.num_classes) == (19, 21, 11)
    assert CITYSCAPES.index("road") == 0 and CITYSCAPES.index("bicycle") == 18
    assert tuple(CITYSCAPES.colors[0]) == (128, 64, 128) and tuple(CITYSCAPES.colors[10]) == (70, 130, 180)
    assert tuple(VOC.colors[15]) == (192, 128, 128)  # person in the VOC palette
    assert CAMVID.class_names[3] == "road" and CAMVID.colors.dtype == np.uint8
    for space in (CITYSCAPES, VOC, CAMVID):
        assert len({tuple(c) for c in space.colors}) == space.num_classes  # colours invertible


def test_index_error_lists_classes():
    with pytest.raises(ValueError, match="sidewalk"):
        CITYSCAPES.index("lawn")


def test_restrict_lut_and_remap():
    sub, lut = CITYSCAPES.restrict(["car", "road", "sky"])
    assert sub.class_names == ("car", "road", "sky")
    assert np.array_equal(sub.colors, CITYSCAPES.colors[[13, 0, 10]])
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert (lut[13], lut[0], lut[10]) == (0, 1, 2)
    assert lut[1] == 255 and lut[255] == 255 and (lut != 255).sum() == 3
    labels = np.array([[0, 1, 13], [10, 255, 18]], dtype=np.uint8)
    expected = np.array([[1, 255, 0], [2, 255, 255]], dtype=np.uint8)
    assert np.array_equal(remap(labels, lut), expected)
    assert np.array_equal(remap_to_selected(labels, CITYSCAPES, ["car", "road", "sky"]), expected)
    with pytest.raises(ValueError):
        CITYSCAPES.restrict(["road", "road"])
    with pytest.raises(ValueError):
        remap(labels, lut[:10])


def test_registry_and_restricted_names():
    assert get_label_space("Cityscapes") is CITYSCAPES
    sub = get_label_space("cityscapes[road,car]")
    assert sub.class_names == ("road", "car") and get_label_space(sub.name) == sub
    with pytest.raises(ValueError, match="known:.*cityscapes"):
        get_label_space("mapillary")
    toy = LabelSpace("toy_test_space", ("a", "b"), np.array([[1, 2, 3], [4, 5, 6]]))
    try:
        register_label_space(toy)
        register_label_space(LabelSpace("toy_test_space", ("a", "b"), np.array([[1, 2, 3], [4, 5, 6]])))
        assert get_label_space("toy_test_space") is toy
        with pytest.raises(ValueError, match="already registered"):
            register_label_space(LabelSpace("toy_test_space", ("c",), np.zeros((1, 3))))
    finally:
        LABEL_SPACES.pop("toy_test_space", None)


def test_label_space_validation():
    with pytest.raises(ValueError, match="colours"):
        LabelSpace("bad", ("a", "b"), np.zeros((3, 3)))


def test_colorize_and_inverse():
    labels = np.array([[0, 13], [255, 200]], dtype=np.uint8)
    rgb = colorize(labels, CITYSCAPES)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == (0, 0, 142)
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)
    back = labels_from_colors(rgb, CITYSCAPES)
    assert np.array_equal(back, np.array([[0, 13], [255, 255]], dtype=np.uint8))


def test_overlay_values():
    img = np.full((2, 3, 3), 100, dtype=np.uint8)
    mask = np.zeros((2, 3, 3), dtype=np.uint8)
    mask[..., 0] = 200
    out = overlay(img, mask, alpha=0.25)
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == (125, 75, 75)
    assert np.array_equal(overlay(img, mask, 0.0), img) and np.array_equal(overlay(img, mask, 1.0), mask)
    small = np.full((1, 1, 3), 50, dtype=np.uint8)  # other size: resized onto the image
    assert np.all(overlay(img, small, 0.5) == 75)
    with pytest.raises(ValueError):
        overlay(img, mask, 1.5)


def test_camvid_to_cityscapes():
    camvid = np.arange(12, dtype=np.uint8).reshape(3, 4)  # 0..10 classes, 11 void
    city = camvid_to_cityscapes(camvid)
    for name, cid in CAMVID_TO_CITYSCAPES.items():
        assert city.reshape(-1)[CAMVID.index(name)] == cid
    assert city.reshape(-1)[11] == 255
    # and back: every mapped class returns to itself
    assert np.array_equal(cityscapes_to_camvid(city).reshape(-1)[:11], np.arange(11))
