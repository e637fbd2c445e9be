"""What the pool did (a move, a recovery, a replacement), for the log and the tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PoolEvent:
    """A move or a recovery, for the log and the tests."""

    kind: str  # "move" | "recover"
    device_id: str
    source: int
    target: int
    version: int
    message: str
