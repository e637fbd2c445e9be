"""The robot's one way in for a model: an update, a catch-up or a snapshot, taken through signature
verification, the chain's admission and the double buffer's version rule and write, with one
:class:`Verdict` out.

The model patcher node and the fuzzer (``make fuzz``) both call :meth:`UpdateReceiver.receive`, so
the fuzzer tests exactly what a robot runs. Nothing that arrives can end the robot: every failure is
a rejection that leaves the running model, the inactive copy and the version as they were; the
verdict says whether to ask the server to resync, and whether the failure was one no check
anticipated (``unexpected``: a malformed input that raised something other than an
:class:`~ams_ros.core.wire.update.UpdateError`, which the fuzzer counts as a crash).
"""

from __future__ import annotations

from dataclasses import dataclass

from ams_ros.core.edge.chain_sync import ChainFollower, ResyncNeeded
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.security.signing import TrustedKeys, verify_update
from ams_ros.core.wire.update import EncodedUpdate, StaleUpdateError, UpdateError, VersionGapError

APPLIED, ALREADY, REJECTED, HELD = "applied", "already", "rejected", "held"
#: where an update came from: the update topic, or the answer to a resync request
UPDATE, SNAPSHOT, RESYNC = "update", "snapshot", "resync"


@dataclass(frozen=True)
class Verdict:
    kind: str  # APPLIED | ALREADY (the robot has it: an update in flight got here first) | REJECTED
    #   | HELD (refused on purpose: the model is frozen, or the robot stepped back from that version)
    before: int  # the model's version before
    version: int  # and after
    reason: str = ""  # why it was rejected
    warning: str = ""  # of an accepted one (e.g. the robot switched to the server's new chain)
    resync: bool = False  # ask the server for a snapshot (a gap, another chain, a robot ahead)
    loud: bool = False  # a rejection worth a warning of its own (the chain moved on)
    unexpected: bool = False  # a failure no check anticipated (counted as a crash by the fuzzer)

    @property
    def applied(self) -> bool:
        return self.kind == APPLIED


class UpdateReceiver:
    """Verifies and applies what the server sends one robot (``device_id``) to its double buffer."""

    def __init__(self, holder: DoubleBufferedModel, device_id: str, trusted: TrustedKeys | None = None,
                 chain: ChainFollower | None = None) -> None:
        self.holder = holder
        self.device_id = device_id
        self.trusted = trusted if trusted is not None else TrustedKeys.parse([])
        self.chain = chain if chain is not None else ChainFollower()
        self.frozen = ""  # (issue #29) why the operator froze the model ("" = not frozen)
        self.stepped_back_from: int | None = None  # a version the robot stepped back from: not taken again

    def step_back(self, version: int, reason: str) -> int | None:
        """Go back from ``version`` to the weights before it (the double buffer's :meth:`step_back`)
        and refuse that version and older ones from now on; the version now running, or None when
        there was nothing to go back to (see :meth:`DoubleBufferedModel.step_back`)."""
        running = self.holder.step_back(version)
        if running is not None:
            self.stepped_back_from = int(version)
        return running

    def receive(self, update: EncodedUpdate, source: str = UPDATE) -> Verdict:
        """``update`` applied, already there, or rejected with the model untouched (see :class:`Verdict`)."""
        holder = self.holder
        before = holder.version
        head = f"{source} v{update.base_version}->v{update.new_version}"
        if self.frozen:
            return Verdict(HELD, before, before, f"{head}: held, the model is frozen ({self.frozen}); the robot "
                                                 f"catches up when it is unfrozen")
        if self.stepped_back_from is not None and update.new_version <= self.stepped_back_from:
            return Verdict(HELD, before, before, f"{head}: held, the robot stepped back from v{self.stepped_back_from} "
                                                 f"and takes a newer version only")
        try:
            verify_update(update, self.device_id, self.trusted)  # SignatureError is an UpdateError
            warning = self.chain.admit(update, before)
            version = holder.apply_update(update)
            self.chain.accepted(update)
        except ResyncNeeded as exc:
            return Verdict(REJECTED, before, holder.version, f"{head}: {exc}", resync=True, loud=True)
        except VersionGapError as exc:
            if source == RESYNC and update.new_version <= holder.version:
                return Verdict(ALREADY, before, holder.version)  # an update in flight got here first
            return Verdict(REJECTED, before, holder.version, f"{head}: {exc}; requesting a full snapshot", resync=True)
        except StaleUpdateError as exc:
            if source != UPDATE and update.full_snapshot and update.new_version == holder.version:
                return Verdict(ALREADY, before, holder.version)  # a resync answered with the version we have
            return Verdict(REJECTED, before, holder.version, f"{head}: {exc}")
        except UpdateError as exc:
            return Verdict(REJECTED, before, holder.version, f"{head}: {exc}")
        except Exception as exc:  # noqa: BLE001 - no input may end the robot; the decoders leave the model as it was
            return Verdict(REJECTED, before, holder.version, f"{head}: malformed ({type(exc).__name__}: {exc})",
                           unexpected=True)
        self.stepped_back_from = None  # a newer version: judged afresh
        return Verdict(APPLIED, before, version, warning=warning)
