"""sensor_msgs/Image <-> numpy, with cv_bridge when importable and an equivalent otherwise.

ROS 2's cv_bridge is the standard converter on a robot; where it cannot be installed (PyPI has
only a broken ROS 1 port) this module converts the common encodings itself. Both paths return
RGB ``uint8`` arrays and reject unsupported encodings or inconsistent sizes with a clear error.
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


def imgmsg_to_rgb(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to an ``H x W x 3`` RGB uint8 array."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ImageConversionError(
            f"unsupported image encoding '{enc}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"image has an empty size {w}x{h}")
    ch = _CHANNELS[enc]
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


def numpy_to_imgmsg(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Build a ``sensor_msgs/Image`` from ``array`` (``rgb8``/``bgr8``: HxWx3, ``mono8``: HxW)."""
    from sensor_msgs.msg import Image

    arr = np.ascontiguousarray(array, dtype=np.uint8)
    expected = {"rgb8": 3, "bgr8": 3, "mono8": 1}
    if encoding not in expected:
        raise ImageConversionError(f"cannot publish encoding '{encoding}'; use one of {sorted(expected)}")
    if (arr.ndim == 2 and expected[encoding] != 1) or (arr.ndim == 3 and arr.shape[2] != expected[encoding]):
        raise ImageConversionError(f"array of shape {arr.shape} does not match encoding '{encoding}'")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * expected[encoding])
    msg.data = arr.tobytes()
    return msg


def _cv_bridge():
    try:  # pragma: no cover - only on machines with ROS 2's cv_bridge
        from cv_bridge import CvBridge

        return CvBridge()
    except Exception:
        return None


_BRIDGE = _cv_bridge()


def to_rgb(msg: Any) -> np.ndarray:
    """Convert with ROS 2 cv_bridge when present (robots), else with :func:`imgmsg_to_rgb`."""
    if _BRIDGE is not None and msg.encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):  # pragma: no cover
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as exc:
            raise ImageConversionError(f"cv_bridge could not convert the image: {exc}") from exc
    return imgmsg_to_rgb(msg)
