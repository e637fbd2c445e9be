"""A sparse model update as it travels: :class:`EncodedUpdate` (the mirror of ``ams_msgs/ModelUpdate``),
its checksum and size, what verification knows of a model (:class:`ModelLayout`), and the errors every
decoder raises (the model is never touched when one is raised).

The encodings live in :mod:`ams_ros.core.wire.encodings`; signatures (Ed25519) in
:mod:`ams_ros.core.security.signing`; the robot's version rule in :mod:`ams_ros.core.edge.chain_sync`;
the server's side (what it keeps, what it ships) in :mod:`ams_ros.core.server.shipping`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from torch import nn

from ams_ros.core.models.params import fingerprint, param_layout


class UpdateError(ValueError):
    """An update failed verification; the model was not modified."""


class StaleUpdateError(UpdateError):
    """The update would not move the robot forward: a replayed, forged or out-of-order one."""


class VersionGapError(UpdateError):
    """The update does not apply on top of the version the edge runs."""

    def __init__(self, base: int, current: int) -> None:
        super().__init__(f"update applies on top of v{base} but this model is v{current} (gap in the version chain)")
        self.base = base
        self.current = current


@dataclass
class EncodedUpdate:
    """Mirror of ``ams_msgs/ModelUpdate`` (without header/device)."""

    fingerprint: str
    base_version: int
    new_version: int
    full_snapshot: bool
    encoding: str
    num_params: int
    indices_blob: bytes
    values_blob: bytes
    num_selected: int
    checksum: str = ""
    signature: bytes = b""
    # the server-side version chain this update belongs to (see ModelUpdate.msg); "" = untagged
    chain_tag: str = ""
    # (issue #13) a catch-up update: one sparse update that takes a robot a few versions behind
    # from base_version straight to new_version (the union of the changes in between); the only
    # sparse update allowed to span more than one version (see ModelUpdate.msg)
    catch_up: bool = False
    # (issue #13) id of the Ed25519 key whose signature ``signature`` holds (ams_ros.core.security.signing)
    signer_key_id: str = ""

    def compute_checksum(self) -> str:
        h = hashlib.sha256()
        for part in (self.fingerprint, str(self.base_version), str(self.new_version), str(int(self.full_snapshot)),
                     self.encoding, str(self.num_params), str(self.num_selected)):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(hashlib.sha256(self.indices_blob).digest())
        h.update(hashlib.sha256(self.values_blob).digest())
        if self.catch_up:  # covered only when set, so every other update's checksum is unchanged
            h.update(b"catch_up\x00")
        return h.hexdigest()

    @property
    def wire_bytes(self) -> int:
        return len(self.indices_blob) + len(self.values_blob)


def encoded_size(update: EncodedUpdate) -> int:
    """Bytes on the wire: blobs plus the fixed header fields (fingerprint, versions, checksum)."""
    return update.wire_bytes + 64 + 64 + 8 * 5 + len(update.encoding) + len(update.signature)


def tensor_offsets(model_or_layout) -> np.ndarray:
    """Flat offset of each parameter tensor (the tensors the quantised coders scale separately)."""
    layout = param_layout(model_or_layout) if isinstance(model_or_layout, nn.Module) else model_or_layout
    return np.array([s.offset for s in layout], dtype=np.int64)


@dataclass(frozen=True)
class ModelLayout:
    """What verification needs to know about a model, computed once per model."""

    fingerprint: str
    num_params: int
    offsets: np.ndarray

    @classmethod
    def of(cls, model: nn.Module) -> "ModelLayout":
        return cls(fingerprint(model), sum(p.numel() for p in model.parameters()), tensor_offsets(model))
