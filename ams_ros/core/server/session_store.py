"""Persisted robot sessions: a server restart keeps each robot's chain and its adaptation.

Without this, a restarted base station starts every robot over from the initial weights on a
new chain (issue #13: v13 vs v28 undisturbed, mIoU 0.401 vs 0.478). With a ``state_dir`` the
server writes each :class:`~ams_ros.core.server.session.RobotSession` after every phase and at
shutdown, and resumes it at start-up: the student's weights, Adam state, selection guide
(last phase's update), phase count and random streams, version, chain tag, the changed
coordinates of the last phases (for catch-up updates), rate-control state and the labelled
sample buffer (what the horizon still holds), so the next phase trains as if nothing happened
and the robot, which kept running, continues with sparse updates.

One file per robot, ``<device>.session``::

    b"AMS-SESSION\\n" + header (one JSON line: format, device_id, fingerprint, payload_bytes,
    sha256 of the payload, version, chain_tag) + b"\\n" + payload (torch.save of tensors, numpy-free
    plain dicts and lists, loaded with ``torch.load(weights_only=True)``: no code runs on load)

Writes are atomic: a temporary file in the same folder, fsync, rename over the old file, fsync
the folder, so a crash leaves the old or the new file, never half of one. A file that is torn
or corrupt (bad magic, header, length or checksum, or a payload that does not restore) or
foreign (another format version, model fingerprint or robot) is renamed aside with a suffix
(``.corrupt-<UTC time>`` / ``.foreign-<UTC time>``) and the robot starts a fresh chain: a
session is restored whole or not at all.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ams_ros.core.models.params import fingerprint
from ams_ros.core.server.session import RobotSession, SessionConfig

MAGIC = b"AMS-SESSION\n"
FORMAT = 1
SUFFIX = ".session"


class SessionFileError(ValueError):
    """A state file that cannot be resumed; ``kind`` is "corrupt" (torn, damaged) or "foreign"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------- state <-> dict
def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).clone()


def session_state(session: RobotSession) -> dict[str, Any]:
    """Everything a resumed session needs, as tensors and plain Python values (a consistent
    picture: taken under the phase lock, so never half a phase)."""
    with session.lock:
        trainer = session.trainer.state_dict(include_model=True)
        trainer["config"] = json.dumps(trainer["config"], default=list)  # plain string: no tuples to unpickle
        with session.trainer.buffer._lock:
            entries = list(session.trainer.buffer._entries)
        with session._rate_lock:
            rate, period = session.rate, session.period
            rate_state = {
                "rate": float(rate.rate), "phis": [float(p) for p in rate._phis],
                "prev": None if rate._prev is None else _t(rate._prev),
                "last_update_t": rate._last_update_t, "last_phi": float(rate.last_phi),
                "period_rates": [float(r) for r in period._rates], "period_s": float(period.period_s),
                "update_period_s": float(session.update_period_s),
            }
        return {
            "format": FORMAT,
            "device_id": session.device_id,
            "fingerprint": fingerprint(session.model),
            "version": int(session.version),
            "chain_tag": session.chain_tag,
            "history": [(int(v), _t(idx), None if before is None else _t(before)) for v, idx, before in session.history],
            "rollbacks": int(session.rollbacks),
            "discarded_phases": int(session.discarded_phases), "last_discard": session.last_discard,
            "unjudged_phases": int(session.unjudged_phases), "last_unjudged": session.last_unjudged,
            "refused_batches": int(session.refused_batches), "refused_frames": int(session.refused_frames),
            "last_refusal": session.last_refusal,
            "label_checks": [bool(session.label_checks.seen_varied), int(session.label_checks.one_class_run)],
            "new_samples": int(session.new_samples),
            "latest_t": session.latest_t,
            "diverged_phases": int(session.diverged_phases),
            "trainer": trainer,
            "rate": rate_state,
            "buffer": {"t": [float(e.t) for e in entries], "frames": [_t(e.frame) for e in entries],
                       "labels": [_t(e.label) for e in entries]},
        }


def restore_session_state(session: RobotSession, state: dict[str, Any]) -> None:
    """Load :func:`session_state`'s dict into a freshly built ``session`` (raises on anything
    that does not fit; the caller then throws that session away)."""
    if state.get("format") != FORMAT:
        raise SessionFileError("foreign", f"state format {state.get('format')!r}, this server reads {FORMAT}")
    if state.get("fingerprint") != fingerprint(session.model):
        raise SessionFileError("foreign", "state was saved for another student architecture")
    trainer = dict(state["trainer"])
    trainer["config"] = json.loads(trainer["config"])
    session.trainer.load_state_dict(trainer)
    buf = state["buffer"]
    if not len(buf["t"]) == len(buf["frames"]) == len(buf["labels"]):
        raise SessionFileError("corrupt", "sample buffer lists differ in length")
    session.trainer.buffer.clear()
    for t, f, lab in zip(buf["t"], buf["frames"], buf["labels"]):
        session.trainer.buffer.add(float(t), f.numpy(), lab.numpy())
    r = state["rate"]
    with session._rate_lock:
        session.rate.rate = float(r["rate"])
        session.rate._phis.clear()
        session.rate._phis.extend(float(p) for p in r["phis"])
        session.rate._prev = None if r["prev"] is None else r["prev"].numpy().copy()
        session.rate._last_update_t = r["last_update_t"]
        session.rate.last_phi = float(r["last_phi"])
        session.period._rates.clear()
        session.period._rates.extend(float(x) for x in r["period_rates"])
        session.period.period_s = float(r["period_s"])
        session.update_period_s = float(r["update_period_s"])
    with session.lock:
        session.version = int(state["version"])
        session.chain_tag = str(state["chain_tag"])
        session.history.clear()
        for v, idx, *before in state["history"]:  # (files saved before issue #29 hold no values before)
            session.history.append((int(v), idx.numpy().astype(np.int64),
                                    before[0].numpy().astype(np.float32) if before and before[0] is not None else None))
        session.rollbacks = int(state.get("rollbacks", 0))
        session.discarded_phases = int(state.get("discarded_phases", 0))
        session.last_discard = str(state.get("last_discard", ""))
        session.unjudged_phases = int(state.get("unjudged_phases", 0))
        session.last_unjudged = str(state.get("last_unjudged", ""))
        session.refused_batches = int(state.get("refused_batches", 0))
        session.refused_frames = int(state.get("refused_frames", 0))
        session.last_refusal = str(state.get("last_refusal", ""))
        seen_varied, one_class_run = state.get("label_checks", (False, 0))
        session.label_checks.seen_varied, session.label_checks.one_class_run = bool(seen_varied), int(one_class_run)
        session.new_samples = int(state["new_samples"])
        session.latest_t = None if state["latest_t"] is None else float(state["latest_t"])
        session.diverged_phases = int(state["diverged_phases"])


