"""Camera pixels in every supported ROS encoding become the same RGB image; anything that does
not fit is an ImageConversionError naming the reason (never an OpenCV error that would escape
the segmenter's callback)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ams_ros.core.sources.pixel_formats import ImageConversionError, image_to_rgb

RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def msg(encoding: str, pixels: np.ndarray, width: int | None = None, step: int | None = None, big: bool = False):
    h = pixels.shape[0]
    w = width if width is not None else pixels.shape[1]
    data = pixels.tobytes()
    return SimpleNamespace(encoding=encoding, width=w, height=h, step=step if step is not None else len(data) // max(h, 1),
                           is_bigendian=int(big), data=data)


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1].copy()), ("8UC3", RGB[:, :, ::-1].copy()),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 255, np.uint8)])),
])
def test_colour_encodings_give_the_same_rgb(encoding, pixels):
    assert np.array_equal(image_to_rgb(msg(encoding, pixels)), RGB)


def test_mono16_keeps_the_high_byte_in_either_byte_order():
    px = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)
    for big in (False, True):
        raw = px.astype(">u2" if big else "<u2")
        out = image_to_rgb(msg("mono16", raw.view(np.uint8).reshape(6, 16), width=8, big=big))
        assert np.array_equal(out[:, :, 0], (px >> 8).astype(np.uint8)) and out.shape == (6, 8, 3)


def test_padded_rows_are_cropped_to_the_width():
    padded = np.zeros((6, 8 * 3 + 4), np.uint8)
    padded[:, :24] = RGB.reshape(6, 24)
    assert np.array_equal(image_to_rgb(msg("rgb8", padded, width=8, step=28)), RGB)


def test_yuv422_decodes_like_opencv():
    packed = np.random.default_rng(1).integers(0, 256, (6, 16), dtype=np.uint8)  # two bytes per pixel
    assert np.array_equal(image_to_rgb(msg("yuyv", packed, width=8)),
                          cv2.cvtColor(packed.reshape(6, 8, 2), cv2.COLOR_YUV2RGB_YUY2))
    assert np.array_equal(image_to_rgb(msg("uyvy", packed, width=8)),
                          cv2.cvtColor(packed.reshape(6, 8, 2), cv2.COLOR_YUV2RGB_UYVY))


@pytest.mark.parametrize("m, reason", [
    (msg("yuv422", np.zeros((4, 14), np.uint8), width=7), "even width"),
    (msg("uyvy", np.zeros((4, 10), np.uint8), width=5), "even width"),
    (msg("rgb8", np.zeros((4, 10), np.uint8), width=8), "does not hold"),
    (msg("jpeg", RGB), "unsupported image encoding 'jpeg'"),
    (msg("rgb8", np.zeros((0, 24), np.uint8), width=8), "empty size"),
])
def test_what_does_not_fit_is_refused_with_the_reason(m, reason):
    with pytest.raises(ImageConversionError, match=reason):
        image_to_rgb(m)


@pytest.mark.parametrize("m, reason", [
    (msg("yuyv", np.zeros((4, 14), np.uint8), width=7), "even width"),
    (msg("yuv422_yuy2", np.zeros((2, 6), np.uint8), width=3), "even width"),
    (msg("bgr8", np.zeros((4, 24), np.uint8), width=8, step=20), "step 20"),
    (msg("mono16", np.zeros((4, 15), np.uint8), width=8), "does not hold"),
])
def test_every_encodings_size_rules_are_checked_before_conversion(m, reason):
    with pytest.raises(ImageConversionError, match=reason):
        image_to_rgb(m)


def test_an_opencv_error_during_conversion_becomes_an_image_conversion_error(monkeypatch):
    import ams_ros.core.sources.pixel_formats as pf

    def boom(*a, **k):
        raise cv2.error("simulated OpenCV failure")

    monkeypatch.setattr(pf.cv2, "cvtColor", boom)
    with pytest.raises(ImageConversionError, match="cv2.error|error: .*simulated"):
        image_to_rgb(msg("bgr8", RGB[:, :, ::-1].copy()))
