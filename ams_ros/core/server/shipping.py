"""The base station's side of a sparse update: what it keeps and what it sends.

:func:`ship_update` writes into the server's copy exactly the values the robot will decode (the
encoding's rounding included), so both copies stay identical and the next phase trains on from the
rounded weights, correcting what the rounding moved (error feedback for free); then it encodes.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ams_ros.core.models.params import write_flat
from ams_ros.core.wire.encodings import encode_update, quantize_roundtrip
from ams_ros.core.wire.update import EncodedUpdate, UpdateError


class UnencodableValues(ValueError):
    """New values the update encoding cannot carry (NaN/Inf, or past float16's range)."""

    def __init__(self, bad: int, total: int, encoding: str) -> None:
        super().__init__(f"{bad} of {total} updated parameters are not finite in '{encoding}'")
        self.bad, self.total, self.encoding = bad, total, encoding


def ship_update(model: nn.Module, indices, values, base_version: int, encoding: str,
                base_values=None) -> EncodedUpdate:
    """The server's side of a sparse update, ``base_version`` -> ``base_version + 1``.

    Writes into ``model`` (the server's copy) exactly the values the edge will decode, so both
    copies stay identical and the next update applies on top of the same weights, then encodes
    the raw ``values`` (the edge's decoder runs the same rounding). Residual encodings need
    ``base_values``, the model's values at ``indices`` before training. Raises
    :class:`UnencodableValues`, with ``model`` untouched, when the encoding cannot carry them.
    """
    raw = np.asarray(values, dtype=np.float32).reshape(-1)
    bad = int(np.sum(~np.isfinite(raw)))  # a quantised coder's per-tensor range would be NaN: refuse here
    if bad:
        raise UnencodableValues(bad, raw.size, encoding)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        try:
            decoded = quantize_roundtrip(encoding, model, indices, values, base_values=base_values)
        except UpdateError as exc:  # e.g. a change range past float32: the edge could not decode it either
            raise UnencodableValues(raw.size, raw.size, encoding) from exc
    bad = int(np.sum(~np.isfinite(decoded)))
    if bad:
        raise UnencodableValues(bad, len(decoded), encoding)
    write_flat(model, indices, decoded)
    return encode_update(model, indices, values, base_version=base_version, new_version=base_version + 1,
                         encoding=encoding, base_values=base_values)
