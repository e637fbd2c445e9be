"""The pool's recovery of a dead actor (a mixin of :class:`~ams_ros.core.fleet.pool.SessionPool`).

The state of each robot is kept after every phase (and in ``state_dir`` when set), with the
batches labelled since; a call that finds its actor dead, or the monitor's ping, restores its
robots on the least-loaded surviving actors and replays those batches, while a replacement actor
starts in the background (a pool of one actor waits for it).
"""

from __future__ import annotations

import threading
import time

from ams_ros.core.fleet.pool_events import PoolEvent
from ams_ros.core.fleet.transports import ActorGone, ActorRef


class Recovery:
    """Recovery and the monitor; uses the pool's state (``actors``, ``generation``, ``_down``, ...)."""

    def _recover(self, idx: int, generation: int, reason: str = "died") -> None:
        """Handle the death of actor ``idx`` (unless someone already did): restore each of its
        robots from its kept state, with the batches labelled since replayed, on the least-loaded
        surviving actor (warm: no start-up wait), and start a replacement actor in the background
        (rebalancing moves robots onto it when the survivors are overloaded). A pool of one actor
        restores its robots on the replacement, once it is up."""
        with self._recover_lock:
            with self._cv:
                if self.generation[idx] != generation or idx in self._down:
                    return  # already handled
                robots = sorted(d for d, a in self.assignment.items() if a == idx)
                survivors = [i for i in range(len(self.actors)) if i != idx and i not in self._down]
                self._held.update(robots)
                self.generation[idx] = generation + 1
                self._down.add(idx)
                dead = self.actors[idx]
            t0 = time.monotonic()
            utilities = self._utilities(robots)  # outside the lock: the provider is the server's
            robots.sort(key=lambda d: -utilities.get(d, 0.0))  # the most to gain back first
            try:
                dead.kill()
                if not survivors:
                    self._install(idx, self._new_actor(idx, generation + 1))
                for dev in robots:
                    target = self._least_loaded() if survivors else idx
                    self._restore(dev, idx, target, t0, reason)
            finally:
                with self._cv:
                    self._held.difference_update(robots)
                    self._cv.notify_all()
            if not robots:
                self.log("warning", f"actor {idx} {reason} (no robots on it)")
            if survivors:
                t = threading.Thread(target=self._replace, args=(idx, generation + 1), daemon=True,
                                     name=f"session_pool_replace{idx}")
                self._replacers.append(t)
                t.start()

    def _restore(self, dev: str, dead: int, target: int, t0: float, reason: str = "died") -> None:
        with self._cv:
            ref = self.actors[target]
        state, _, _ = self._states[dev]
        reply = ref.call("add_robot", dev, state, self.settings[dev])
        with self._cv:
            replay = [(s, a) for s, a in self._replay[dev] if s > reply.seq]
        for seq, args in replay:
            try:
                reply = ref.call("label", dev, seq, *args)
            except Exception as exc:  # noqa: BLE001 - a batch that failed before fails again
                self.log("warning", f"{dev}: replaying batch {seq} failed: {exc}")
        with self._cv:
            self.info[dev] = reply.info
            self.assignment[dev] = target
        event = PoolEvent("recover", dev, dead, target, int(reply.info.version),
                          f"{dev}: actor {dead} {reason}; restored on actor {target} ({ref.name}) at v{reply.info.version} "
                          f"of chain {reply.info.chain_tag} (+{len(replay)} batches replayed) in "
                          f"{time.monotonic() - t0:.1f} s")
        self.events.append(event)
        self.log("warning", event.message)

    def _install(self, idx: int, ref: ActorRef) -> None:
        with self._cv:
            self.actors[idx] = ref
            self._down.discard(idx)
            self._cv.notify_all()

    def _replace(self, idx: int, generation: int) -> None:
        """Start actor ``idx``'s replacement (retried every check period until it comes up)."""
        while not self._stop.is_set():
            try:
                ref = self._new_actor(idx, generation)
            except Exception as exc:  # noqa: BLE001 - e.g. the cluster lost the node: try again
                self.log("error", f"starting a replacement for actor {idx} failed: {type(exc).__name__}: {exc}")
                self._stop.wait(self.config.check_period_s)
                continue
            # the event before the install: once the actor is installed, wait_all_up returns, and whoever waited
            # must find the event (the two-node bench read the events in between and found none)
            self.events.append(PoolEvent("replace", "", idx, idx, 0, f"actor {idx} replaced by {ref.name}"))
            self._install(idx, ref)
            self.log("info", f"actor {idx} replaced by {ref.name}")
            return

    def check(self) -> None:
        """Ping every actor (a dead one is replaced, its robots restored; one silent for
        ``unreachable_s`` is given up as lost, the same way); then rebalance.

        Why give up on a silent actor: when a node's network link goes down, the node is alive but
        unreachable, and Ray declares it dead only when its heartbeats have been missed long enough
        (65 s in ``python -m ams_ros.bench.ray_nodes --fault link``); until then every call to its
        actors waits, and their robots get no update. Killing the actor (``_recover`` does) makes
        those calls fail at once, and its robots resume from their kept state on a reachable actor."""
        for idx in self.live_actors():
            with self._cv:
                ref, gen = self.actors[idx], self.generation[idx]
            try:
                ref.call("ping", timeout=self.config.unreachable_s)
            except ActorGone:
                self._recover(idx, gen)
            except TimeoutError:  # Ray's GetTimeoutError is one
                self.log("warning", f"actor {idx} did not answer a ping for {self.config.unreachable_s:g} s "
                                    f"(pool_unreachable_s): given up as lost; its robots are restored elsewhere")
                self._recover(idx, gen, reason=f"lost (silent for {self.config.unreachable_s:g} s)")
            except Exception as exc:  # noqa: BLE001 - the ping itself failed: not a sign the actor is gone
                self.log("warning", f"actor {idx}: ping failed: {type(exc).__name__}: {exc}")
        self.rebalance()

    def start_monitor(self) -> None:
        """Run :meth:`check` every ``check_period_s`` in a thread until :meth:`shutdown`."""
        def loop() -> None:
            while not self._stop.wait(self.config.check_period_s):
                try:
                    self.check()
                except Exception as exc:  # noqa: BLE001 - the monitor must outlive one failed check
                    self.log("error", f"pool check failed: {type(exc).__name__}: {exc}")

        self._monitor = threading.Thread(target=loop, name="session_pool_monitor", daemon=True)
        self._monitor.start()
