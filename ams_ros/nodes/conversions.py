"""ams_msgs <-> core dataclasses (the wire format is defined once, in ams_msgs)."""

from __future__ import annotations

from ams_msgs.msg import FrameBatch, ModelUpdate
from ams_ros.core.frame_codec import batch_checksum
from ams_ros.core.update_codec import EncodedUpdate
from ams_ros.nodes.common import stamp_to_ns


def frame_batch_checksum(msg: FrameBatch) -> str:
    """The checksum a FrameBatch carries (what the edge sets and the server verifies)."""
    return batch_checksum(msg.codec, msg.width, msg.height, [stamp_to_ns(s) for s in msg.frame_stamps], bytes(msg.data))


def update_to_msg(update: EncodedUpdate, device_id: str, stamp=None, phase: int = 0,
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
    msg.auth_tag = bytes(update.auth_tag)
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
        auth_tag=bytes(msg.auth_tag),
    )
