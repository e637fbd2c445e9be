"""What the pool did (a move, a recovery, a replacement), for the log and the tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class PoolEvent:
    """A move or a recovery, for the log and the tests."""

    kind: str  # "move" | "recover" | "replace"
    device_id: str
    source: int
    target: int
    version: int
    message: str
    at: float = field(default_factory=time.monotonic)  # when it happened (time.monotonic)
