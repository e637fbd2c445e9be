"""One robot's session in the pool, seen as the server sees a local one (:class:`PooledSession`)."""

from __future__ import annotations

from typing import Any, Sequence

from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.replies import RobotInfo
from ams_ros.core.server.session import PhaseOutcome, Resync


class PooledSession:
    """One robot's session in the pool, as the server nodes see a local
    :class:`~ams_ros.core.server.session.RobotSession`: the same calls, forwarded to the robot's
    actor; the values read often (version, chain tag, newest stamp, readiness) are mirrored from
    each reply, so reading them costs no round trip. ``config`` is the session settings the
    actors were built with (``downlink`` and the like, for the logs)."""

    def __init__(self, pool: SessionPool, device_id: str, config: Any) -> None:
        self.pool = pool
        self.device_id = device_id
        self.config = config

    @property
    def _info(self) -> RobotInfo:
        return self.pool.info[self.device_id]

    @property
    def version(self) -> int:
        return int(self._info.version)

    @property
    def chain_tag(self) -> str:
        return str(self._info.chain_tag)

    @property
    def latest_t(self) -> float | None:
        return self._info.latest_t

    @property
    def update_period_s(self) -> float:
        return float(self._info.update_period_s)

    @property
    def horizon_s(self) -> float:
        return float(self._info.horizon_s)

    @property
    def discarded_phases(self) -> int:
        return int(self._info.discarded_phases)

    @property
    def last_discard(self) -> str:
        return str(self._info.last_discard)

    @property
    def unjudged_phases(self) -> int:
        return int(self._info.unjudged_phases)

    @property
    def last_unjudged(self) -> str:
        return str(self._info.last_unjudged)

    @property
    def refused_batches(self) -> int:
        return int(self._info.refused_batches)

    @property
    def refused_frames(self) -> int:
        return int(self._info.refused_frames)

    @property
    def last_refusal(self) -> str:
        return str(self._info.last_refusal)

    def ready(self) -> bool:
        return self._info.ready()

    def buffered(self, now: float) -> int:
        return int(self._info.buffered)

    def downlink_kbps(self, now: float) -> float | None:
        return self._info.downlink_kbps

    def add_encoded_batch(self, data: bytes, codec: str, width: int, height: int, stamps: Sequence[float],
                          label: Any = None, limits: Any = None) -> int:
        """Decoded and labelled on the robot's actor, by its teacher and batch limits (``label``
        and ``limits`` are the local session's and unused here)."""
        return self.pool.label(self.device_id, data, codec, width, height, stamps)

    def run_phase(self, now: float | None = None) -> PhaseOutcome | None:
        return self.pool.run_phase(self.device_id)

    def resync(self, have_version: int, have_chain_tag: str = "", encoding: str | None = None) -> Resync:
        return self.pool.resync(self.device_id, have_version, have_chain_tag, encoding)

    def rollback(self, to: int | str, encoding: str | None = None) -> Resync:
        return self.pool.rollback(self.device_id, to, encoding)

    def sampling_command(self, now: float) -> tuple[float, float, float] | None:
        return self.pool.sampling_command(self.device_id, now)

    def reconfigure(self, update_encoding: str | None = None, **trainer_changes: Any) -> bool:
        changes = dict(trainer_changes)
        if update_encoding is not None:
            changes["update_encoding"] = update_encoding
        if changes:
            self.pool.configure(changes, [self.device_id])
        return True

    def configure(self, snapshot_encoding: str | None = None, min_samples: int | None = None) -> None:
        changes = {k: v for k, v in (("snapshot_encoding", snapshot_encoding), ("min_samples", min_samples))
                   if v is not None}
        if changes:
            self.pool.configure(changes, [self.device_id])

    def configure_rate_control(self, rate: Any, adaptive_period: Any, reset: bool = False) -> None:
        self.pool.configure({"rate": rate, "adaptive_period": adaptive_period, "reset": reset}, [self.device_id])

    def student_error(self) -> float | None:
        return self.pool.student_error(self.device_id)
