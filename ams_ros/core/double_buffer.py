"""The edge's running model and an inactive copy, so an update never stalls inference.

Updates are verified and decoded by :mod:`ams_ros.core.update_codec` (the wire format), then
written into the inactive copy, which is swapped in with one reference assignment. The model
patcher node, the evaluation harness's emulated edge and ``ams-bench`` all use this class.

Both copies live on the model's device (a Jetson's GPU, or the CPU): an update's indices and
values cross to the device once and are written with one ``index_copy_`` per tensor into each
copy (the same device buffers serve the catch-up write of the other copy), and a swap is a
reference assignment, so the model never travels between host and device after start-up.
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ams_ros.core.params import FlatAccessor, SortedWrite
from ams_ros.core.update_codec import EncodedUpdate, ModelLayout, UpdateError, VersionGapError, decode_update


class DoubleBufferedModel:
    """The edge's running model and an inactive copy.

    Updates are written into the inactive copy, which is then swapped in with one reference
    assignment: inference never blocks on a patch and never sees a half-written model. The
    copy that was swapped out is brought up to date lazily, before the next update, and only
    once no inference still runs on it (readers hold it through :meth:`use`).
    """

    def __init__(self, model: nn.Module, version: int = 0) -> None:
        """``model`` is already on its device (``model.to(device)``); the copy is made there."""
        model.eval()
        self._state: tuple[nn.Module, int] = (model, int(version))
        self._inactive = copy.deepcopy(model)
        self._writers = {id(model): FlatAccessor(model), id(self._inactive): FlatAccessor(self._inactive)}
        self._readers = {id(model): 0, id(self._inactive): 0}
        self._readers_cv = threading.Condition()
        self._catch_up: list[SortedWrite] = []  # on the device
        self._lock = threading.Lock()
        self.layout = ModelLayout.of(model)

    @property
    def active(self) -> nn.Module:
        """The model inference should use now (a plain reference read)."""
        return self._state[0]

    @property
    def device(self):
        """Where both copies live."""
        return self._writers[id(self._state[0])].device

    @property
    def version(self) -> int:
        """Version of :attr:`active` (both change in one assignment)."""
        return self._state[1]

    @property
    def _active(self) -> nn.Module:
        return self._state[0]

    @contextmanager
    def use(self) -> Iterator[nn.Module]:
        """Hold the active model for one inference; the patcher will not write into it meanwhile."""
        with self._readers_cv:
            model = self._active
            self._readers[id(model)] += 1
        try:
            yield model
        finally:
            with self._readers_cv:
                self._readers[id(model)] -= 1
                self._readers_cv.notify_all()

    def apply_update(self, update: EncodedUpdate, reader_timeout_s: float = 5.0) -> int:
        """Verify, write into the inactive copy, swap. Raises UpdateError (model untouched)."""
        with self._lock:
            if not update.full_snapshot and update.base_version != self.version:
                raise VersionGapError(update.base_version, self.version)
            active = self._state[0]
            idx, vals = decode_update(update, self.layout, base_reader=self._writers[id(active)].read)
            target = self._inactive
            with self._readers_cv:  # an inference that started before the last swap may still run on it
                if not self._readers_cv.wait_for(lambda: self._readers[id(target)] == 0, timeout=reader_timeout_s):
                    raise UpdateError("inactive model still in use by inference; try again")
            writer = self._writers[id(target)]
            for prepared in self._catch_up:  # the previous update(s), not yet in this copy
                writer.write(prepared)
            prepared = writer.prepare(idx, vals)  # one host-to-device copy of indices and values
            writer.write(prepared)
            self._catch_up = [prepared]
            old = self._state[0]
            self._state = (target, int(update.new_version))  # the swap readers see: one assignment
            self._inactive = old
            return self.version
