"""The base station's time per phase outside training, from the cadence of its phases (issue #31).

A phase's ``train_seconds`` (ServerStatus) is the phase itself: the lane's thread then publishes
the update, saves the session and publishes the status before it can start the next phase. That
work holds the lane like training does, and a model of the base station that leaves it out
over-counts phases once the lane is saturated (the fleet model gave 13 % more phases than a
6-robot demo). Measured from outside: the status of consecutive phases on one lane arrive
``gap`` apart, and ``gap - train_seconds`` of the later one is that overhead when the two phases
ran back to back, more when the lane idled between them. Robots whose batches arrive together
(every period) give back-to-back pairs in every run, so a low percentile of the differences is the
overhead, and an idle lane's long gaps do not count.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

OVERHEAD_PERCENTILE = 10.0


def phase_overhead_s(events: Iterable[tuple[float, float]], percentile: float = OVERHEAD_PERCENTILE,
                     min_pairs: int = 5) -> Optional[float]:
    """The lane's time per phase outside training: ``events`` are (arrival time of a phase's status,
    its train_seconds) of every robot on one lane; ``None`` with fewer than ``min_pairs``
    consecutive phases to judge from."""
    ordered = sorted((float(t), float(s)) for t, s in events)
    rest = [(b[0] - a[0]) - b[1] for a, b in zip(ordered, ordered[1:])]
    if len(rest) < min_pairs:
        return None
    return max(0.0, float(np.percentile(rest, percentile)))
