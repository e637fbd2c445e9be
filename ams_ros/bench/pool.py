"""Robots served vs actors in the session pool (issue #12): ``python -m ams_ros.bench.cli --only pool``.

Two figures. **Measured**: a local Ray instance (bound to 127.0.0.1) with 1, 2, ... CPU actors on
this machine; each actor serves robots whose update period's work is one frame batch labelled by
the synthetic oracle and one training phase, driven back to back (one driver thread per actor, as
the server runs one trainer thread per actor) for a fixed time. Robot-periods per second times
T_update is the number of robots the pool keeps on schedule. **Modelled**: GPUs needed for 10, 50
and 200 robots at the stated per-robot GPU cost (docs/results.md, issue #16: the teacher 0.25 s per
frame, 0.1 s per training step, K = 20 per phase, T_update 10 s), one actor per GPU, robots packed
whole (a robot's phase and labels run on one actor).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

import torch

from ams_ros.core.fleet.pool import SessionPool
from ams_ros.core.fleet.pool_config import PoolConfig
from ams_ros.core.fleet.transports import connect_ray, disconnect_ray, ray_actor_factory
from ams_ros.core.fleet.worker import TeacherSpec, WorkerSpec
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import StudentSpec, load_student, save_student_checkpoint
from ams_ros.core.server.session import SessionConfig
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.sources.synthetic import SyntheticWorld
from ams_ros.core.wire.frame_codec import encode_frames


def robots_per_gpu(update_period_s: float, frames_per_s: float, teacher_s: float, step_s: float,
                   iterations: int) -> tuple[float, int]:
    """(GPU-seconds one robot needs per update period, robots one GPU keeps on schedule)."""
    cost = frames_per_s * update_period_s * teacher_s + iterations * step_s
    return cost, int(math.floor(update_period_s / cost)) if cost > 0 else 0


def sizing_table(robots: tuple[int, ...] = (10, 50, 200), rates: tuple[float, ...] = (1.0, 0.4, 0.1),
                 update_period_s: float = 10.0, teacher_s: float = 0.25, step_s: float = 0.1,
                 iterations: int = 20) -> list[dict]:
    """GPUs needed for each fleet size at each mean sampling rate (frames per second per robot)."""
    rows = []
    for r in rates:
        cost, per_gpu = robots_per_gpu(update_period_s, r, teacher_s, step_s, iterations)
        if per_gpu < 1:
            raise ValueError(f"one robot needs {cost:.2f} GPU-s per {update_period_s:g} s period at {r:g} frames/s: "
                             f"more than one GPU; lower the rate or the cost")
        rows.append({"frames_per_s": r, "gpu_s_per_robot_period": round(cost, 3), "robots_per_gpu": per_gpu,
                     "gpus": {str(n): int(math.ceil(n / per_gpu)) for n in robots}})
    return rows


def synthetic_worker_spec(folder: Path, size: tuple[int, int], iterations: int, batch_size: int, horizon_s: float,
                          update_period_s: float) -> WorkerSpec:
    """The workers' spec of the pool benchmarks: a seeded random DeepLabV3-MobileNetV2 for the synthetic
    world (its checkpoint written to ``folder``, where a Ray actor loads it), CPU, one torch thread."""
    torch.manual_seed(0)
    n_cls = len(get_label_space("synthetic").class_names)
    w0 = save_student_checkpoint(load_student("deeplabv3_mobilenet_v2", n_cls), folder / "w0.pt",
                                 "deeplabv3_mobilenet_v2", n_cls)
    trainer = TrainerConfig(input_size=size, iterations=iterations, batch_size=batch_size, horizon_s=horizon_s,
                            update_period_s=update_period_s, gamma=0.05)
    return WorkerSpec(StudentSpec("deeplabv3_mobilenet_v2", str(w0), "synthetic"), SessionConfig(trainer=trainer),
                      device="cpu", torch_threads=1)


def measure(actors_list: tuple[int, ...], seconds: float, width: int, height: int, iterations: int,
            frames: int, update_period_s: float, robots_per_actor: int = 2) -> dict:
    """Robot-periods per second a pool of A CPU actors sustains (see the module doc)."""
    tmp = Path(tempfile.mkdtemp(prefix="ams-pool-bench-"))
    spec = synthetic_worker_spec(tmp, (width, height), iterations, batch_size=4, horizon_s=60.0,
                                 update_period_s=update_period_s)
    how = connect_ray("local", num_cpus=max(actors_list))
    started = how.startswith("started")  # end only a Ray instance this started
    print(f"[pool] {how}", flush=True)
    world = SyntheticWorld(0, width, height)
    rows = []
    try:
        for n_actors in actors_list:
            rows.append(_one_pool_size(spec, n_actors, robots_per_actor, world, seconds, width, height, frames,
                                       update_period_s))
    finally:
        if started:
            disconnect_ray()
    return {"setup": f"deeplabv3_mobilenet_v2 {width}x{height}, K={iterations}, batch 4, {frames} oracle-labelled "
                     f"frames per period, CPU actors (1 torch thread each), {seconds:g} s per pool size",
            "update_period_s": update_period_s, "rows": rows}


def _one_pool_size(spec: WorkerSpec, n_actors: int, robots_per_actor: int, world: SyntheticWorld, seconds: float,
                   width: int, height: int, frames: int, update_period_s: float) -> dict:
    """A pool of ``n_actors``, each driven by a thread of its own (label a batch, run a phase, per robot)."""
    config = PoolConfig(backend="ray", actors=n_actors)
    robots = [f"robot{i + 1}" for i in range(n_actors * robots_per_actor)]
    pool = SessionPool(ray_actor_factory(spec, config), config)
    t0 = time.perf_counter()
    pool.start(robots)
    pool.set_teachers(TeacherSpec({d: "oracle:0" for d in robots}))
    start_s = time.perf_counter() - t0
    counts = [0] * n_actors
    label_s = [0.0] * n_actors
    phase_s = [0.0] * n_actors
    stop = threading.Event()

    def period(dev: str, t: float) -> tuple[float, float]:
        stamps = [t + i / max(1, frames) for i in range(frames)]
        enc = encode_frames([world.frame_at(s)[0] for s in stamps], stamps, codec="jpeg")
        c0 = time.perf_counter()
        pool.label(dev, enc.data, "jpeg", width, height, stamps)
        c1 = time.perf_counter()
        pool.run_phase(dev)
        return c1 - c0, time.perf_counter() - c1

    def drive(a: int) -> None:
        mine, t = pool.robots_on(a), 0.0
        while not stop.is_set():
            for dev in mine:
                lab, ph = period(dev, t)
                if stop.is_set():
                    return
                counts[a] += 1
                label_s[a] += lab
                phase_s[a] += ph
            t += 1.0

    for a in range(n_actors):  # warm-up: one period per robot
        for dev in pool.robots_on(a):
            period(dev, 0.0)
    threads = [threading.Thread(target=drive, args=(a,), daemon=True) for a in range(n_actors)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    wall = time.perf_counter() - t0
    done = sum(counts)
    per_s = done / wall
    row = {"actors": n_actors, "robots_driven": len(robots), "robot_periods": done, "wall_s": round(wall, 1),
           "robot_periods_per_s": round(per_s, 3),
           "label_s_per_period": round(sum(label_s) / max(1, done), 3),
           "phase_s_per_period": round(sum(phase_s) / max(1, done), 3),
           "robots_served_at_T_update": int(math.floor(per_s * update_period_s)),
           "pool_start_s": round(start_s, 1)}
    print(f"[pool] {n_actors} actor(s): {per_s:.2f} robot-periods/s (label {row['label_s_per_period']} s + "
          f"phase {row['phase_s_per_period']} s each) -> {row['robots_served_at_T_update']} robots at "
          f"T_update {update_period_s:g} s", flush=True)
    pool.shutdown(save=False)
    return row


def pool_figures(args: argparse.Namespace) -> dict:
    actors = tuple(int(a) for a in str(args.pool_actors).split(",") if a.strip())
    res = {"measured": measure(actors, args.pool_seconds, args.pool_width, args.pool_height, args.pool_iterations,
                               args.pool_frames, args.pool_update_period)}
    res["sizing"] = {"assumed": "teacher 0.25 s per frame, 0.1 s per training step, K = 20, T_update 10 s, one "
                                "actor per GPU (docs/results.md, issue #16)", "rows": sizing_table()}
    for row in res["sizing"]["rows"]:
        print(f"[pool] at {row['frames_per_s']:g} frames/s per robot: {row['gpu_s_per_robot_period']} GPU-s per "
              f"robot per period, {row['robots_per_gpu']} robots per GPU; GPUs for 10/50/200 robots: "
              f"{'/'.join(str(v) for v in row['gpus'].values())}", flush=True)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool-actors", default="1,2", help="pool sizes to measure (comma list; CPU actors)")
    p.add_argument("--pool-seconds", type=float, default=20.0, help="measured seconds per pool size")
    p.add_argument("--pool-width", type=int, default=96, help="training width of the pool figures")
    p.add_argument("--pool-height", type=int, default=48, help="training height of the pool figures")
    p.add_argument("--pool-iterations", type=int, default=5, help="K per phase in the pool figures")
    p.add_argument("--pool-frames", type=int, default=4, help="frames labelled per robot per update period")
    p.add_argument("--pool-update-period", type=float, default=10.0, help="T_update (s) of the robots served")
