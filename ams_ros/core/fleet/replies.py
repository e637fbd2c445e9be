"""What a pool actor answers (:class:`~ams_ros.core.fleet.worker.PoolWorker`), as typed records.

Every answer about a robot carries :class:`RobotInfo`: the values the server process reads often
(version, chain tag, newest stamp, readiness, buffer size), mirrored by the pool after each call so
that reading them costs no round trip to the actor. All of it is picklable (it crosses Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ams_ros.core.server.session import PhaseOutcome, Resync


@dataclass(frozen=True)
class RobotInfo:
    """A robot's session as the server process mirrors it."""

    device_id: str
    version: int
    chain_tag: str
    latest_t: Optional[float]
    new_samples: int
    min_samples: int
    update_period_s: float
    horizon_s: float
    phase: int
    buffered: int
    downlink_kbps: Optional[float]
    downlink_budget_kbps: float
    discarded_phases: int = 0  # (issue #29) phases the gate kept from shipping, and why the last one
    last_discard: str = ""
    unjudged_phases: int = 0  # (issue #29) phases shipped unjudged across a scene change, and why the last one
    last_unjudged: str = ""
    refused_batches: int = 0  # (issue #29) batches (and frames) the label checks kept from training, and why
    refused_frames: int = 0
    last_refusal: str = ""

    def ready(self) -> bool:
        """Enough new labelled samples for a phase."""
        return self.new_samples >= max(1, self.min_samples)


@dataclass(frozen=True)
class AddReply:
    """``add_robot``: whether the given state restored (else why, and the robot started a new chain)."""

    info: RobotInfo
    resumed: bool
    error: str
    kind: str  # why a state was refused: "corrupt" | "foreign" | "" (see session_store)
    seq: int  # the last frame batch the restored state holds (-1: none)


@dataclass(frozen=True)
class LabelReply:
    info: RobotInfo
    frames: int
    busy_s: float


@dataclass(frozen=True)
class PhaseReply:
    """One robot's phase: its outcome (None: nothing to train, or stopped), or the error that undid it;
    the robot's persisted state after it (None when no phase ran) and the last batch in that state."""

    info: RobotInfo
    outcome: Optional[PhaseOutcome]
    error: Optional[Exception]
    busy_s: float
    state: Optional[bytes]
    seq: int


@dataclass(frozen=True)
class ResyncReply:
    """A resync answer, and the robot's state when it changed the chain's floor (must persist)."""

    info: RobotInfo
    resync: Resync
    state: Optional[bytes]


@dataclass(frozen=True)
class CommandReply:
    info: RobotInfo
    command: Optional[tuple[float, float, float]]


@dataclass(frozen=True)
class Ping:
    name: str
    pid: int
    robots: tuple[str, ...]
    device: str
