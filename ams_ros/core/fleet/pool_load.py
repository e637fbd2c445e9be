"""The pool's load rules and moves (a mixin of :class:`~ams_ros.core.fleet.pool.SessionPool`).

Each actor's load is the share of wall time it spent labelling and training over
``load_window_s``; an actor busier than ``overload`` hands one robot to the least-loaded one when
that lowers the busier of the two, which robot by the ``placement`` rule (the module doc of
:mod:`~ams_ros.core.fleet.pool`). A move takes the robot's persisted state from one actor and
restores it on the other while the robot's calls wait.
"""

from __future__ import annotations

from typing import Sequence

from ams_ros.core.fleet.pool_config import UTILITY
from ams_ros.core.fleet.pool_events import PoolEvent
from ams_ros.core.fleet.worker import RobotNotHere


class LoadBalancing:
    """Load tracking, rebalancing and moves; uses the pool's state (``assignment``, ``_busy``, ...)."""

    def _record(self, dev: str, busy_s: float) -> None:
        """Book ``busy_s`` of actor time to ``dev`` (the caller holds the condition)."""
        now = self.clock()
        q = self._busy[dev]
        q.append((now, float(busy_s)))
        while q and q[0][0] < now - self.config.load_window_s:
            q.popleft()

    def robot_load(self, dev: str, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._cv:
            return sum(b for t, b in self._busy[dev] if t >= now - self.config.load_window_s) / self.config.load_window_s

    def actor_load(self, idx: int, now: float | None = None) -> float:
        return sum(self.robot_load(d, now) for d in self.robots_on(idx))

    def _least_loaded(self, exclude: Sequence[int] = ()) -> int:
        now = self.clock()
        candidates = [i for i in self.live_actors() if i not in exclude]
        return min(candidates, key=lambda i: (round(self.actor_load(i, now), 3), len(self.robots_on(i)), i))

    def rebalance(self) -> PoolEvent | None:
        """Move one robot off an overloaded actor (busier than ``overload``) to the least-loaded
        one, when that lowers the busier of the two; a robot moves at most once per window."""
        now = self.clock()
        loads = {i: self.actor_load(i, now) for i in self.live_actors()}
        if len(loads) < 2:
            return None
        src = max(loads, key=lambda i: loads[i])
        if loads[src] <= self.config.overload or len(self.robots_on(src)) < 2:
            return None
        dst = min(loads, key=lambda i: (loads[i], len(self.robots_on(i))))
        if dst == src:
            return None
        candidates = []  # (dev, the busier of the two actors' loads after its move): moves that lower it
        for dev in self.robots_on(src):
            if now - self._moved_at.get(dev, float("-inf")) < self.config.load_window_s:
                continue
            r = self.robot_load(dev, now)
            peak = max(loads[src] - r, loads[dst] + r)
            if peak < loads[src]:
                candidates.append((dev, peak))
        if not candidates:
            return None
        utilities = self._utilities([d for d, _ in candidates])
        best, peak = min(candidates, key=lambda c: (utilities.get(c[0], 0.0), round(c[1], 6), c[0]))
        why = f"actor {src} at {loads[src]:.0%} > {self.config.overload:.0%}"
        if utilities and len({round(u, 9) for u in utilities.values()}) > 1:
            why += f"; lowest utility of those whose move lowers it ({utilities[best]:.3g} mIoU/GPU-s)"
        return self.move(best, dst, reason=why)

    def _utilities(self, devs: Sequence[str]) -> dict[str, float]:
        """``placement: utility``: each robot's utility from :attr:`utility` (empty, i.e. all
        equal, under ``load``, without a provider, or when it fails)."""
        if self.config.placement != UTILITY or self.utility is None:
            return {}
        try:
            return {d: float(self.utility(d)) for d in devs}
        except Exception as exc:  # noqa: BLE001 - the load rule still decides
            self.log("warning", f"robot utilities unavailable ({type(exc).__name__}: {exc}); placing by load")
            return {}

    # ------------------------------------------------------------------ moves
    def move(self, dev: str, target: int, reason: str = "") -> PoolEvent | None:
        """Move ``dev``'s session to actor ``target``: its state leaves the old actor and is
        restored on the new one while the robot's calls wait (its labelled samples and chain go
        with it). None when it is already there or moving."""
        with self._cv:
            if dev in self._held or self.assignment[dev] == target or target in self._down:
                return None
            src = self.assignment[dev]
            self._held.add(dev)
        try:
            try:
                state, seq = self._on_actor(src, "remove_robot", dev)
            except RobotNotHere:  # the source died meanwhile and the robot was restored elsewhere
                return None
            reply = self._on_actor(target, "add_robot", dev, state, self.settings[dev])
            with self._cv:
                self.assignment[dev] = target
                self.info[dev] = reply.info
                self._moved_at[dev] = self.clock()
            self._keep(dev, state, reply.info.version, seq)
            event = PoolEvent("move", dev, src, target, int(reply.info.version),
                              f"{dev}: moved from actor {src} to actor {target} at v{reply.info.version} of chain "
                              f"{reply.info.chain_tag} ({len(state)} bytes){': ' + reason if reason else ''}")
        finally:
            with self._cv:
                self._held.discard(dev)
                self._cv.notify_all()
        self.events.append(event)
        self.log("info", event.message)
        return event
