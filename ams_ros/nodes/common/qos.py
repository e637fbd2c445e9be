"""QoS profiles from parameter values: sensor-data (best effort) for camera images, reliable for
frame batches, updates and commands, transient-local for the latched label info."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITIES = ("reliable", "best_effort")


def qos(reliability: str = "reliable", depth: int = 10, transient_local: bool = False) -> QoSProfile:
    """QoS from parameter values; ``reliability`` is 'reliable' or 'best_effort'."""
    rel = reliability.strip().lower()
    if rel not in RELIABILITIES:
        raise ValueError(f"QoS reliability must be 'reliable' or 'best_effort', got '{reliability}'")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, int(depth)),
        reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )
