"""Robots' frame batches at staggered times (issue #31): where in its update period each robot's
batch should reach the base station, and the one-off shift that moves it there.

Why. Robots started together send their batches together, every period: on a shared GPU the last
robot's labels and phase then wait behind all the others' each time. In the fleet model
(docs/results.md, "Staggered batches") that wait, not the GPU's capacity, was most of the loss: at
N = 8 with a batched teacher, 2.41 points in lockstep against 0.13 staggered, the GPU 84-91 % busy
in both. So the base station spaces its robots: robot k's batch is due a fraction
``frac(k x 0.618...)`` of a period after the reference robot's (the first robot of ``device_ids``
that streams; the golden ratio's multiples spread the first N robots evenly for every N, so a robot
joining later does not move the others). A robot further from its slot than ``tolerance`` of a
period is told once, in its next sampling command (``SamplingCommand.period_shift``), to close the
batch it is buffering that many seconds later or earlier; it is not told again before a batch sent
after that command has arrived. Robots on different update periods (the adaptive period) are not
moved relative to each other: their phases drift anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Sequence

from ams_ros.core.common.config import knob

#: the golden ratio's fractional part: its multiples (mod 1) spread any number of robots evenly
GOLDEN = (5 ** 0.5 - 1) / 2


class Arrival(NamedTuple):
    """A robot's last frame batch at the base station: when (time.monotonic), the period it
    covers (s) and how many of its batches have arrived so far."""

    at: float
    period_s: float
    count: int


@dataclass
class StaggerConfig:
    """Whether the base station staggers its robots' batches, and how closely."""

    enabled: bool = knob(True, "Space the robots' frame batches over the update period (each robot told once, in "
                               "a sampling command, to shift the batch it is buffering) instead of letting robots "
                               "started together send theirs together, where each waits behind the others' on the "
                               "shared GPU")
    tolerance: float = knob(0.1, "A robot whose batches arrive within this fraction of a period of its slot is "
                                 "left alone")

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 0.5:
            raise ValueError(f"stagger_tolerance must be in [0, 0.5) of a period, got {self.tolerance}")


def slot_fraction(index: int) -> float:
    """Where in the period robot ``index`` (0, 1, ... in ``device_ids``) sends its batch, as a
    fraction of the period after robot 0's slot."""
    return (index * GOLDEN) % 1.0


def stagger_offset(index: int, period_s: float) -> Optional[float]:
    """Robot ``index``'s first period for staggered batches when all start together (the fleet
    model's robots): its slot's offset, or None for robot 0 (a whole period). Depends on the
    robot's index only, so a robot alone is staggered exactly as in any fleet."""
    frac = slot_fraction(index)
    return None if frac < 1e-9 else frac * period_s


def stagger_shift(index: int, arrival: float, ref_index: int, ref_arrival: float, period_s: float,
                  tolerance: float = 0.1) -> float:
    """Seconds by which robot ``index`` should close its next batch later (> 0) or earlier (< 0)
    so that its batches arrive in its slot relative to the reference robot's (its last batch
    arrived at ``arrival``, the reference's at ``ref_arrival``, same clock, same period). The
    smaller of the two ways round, in (-period/2, period/2]; 0 within ``tolerance`` of a period."""
    if period_s <= 0:
        raise ValueError(f"period_s must be > 0, got {period_s}")
    target = ref_arrival + (slot_fraction(index) - slot_fraction(ref_index)) * period_s
    shift = (target - arrival) % period_s
    if shift > period_s / 2:
        shift -= period_s
    return 0.0 if abs(shift) <= tolerance * period_s else shift


class BatchStagger:
    """The base station's side: which robot is the reference and when a robot may be told again.

    The reference is the first robot of ``robots`` whose last batch covered the same period and
    arrived within two periods of this robot's (it streams with it); a robot is the reference's
    peer only then. After a shift, a robot is not told again before the second batch since has
    arrived: the first may already have been on its way when the robot was told."""

    def __init__(self) -> None:
        self._shifted_after: dict[str, int] = {}  # per robot: its batches that had arrived when told

    def shift(self, dev: str, robots: Sequence[str], arrivals: Mapping[str, Arrival],
              tolerance: float) -> tuple[float, Optional[str]]:
        """(seconds to shift ``dev``'s batch being buffered, the reference robot); (0, None) when
        there is nothing to do, (0, reference) when ``dev`` is in its slot."""
        mine = arrivals.get(dev)
        if mine is None or mine.count < self._shifted_after.get(dev, -2) + 2:
            return 0.0, None
        ref = next((r for r in robots if r in arrivals and arrivals[r].period_s == mine.period_s
                    and abs(mine.at - arrivals[r].at) < 2.0 * mine.period_s), None)
        if ref is None or ref == dev:
            return 0.0, None
        shift = stagger_shift(robots.index(dev), mine.at, robots.index(ref), arrivals[ref].at, mine.period_s,
                              tolerance)
        if shift:
            self._shifted_after[dev] = mine.count
        return shift, ref