# ---------------------------------------------------------------------------- bytes
def encode_state(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = {"format": FORMAT, "device_id": state["device_id"], "fingerprint": state["fingerprint"],
              "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
              "version": state["version"], "chain_tag": state["chain_tag"]}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def decode_state(data: bytes, device_id: str, model_fingerprint: str) -> dict[str, Any]:
    """Verify and unpickle (weights_only); raises :class:`SessionFileError` naming the fault."""
    if not data.startswith(MAGIC):
        raise SessionFileError("corrupt", "not an AMS session file (bad magic)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise SessionFileError("corrupt", "torn file: the header line does not end")
    try:
        header = json.loads(data[len(MAGIC):end])
    except ValueError as exc:
        raise SessionFileError("corrupt", f"unreadable header: {exc}") from exc
    if header.get("format") != FORMAT:
        raise SessionFileError("foreign", f"state format {header.get('format')!r}, this server reads {FORMAT}")
    if header.get("fingerprint") != model_fingerprint:
        raise SessionFileError("foreign", f"state is for student {str(header.get('fingerprint'))[:12]}..., this "
                                          f"server trains {model_fingerprint[:12]}...")
    if header.get("device_id") != device_id:
        raise SessionFileError("foreign", f"state is robot '{header.get('device_id')}''s, not '{device_id}''s")
    payload = data[end + 1:]
    if len(payload) != header.get("payload_bytes"):
        raise SessionFileError("corrupt", f"torn file: payload holds {len(payload)} bytes, header says "
                                          f"{header.get('payload_bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise SessionFileError("corrupt", "checksum mismatch: the payload was damaged")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise SessionFileError("corrupt", f"payload does not load: {exc}") from exc
    if not isinstance(state, dict):
        raise SessionFileError("corrupt", "payload is not a session state")
    return state


# ---------------------------------------------------------------------------- files
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename over ``path``, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


@dataclass
class LoadResult:
    session: RobotSession
    resumed: bool
    message: str  # what happened, for the log
    warning: bool = False  # the message is a warning (a file was set aside)
    set_aside: str = ""  # where the unusable file went


class SessionStore:
    """One folder of robot sessions (the server's ``state_dir``)."""

    def __init__(self, state_dir: str) -> None:
        if not state_dir:
            raise ValueError("state_dir is empty: pass a folder (or do not build a SessionStore: no persistence)")
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, exist_ok=True)

    def path(self, device_id: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id.strip("/")) or "_"
        return os.path.join(self.state_dir, safe + SUFFIX)

    def save(self, session: RobotSession) -> int:
        """Write ``session`` atomically; returns the file's size in bytes."""
        data = encode_state(session_state(session))
        atomic_write(self.path(session.device_id), data)
        return len(data)

    def set_aside(self, path: str, kind: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest, n = f"{path}.{kind}-{stamp}", 1
        while os.path.exists(dest):
            n += 1
            dest = f"{path}.{kind}-{stamp}-{n}"
        os.replace(path, dest)
        return dest

    def load(self, device_id: str, model: nn.Module, config: SessionConfig | None = None) -> LoadResult:
        """The robot's session: resumed from its file when there is a usable one, else fresh
        (a copy of ``model``; an unusable file is set aside, with a warning)."""
        path = self.path(device_id)
        if not os.path.exists(path):
            return LoadResult(RobotSession(device_id, copy.deepcopy(model), config), False,
                              f"{device_id}: no saved session in {self.state_dir}; starting a new chain")
        try:
            with open(path, "rb") as f:
                data = f.read()
            state = decode_state(data, device_id, fingerprint(model))
            session = RobotSession(device_id, copy.deepcopy(model), config)
            restore_session_state(session, state)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, never half-load: start fresh
            kind = exc.kind if isinstance(exc, SessionFileError) else "corrupt"
            dest = self.set_aside(path, kind)
            fresh = RobotSession(device_id, copy.deepcopy(model), config)
            return LoadResult(fresh, False, f"{device_id}: saved session {path} is {kind} ({exc}); set it aside as "
                                            f"{dest} and started a new chain {fresh.chain_tag} at v0", True, dest)
        return LoadResult(session, True, f"{device_id}: resumed chain {session.chain_tag} at v{session.version} "
                                         f"(phase {session.trainer.phase}, {len(session.trainer.buffer)} buffered "
                                         f"samples) from {path}")
