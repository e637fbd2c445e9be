"""Baseline schedules of the paper's comparison (Just-In-Time, ShadowTutor) as small functions.

Kept apart from the harness loop so a node could reuse them.
"""

from __future__ import annotations


def jit_next_stride(stride: int, success: bool, lo: int = 8, hi: int = 64) -> int:
    """Just-In-Time: double the key-frame stride after a success, halve it after a failure."""
    return int(min(hi, max(lo, stride * 2 if success else stride // 2)))


def shadowtutor_next_stride(stride: int, accuracy: float, threshold: float = 0.8, lo: int = 8, hi: int = 64) -> int:
    """ShadowTutor's rule: ratio = (a + 1 - 2t) / (1 - t) if a > t else a / t; clip(int(ratio * stride))."""
    a, t = float(accuracy), float(threshold)
    ratio = (a + 1 - 2 * t) / (1 - t) if a > t else a / t
    return int(min(hi, max(lo, int(ratio * stride))))
