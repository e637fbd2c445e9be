"""Torch's intra-op thread count, chosen so that inference does not fight other work for cores.

Torch's OpenMP workers spin while they wait for each other. When one more CPU-bound thread runs
than there are cores (the robot's H.264 batch encoder, for instance), a spinning worker keeps a
core from the thread it is waiting for: measured on 2 cores (`make bench`), inference at 2 threads
beside x264's own thread count took a median 174 ms, at most 219 ms, instead of 38 ms while one
batch was encoded; at 1 thread beside a 1-thread encoder, 58-60 ms (docs/results.md)."""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_torch_threads(n: int, reserve: int = 0) -> int:
    """Use ``n`` intra-op threads when ``n > 0``. With ``n == 0``: torch's own choice when
    OMP_NUM_THREADS is set (the user decided), else every usable core but ``reserve`` (at least
    one). Returns the number now in use."""
    if n > 0:
        torch.set_num_threads(int(n))
    elif "OMP_NUM_THREADS" not in os.environ and reserve > 0:
        torch.set_num_threads(max(1, usable_cores() - int(reserve)))
    return torch.get_num_threads()
