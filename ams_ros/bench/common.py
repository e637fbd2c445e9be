"""What the benchmark groups share: the log line, timing helpers, synthetic samples, a small trainer."""

from __future__ import annotations

import statistics
import time

import numpy as np

from ams_ros.core.common.devices import (
    synchronize)
from ams_ros.core.server.trainer import AMSTrainer
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.sources.synthetic import SyntheticWorld



GAMMAS = (0.2, 0.1, 0.05, 0.01)


PAPER_UPDATE_BYTES_AT_5PCT = 205_000 / 8 * 10  # 205 Kbps at T_update 10 s = 256 KB per update


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def synthetic_samples(n: int, size: tuple[int, int], seed: int = 0):
    world = SyntheticWorld(seed=seed, width=size[0], height=size[1])
    return [(float(t), *world.frame_at(float(t))) for t in np.linspace(0.0, 60.0, n)]


def small_trainer(model, size, gamma, iterations=20, batch=8, seed=0):
    cfg = TrainerConfig(iterations=iterations, batch_size=batch, gamma=gamma, input_size=size, seed=seed)
    return AMSTrainer(model, cfg)


def timed_ms(fn, device, repeat: int, warmup: int = 2) -> float:
    def once():
        fn()
        synchronize(device)

    synchronize(device)
    return median_ms(once, repeat=repeat, warmup=warmup)
