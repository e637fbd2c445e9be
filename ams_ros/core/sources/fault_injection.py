"""A seeded lossy link for fault benchmarks: drop, duplicate or reorder messages (test-only).

Issue #13 asks what a robot does when the network misbehaves: updates lost, duplicated or
delivered out of order, frame batches lost. A hand-made relay between the two processes would
test the relay; instead the robot's own nodes pass what they receive (model updates) or send
(frame batches) through a :class:`FaultyLink` built from their ``fault_*`` parameters, so the
benchmark runs the demo's processes unchanged. Every knob defaults to off (a fraction of 0), and
the decisions are drawn from one seeded generator, so a run is repeatable message for message.

Per message, one uniform draw ``u`` decides (fractions ``drop``, ``duplicate``, ``reorder``):

- ``u < drop``: the message is lost;
- ``u < drop + duplicate``: it is delivered twice;
- ``u < drop + duplicate + reorder``: it is held back and delivered right after the next
  message (a later message overtakes it);
- otherwise it is delivered as is.

Held messages are delivered after the next one that is not itself dropped or held.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ams_ros.core.common.config import knob

M = TypeVar("M")

DELIVER, DROP, DUPLICATE, REORDER = "deliver", "drop", "duplicate", "reorder"


@dataclass(frozen=True)
class FaultConfig:
    """The lossy link's fractions (each in [0, 1], their sum at most 1) and its seed."""

    drop: float = knob(0.0, "Test-only fault injection: fraction of messages dropped (0 = off)")
    duplicate: float = knob(0.0, "Test-only fault injection: fraction of messages delivered twice (0 = off)")
    reorder: float = knob(0.0, "Test-only fault injection: fraction of messages held back and delivered after "
                               "the next one (0 = off)")
    seed: int = knob(0, "Seed of the test-only fault injection's random draws (a run is repeatable)")

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"fault injection fraction {name}={value!r} is outside [0, 1]; use e.g. 0.2 for "
                                 f"20 % of messages, or 0 to turn it off")
        total = float(self.drop) + float(self.duplicate) + float(self.reorder)
        if total > 1.0 + 1e-12:
            raise ValueError(f"fault injection fractions drop={self.drop}, duplicate={self.duplicate}, "
                             f"reorder={self.reorder} add up to {total:g} > 1; lower them so that at most every "
                             f"message is disturbed")

    @property
    def active(self) -> bool:
        return float(self.drop) + float(self.duplicate) + float(self.reorder) > 0.0


@dataclass
class FaultyLink(Generic[M]):
    """Decides, per message pushed, what is delivered now (see the module docstring)."""

    config: FaultConfig
    counts: dict[str, int] = field(default_factory=lambda: {DELIVER: 0, DROP: 0, DUPLICATE: 0, REORDER: 0})
    _rng: random.Random = field(init=False, repr=False)
    _held: list[M] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(int(self.config.seed))

    def decide(self) -> str:
        """The fate of the next message: DELIVER, DROP, DUPLICATE or REORDER."""
        c = self.config
        if not c.active:
            return DELIVER
        u = self._rng.random()
        if u < c.drop:
            return DROP
        if u < c.drop + c.duplicate:
            return DUPLICATE
        if u < c.drop + c.duplicate + c.reorder:
            return REORDER
        return DELIVER

    def push(self, msg: M) -> tuple[str, list[M]]:
        """``(fate of msg, messages to deliver now, in order)``."""
        fate = self.decide()
        self.counts[fate] += 1
        if fate == DROP:
            return fate, []
        if fate == REORDER:
            self._held.append(msg)
            return fate, []
        now = [msg, msg] if fate == DUPLICATE else [msg]
        held, self._held = self._held, []
        return fate, now + held

    @property
    def holding(self) -> int:
        return len(self._held)
