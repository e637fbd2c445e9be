"""ROS messages <-> the core's types: images, stamps, frame batches and model updates.

The wire formats are defined once, in ``ams_msgs``; the algorithms in ``ams_ros.core`` never
see a message. Images go through ROS 2's cv_bridge when it is installed (robots) and through
:func:`ams_ros.core.sources.pixel_formats.image_to_rgb` otherwise (PyPI has only a broken ROS 1 port).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from ams_msgs.msg import FrameBatch, ModelUpdate
from ams_ros.core.wire.frame_codec import batch_checksum
from ams_ros.core.sources.pixel_formats import SUPPORTED_ENCODINGS, ImageConversionError, image_to_rgb
from ams_ros.core.security.signing import batch_signing_input, snapshot_request_signing_input
from ams_ros.core.wire.update import EncodedUpdate

__all__ = [
    "SUPPORTED_ENCODINGS", "ImageConversionError", "frame_batch_checksum", "image_to_rgb", "msg_to_update",
    "numpy_to_imgmsg", "sec_to_stamp", "stamp_to_ns", "stamp_to_sec", "to_rgb", "update_to_msg",
]


# ---------------------------------------------------------------------------- stamps
def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_to_ns(stamp: Time) -> int:
    """A stamp as integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def sec_to_stamp(t: float) -> Time:
    sec = int(t // 1)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=sec, nanosec=nsec)


# ---------------------------------------------------------------------------- images
def numpy_to_imgmsg(array: np.ndarray, encoding: str, header: Any = None) -> Image:
    """Build a ``sensor_msgs/Image`` from ``array`` (``rgb8``/``bgr8``: HxWx3, ``mono8``: HxW)."""
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


def to_rgb(msg: Image) -> np.ndarray:
    """Convert with ROS 2 cv_bridge when present (robots), else with :func:`image_to_rgb`."""
    if _BRIDGE is not None and msg.encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):  # pragma: no cover
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as exc:
            raise ImageConversionError(f"cv_bridge could not convert the image: {exc}") from exc
    return image_to_rgb(msg)


# ---------------------------------------------------------------------------- batches and updates
def frame_batch_checksum(msg: FrameBatch) -> str:
    """The checksum a FrameBatch carries (what the edge sets and the server verifies)."""
    return batch_checksum(msg.codec, msg.width, msg.height, [stamp_to_ns(s) for s in msg.frame_stamps], bytes(msg.data))


def frame_batch_signing_input(msg: FrameBatch, device_id: str | None = None) -> bytes:
    """What a robot signs for a FrameBatch (issue #13); ``device_id`` = the robot whose topic it came on."""
    return batch_signing_input(msg.device_id if device_id is None else device_id, msg.batch_seq, msg.codec,
                               msg.width, msg.height, [stamp_to_ns(s) for s in msg.frame_stamps],
                               msg.sampling_rate, msg.update_period, msg.target_bitrate, bytes(msg.data))


def snapshot_request_input(req, device_id: str | None = None) -> bytes:
    """What a robot signs for a GetModelSnapshot request (issue #13)."""
    return snapshot_request_signing_input(req.device_id if device_id is None else device_id, req.model_fingerprint,
                                          req.have_version, req.encoding, req.have_chain_tag,
                                          req.request_time_ns, bytes(req.nonce))


def update_to_msg(update: EncodedUpdate, device_id: str, stamp: Time | None = None, phase: int = 0,
                  train_seconds: float = 0.0) -> ModelUpdate:
    msg = ModelUpdate()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.device_id = device_id
    msg.model_fingerprint = update.fingerprint
    msg.base_version = int(update.base_version)
    msg.new_version = int(update.new_version)
    msg.full_snapshot = bool(update.full_snapshot)
    msg.encoding = update.encoding
    msg.num_params = int(update.num_params)
    msg.num_selected = int(update.num_selected)
    msg.indices = bytes(update.indices_blob)
    msg.values = bytes(update.values_blob)
    msg.checksum = update.checksum
    msg.signature = bytes(update.signature)
    msg.chain_tag = update.chain_tag
    msg.catch_up = bool(update.catch_up)
    msg.signer_key_id = update.signer_key_id
    msg.phase = int(phase)
    msg.train_seconds = float(train_seconds)
    return msg


def msg_to_update(msg: ModelUpdate) -> EncodedUpdate:
    return EncodedUpdate(
        fingerprint=msg.model_fingerprint,
        base_version=int(msg.base_version),
        new_version=int(msg.new_version),
        full_snapshot=bool(msg.full_snapshot),
        encoding=msg.encoding,
        num_params=int(msg.num_params),
        indices_blob=bytes(msg.indices),
        values_blob=bytes(msg.values),
        num_selected=int(msg.num_selected),
        checksum=msg.checksum,
        signature=bytes(msg.signature),
        chain_tag=msg.chain_tag,
        catch_up=bool(msg.catch_up),
        signer_key_id=msg.signer_key_id,
    )
