"""Raw camera pixels (ROS ``sensor_msgs/Image`` encodings) to RGB arrays, free of ROS.

The nodes convert live messages with it (:mod:`ams_ros.nodes.common.conversions`, through ROS 2's
cv_bridge where that is installed) and the rosbag source reads recorded ones with it; both
get RGB ``uint8`` arrays, and unsupported encodings or inconsistent sizes raise
:class:`ImageConversionError` with the reason instead of an OpenCV error.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC3", "8UC1", "yuv422", "uyvy", "yuv422_yuy2", "yuyv")

_CHANNELS = {"rgb8": 3, "bgr8": 3, "8UC3": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "mono16": 1,
             "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2}


class ImageConversionError(ValueError):
    """The image cannot be converted: unsupported encoding or inconsistent size/step."""


def image_to_rgb(msg: Any) -> np.ndarray:
    """An ``H x W x 3`` RGB uint8 array from anything shaped like ``sensor_msgs/Image``
    (``encoding``, ``width``, ``height``, ``step``, ``is_bigendian``, ``data``): an rclpy message
    or a rosbags one. Raises :class:`ImageConversionError` naming what does not fit.

    Every encoding's size rules (even width for 4:2:2, ``step >= width * bytes per pixel``,
    ``len(data) >= step * height``) are checked before any conversion; an OpenCV or numpy error
    that still came out of one would be turned into :class:`ImageConversionError` too, so a
    camera driver's odd message can never end the node (issue #13)."""
    try:
        return _image_to_rgb(msg)
    except ImageConversionError:
        raise
    except (cv2.error, ValueError, TypeError, AttributeError, OverflowError, MemoryError) as exc:
        raise ImageConversionError(f"cannot convert the '{getattr(msg, 'encoding', '?')}' image: "
                                   f"{type(exc).__name__}: {exc}") from exc


def _image_to_rgb(msg: Any) -> np.ndarray:
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ImageConversionError(
            f"unsupported image encoding '{enc}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"image has an empty size {w}x{h}")
    ch = _CHANNELS[enc]
    if ch == 2 and w % 2:  # 4:2:2 packs two pixels per 4 bytes: an odd width has no valid layout
        raise ImageConversionError(f"'{enc}' images need an even width, got {w}x{h}")
    depth = 2 if enc == "mono16" else 1
    row = w * ch * depth
    step = int(msg.step) or row
    data = msg.data
    buf = np.frombuffer(data if isinstance(data, (bytes, bytearray, memoryview)) else bytes(data), dtype=np.uint8)
    if step < row or buf.size < step * h:
        raise ImageConversionError(
            f"image data of {buf.size} bytes does not hold {w}x{h} '{enc}' pixels (step {step}, need {step * h})"
        )
    rows = buf[: step * h].reshape(h, step)[:, :row]
    if enc == "mono16":
        big = bool(msg.is_bigendian)
        px = rows.copy().view(">u2" if big else "<u2").reshape(h, w)
        mono = (px >> 8).astype(np.uint8)
        return np.repeat(mono[:, :, None], 3, axis=2)
    img = rows.reshape(h, w, ch)
    if enc in ("rgb8",):
        return np.ascontiguousarray(img)
    if enc in ("bgr8", "8UC3"):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if enc == "rgba8":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    if enc == "bgra8":
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if enc in ("mono8", "8UC1"):
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if enc in ("yuv422", "uyvy"):
        return cv2.cvtColor(img, cv2.COLOR_YUV2RGB_UYVY)
    return cv2.cvtColor(img, cv2.COLOR_YUV2RGB_YUY2)
