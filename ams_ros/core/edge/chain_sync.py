"""The robot's side of the version chain: which chain it follows, when it must resync.

Every update and snapshot carries the tag of the server-side chain that made it (a random id a
session draws when created and persists). Version numbers only mean something within one
chain: v13 of a restarted server's new chain is not v13 of the old one. The robot keeps the tag
of the weights it runs and:

- refuses a sparse update of another chain (it would patch weights it does not have) and
  resyncs instead (a snapshot request that names its version and chain);
- refuses a snapshot that would take its version backwards (a stale or replayed one); when
  that snapshot is of another chain, the robot is *ahead* of the server's chain (the server
  lost its state), and it asks again naming its version: the server then raises its chain's
  version above the robot's (the rule in :meth:`RobotSession.resync`), so versions a robot
  runs never go backwards while the server stays the authority on the weights;
- compares each sampling command's ``server_version`` / ``chain_tag`` with what it runs, so a
  lost update is noticed within one command (after ``grace_s``, to let an update in flight
  arrive) instead of one update period later, and a new chain at once.

Untagged updates (``chain_tag`` empty: an older server) are accepted as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ams_ros.core.wire.encodings import is_residual
from ams_ros.core.wire.update import EncodedUpdate, StaleUpdateError, UpdateError, VersionGapError


class ResyncNeeded(UpdateError):
    """The update cannot apply to the weights the robot runs: ask the server to resync."""


@dataclass
class ChainFollower:
    """The chain tag the robot's weights belong to, and a pending "server is ahead" notice."""

    tag: str = ""  # "" = not synced to a tagged chain yet (initial weights)
    _behind_since: float | None = None
    _behind_target: int = 0

    def admit(self, update: EncodedUpdate, have_version: int) -> str:
        """Raises :class:`ResyncNeeded` when ``update`` must not be applied on top of
        ``have_version`` of this chain; returns a warning ("" if none) when it may."""
        tag = update.chain_tag
        if not tag:
            return ""
        if not update.full_snapshot:
            if self.tag and tag != self.tag:
                raise ResyncNeeded(f"update of chain {tag}, but this robot runs chain {self.tag}: the server started "
                                   f"a new chain; resyncing")
            return ""
        if tag == self.tag or not self.tag:
            if update.new_version < have_version:
                raise ResyncNeeded(f"snapshot v{update.new_version} would take this robot back from v{have_version} "
                                   f"(stale or replayed, or the server resumed an older state); asking again")
            return ""
        if update.new_version <= have_version:
            raise ResyncNeeded(f"robot is ahead of the server's chain: it runs v{have_version} of chain {self.tag}, "
                               f"the server offers v{update.new_version} of chain {tag} (the server lost its state); "
                               f"asking again with its version so the server raises its chain above it")
        return (f"switching from chain {self.tag} (v{have_version}) to the server's chain {tag} "
                f"(v{update.new_version}): the server lost this robot's state, its adaptation restarts")

    def accepted(self, update: EncodedUpdate) -> None:
        """``update`` was applied: the robot now follows its chain."""
        if update.chain_tag:
            self.tag = update.chain_tag
        self._behind_since = None

    def on_command(self, server_version: int, chain_tag: str, have_version: int, now: float) -> str:
        """A sampling command's view of the server's chain. Returns a reason to resync now
        ("" = none): another chain, or a robot ahead of the chain. A server ahead is noted and
        reported by :meth:`due` once ``grace_s`` has passed without the update arriving."""
        if not chain_tag:
            return ""
        if chain_tag != self.tag:
            self._behind_since = None
            if not self.tag and server_version == have_version == 0:
                return ""  # both on the initial weights: the first update will tag us
            return (f"server's chain is {chain_tag} at v{server_version}, this robot runs v{have_version} of "
                    f"chain {self.tag or '(none yet)'}")
        if server_version < have_version:
            self._behind_since = None
            return (f"robot is ahead of the server's chain {chain_tag}: it runs v{have_version}, the server is at "
                    f"v{server_version} (it resumed an older state)")
        if server_version > have_version:
            if self._behind_since is None or server_version != self._behind_target:
                self._behind_since, self._behind_target = now, int(server_version)
        else:
            self._behind_since = None
        return ""

    def due(self, have_version: int, now: float, grace_s: float) -> str:
        """A reason to ask for a catch-up when a command said the server was ahead and the
        missing update has not arrived within ``grace_s`` ("" otherwise)."""
        if self._behind_since is None:
            return ""
        if have_version >= self._behind_target:
            self._behind_since = None
            return ""
        if now - self._behind_since < grace_s:
            return ""
        self._behind_since = None
        return (f"server is at v{self._behind_target} of chain {self.tag}, this robot at v{have_version}: "
                f"update(s) lost")


def check_version_step(update: "EncodedUpdate", current_version: int, max_span: int = 1, synced: bool = True) -> None:
    """The one version rule every robot applies before touching its model.

    - a sparse update applies on top of the version the robot runs (``base_version ==
      current_version``, else :class:`VersionGapError`: ask for a snapshot) and moves it forward
      by 1 to ``max_span`` versions (``max_span`` > 1 only for a catch-up update that carries the
      union of several versions' changes);
    - a full snapshot must be newer than the version the robot runs; a robot that has not yet
      applied anything (``synced=False``: its version is a local start value, not a place in the
      server's chain) also takes a snapshot of that same version, so a fresh robot and a fresh
      server (both v0) end up on exactly the weights the server trains.

    Anything else (``new_version <= base_version``, a jump past ``max_span``, an old snapshot
    replayed) raises :class:`StaleUpdateError`, as does a sparse update that ends at or below the
    version the robot runs (a duplicate, a replay of a genuine old update, or one overtaken by a
    catch-up): the robot has it already, so it is not a gap and costs no resync. A catch-up
    (absolute values of every coordinate changed since its base) also applies on a version
    between its base and its end: the robot got one of the versions it covers meanwhile.
    """
    base, new, cur = int(update.base_version), int(update.new_version), int(current_version)
    if max_span < 1:
        raise ValueError(f"max_span must be >= 1, got {max_span}")
    if update.full_snapshot:
        if new < cur or (new == cur and synced):
            raise StaleUpdateError(f"snapshot v{new} is not newer than this model's v{cur} (replayed or out of order)")
        return
    if base != cur:
        if update.catch_up and base < cur < new and new - base <= max_span and not is_residual(update.encoding):
            return  # a catch-up carries absolute values of every coordinate changed since its base: from a
            # version between its base and its end (an update that came in meanwhile) it lands on the same weights
        if base < new <= cur:
            raise StaleUpdateError(f"update v{base}->v{new} is not newer than this model's v{cur} (a duplicate, a "
                                   f"replayed or a late update: already applied)")
        raise VersionGapError(base, cur)
    if not 1 <= new - base <= max_span:
        allowed = f"v{base + 1}" if max_span == 1 else f"v{base + 1}..v{base + max_span}"
        raise StaleUpdateError(f"update v{base}->v{new} must move the version to {allowed}")
