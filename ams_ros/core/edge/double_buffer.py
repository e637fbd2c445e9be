"""The edge's running model and an inactive copy, so an update never stalls inference.

Updates are verified and decoded by :mod:`ams_ros.core.wire.encodings` (the wire format), then
written into the inactive copy, which is swapped in with one reference assignment. The model
patcher node, the evaluation harness's emulated edge and ``ams-bench`` all use this class.

Both copies live on the model's device (a Jetson's GPU, or the CPU): an update's indices and
values cross to the device once and are written with one ``index_copy_`` into each copy, whose
parameters live in one flat buffer (the same device buffers serve the catch-up write of the other
copy), and a swap is a
reference assignment, so the model never travels between host and device after start-up.

With a fast inference runtime (:mod:`ams_ros.core.edge.runtimes`, issue #30) each copy also has a
*runner* (an ONNX Runtime session, an OpenVINO compiled model, a TensorRT engine) built from its
tensors. The PyTorch copies stay the source of truth: after an update is written into the inactive
copy, that copy's runner is rebuilt (or refitted with the tensors the update touched) on the
patcher's thread, and the model, its runner and its version are swapped in with one assignment. A
rebuild that fails rejects the update like a failed write: the inactive copy is restored from the
active one and the running model, runner and version stay as they were.

Right after a swap the inactive copy still holds the previous version (the update is written into it
only with the next one), so stepping back from an update that made the robot worse (issue #29,
:mod:`ams_ros.core.edge.swap_watch`) is the same one assignment as the swap: :meth:`step_back`.
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ams_ros.core.edge.onnx_export import touched_tensors
from ams_ros.core.edge.runtimes import Runner, Runtime, TorchRuntime
from ams_ros.core.models.params import FlatAccessor, SortedWrite
from ams_ros.core.wire.update import EncodedUpdate, ModelLayout, UpdateError
from ams_ros.core.edge.chain_sync import check_version_step
from ams_ros.core.wire.encodings import decode_update


class DoubleBufferedModel:
    """The edge's running model and an inactive copy.

    Updates are written into the inactive copy, which is then swapped in with one reference
    assignment: inference never blocks on a patch and never sees a half-written model. The
    copy that was swapped out is brought up to date lazily, before the next update, and only
    once no inference still runs on it (readers hold it through :meth:`use`).
    """

    def __init__(self, model: nn.Module, version: int = 0, runtime: Runtime | None = None) -> None:
        """``model`` is already on its device (``model.to(device)``); the copy is made there. ``runtime``
        (default: eager PyTorch, where the model is its own runner) builds each copy's runner."""
        model.eval()
        self.runtime = runtime if runtime is not None else TorchRuntime()
        self._inactive = copy.deepcopy(model)
        self._runners: dict[int, Runner] = {id(model): self.runtime.build(model),
                                            id(self._inactive): self.runtime.build(self._inactive)}
        # graph names of the tensors changed in a copy since its runner was built (None: unknown, rebuild all)
        self._stale: dict[int, set[str] | None] = {id(model): set(), id(self._inactive): set()}
        self._state: tuple[nn.Module, int, Runner] = (model, int(version), self._runners[id(model)])
        # (issue #29) the version the inactive copy still holds right after a swap (None once it was
        # written, or after a step back), and whether that copy must be made equal to the active one
        # before the next write (a step back leaves the rejected weights in it)
        self._previous_version: int | None = None
        self._dirty = False
        # both copies in flat storage: an update is one read and one write per copy (issue #10)
        self._writers = {id(model): FlatAccessor(model, flatten=True),
                         id(self._inactive): FlatAccessor(self._inactive, flatten=True)}
        self._readers = {id(model): 0, id(self._inactive): 0}
        self._readers_cv = threading.Condition()
        self._catch_up: list[SortedWrite] = []  # on the device
        self._lock = threading.Lock()
        self.layout = ModelLayout.of(model)
        self.synced = False  # True once an update or snapshot was applied (see check_version_step)
        # versions one catch-up update (the server's union of several phases' changes, marked
        # ``catch_up``, which the checksum and signature cover) may skip; every other sparse update: 1
        self.max_catch_up_span = 64

    @property
    def active(self) -> nn.Module:
        """The model inference should use now (a plain reference read)."""
        return self._state[0]

    @property
    def runner(self) -> Runner:
        """The runner of :attr:`active` (the model itself in eager PyTorch)."""
        return self._state[2]

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
    def use(self) -> Iterator[Runner]:
        """Hold the active model for one inference and give its runner (called like the model: image
        tensor in, logits out); the patcher will not write into it meanwhile."""
        with self.use_versioned() as (runner, _):
            yield runner

    @contextmanager
    def use_versioned(self) -> Iterator[tuple[Runner, int]]:
        """:meth:`use`, with the version of the weights the runner computes (read in the same step)."""
        with self._readers_cv:
            model, version, runner = self._state
            self._readers[id(model)] += 1
        try:
            yield runner, version
        finally:
            self._release(model)

    @contextmanager
    def use_previous(self) -> Iterator[Runner | None]:
        """The previous version's runner while the other copy still holds it (right after a swap),
        held like :meth:`use` so the patcher does not write into that copy meanwhile; ``None`` when
        the other copy holds no previous version or the patcher is busy with it (never a wait)."""
        target = None
        if self._lock.acquire(blocking=False):
            try:
                if self._previous_version is not None:
                    target = self._inactive
                    with self._readers_cv:
                        self._readers[id(target)] += 1
            finally:
                self._lock.release()
        if target is None:
            yield None
            return
        try:
            yield self._runners[id(target)]
        finally:
            self._release(target)

    def _release(self, model: nn.Module) -> None:
        """One reader of ``model`` less (the patcher may be waiting to write into it)."""
        with self._readers_cv:
            self._readers[id(model)] -= 1
            self._readers_cv.notify_all()

    def step_back(self, version: int) -> int | None:
        """Swap the previous weights back in when ``version`` is still the running one and the other
        copy still holds its predecessor (no update written into it since): one assignment, as a
        swap, and never a wait (``None`` when the patcher is busy or there is nothing to go back
        to). The rejected weights stay in the other copy until the next update, which first makes
        that copy equal to the running one again. Returns the version now running."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._previous_version is None or self._state[1] != int(version):
                return None
            bad, previous = self._state[0], self._inactive
            self._state = (previous, self._previous_version, self._runners[id(previous)])
            self._inactive = bad
            self._catch_up = []
            self._stale[id(previous)] = set()  # its runner was built from exactly these weights
            self._stale[id(bad)] = None
            self._previous_version = None
            self._dirty = True
            return self._state[1]
        finally:
            self._lock.release()

    def apply_update(self, update: EncodedUpdate, reader_timeout_s: float = 5.0, max_span: int = 1) -> int:
        """Verify, write into the inactive copy, swap. Raises UpdateError (model untouched).

        Order (issue #13): the version rule (:func:`check_version_step`; a catch-up update may
        span up to ``max_catch_up_span`` versions, others ``max_span``), then the whole update decoded to arrays and checked, and only then a
        write into the inactive copy; a failure while writing (never expected after the checks)
        restores that copy from the active model before the error propagates, so a half-written
        copy can never be swapped in by the next update."""
        with self._lock:
            span = max(max_span, self.max_catch_up_span) if update.catch_up else max_span
            check_version_step(update, self.version, max_span=span, synced=self.synced)
            active = self._state[0]
            idx, vals = decode_update(update, self.layout, base_reader=self._writers[id(active)].read)
            target = self._inactive
            with self._readers_cv:  # an inference that started before the last swap may still run on it
                if not self._readers_cv.wait_for(lambda: self._readers[id(target)] == 0, timeout=reader_timeout_s):
                    raise UpdateError("inactive model still in use by inference; try again")
            if self._dirty:  # a step back left the rejected weights in this copy
                self._resync_inactive()
                self._dirty = False
            writer = self._writers[id(target)]
            try:
                for prepared in self._catch_up:  # the previous update(s), not yet in this copy
                    writer.write(prepared)
                prepared = writer.prepare(idx, vals)  # one host-to-device copy of indices and values
                writer.write(prepared)
            except Exception as exc:
                self._resync_inactive()
                raise UpdateError(f"writing the update failed ({type(exc).__name__}: {exc}); model unchanged") from exc
            touched = self._touched(idx)
            stale = self._stale[id(target)]
            changed = None if stale is None or touched is None else stale | touched
            try:  # off the inference thread: the running model keeps serving meanwhile
                runner = self.runtime.rebuild(target, self._runners[id(target)], changed)
            except Exception as exc:
                self._resync_inactive()
                raise UpdateError(f"rebuilding the {self.runtime.name} runtime failed ({type(exc).__name__}: "
                                  f"{exc}); model unchanged") from exc
            self._runners[id(target)] = runner
            self._stale[id(target)] = set()
            self._stale[id(active)] = touched  # the active copy lacks this update: its runner is rebuilt with it
            self._catch_up = [prepared]
            self._previous_version = self._state[1]
            self._state = (target, int(update.new_version), runner)  # the swap readers see: one assignment
            self._inactive = active
            self.synced = True
            return self.version

    def _touched(self, idx) -> set[str] | None:
        """The graph names an update's flat indices fall in, for a runtime that refits them (else None)."""
        if not self.runtime.refits:
            return None
        return touched_tensors(self._state[0], idx)

    def _resync_inactive(self) -> None:
        """Make the inactive copy equal to the active model again (after a failed write)."""
        target, active = self._inactive, self._state[0]
        with torch.no_grad():
            for dst, src in zip(target.parameters(), active.parameters()):
                dst.copy_(src)
        self._catch_up = []
        self._previous_version = None  # it holds the running weights now: nothing to step back to
        self._stale[id(target)] = None  # its runner was built from other weights: rebuilt whole next time

    def copies(self) -> tuple[nn.Module, nn.Module]:
        """(active, inactive): for checks that both copies are untouched (tests, the fuzzer)."""
        return self._state[0], self._inactive
