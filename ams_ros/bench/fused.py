"""``ams-bench --only fused`` (issue #16): training several robots' students in one vmapped step against one phase after another."""

from __future__ import annotations

import argparse
import copy
import time

import torch

from ams_ros.core.fleet.fused_training import fused_train_phases
from ams_ros.core.models.student import build_student

from ams_ros.bench.common import log, small_trainer, synthetic_samples


FUSED_KS_FULL = (1, 2, 4, 9, 18)


def fused_throughput(args: argparse.Namespace) -> dict:
    """Student-phases per second, k robots' phases fused in one vmapped step vs one after another
    (issue #16). Same students, buffers and settings both ways; the first round is warm-up."""

    ks = FUSED_KS_FULL if args.fused_full else tuple(int(k) for k in args.fused_k.split(","))
    size = (args.fused_width, args.fused_height)
    device = torch.device(args.fused_device)
    samples = synthetic_samples(16, size)
    torch.manual_seed(0)
    base = build_student("deeplabv3_mobilenet_v2", num_classes=21).eval().to(device)

    def make(k: int):
        out = []
        for j in range(k):
            tr = small_trainer(copy.deepcopy(base), size, 0.05, iterations=args.fused_iterations, seed=j)
            for t, f, g in samples:
                tr.add_sample(t, f, g)
            out.append(tr)
        return out

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for k in ks:
        seq, fus = make(k), make(k)
        timings = {}
        for name, fn in (("sequential", lambda: [t.train_phase(60.0) for t in seq]),
                         ("fused", lambda: fused_train_phases(fus, [60.0] * k))):
            fn()  # warm-up round
            sync()
            t0 = time.perf_counter()
            for _ in range(args.fused_rounds):
                fn()
            sync()
            timings[name] = (time.perf_counter() - t0) / args.fused_rounds
        row = {"k": k, "sequential_phases_per_s": round(k / timings["sequential"], 3),
               "fused_phases_per_s": round(k / timings["fused"], 3)}
        row["speedup"] = round(row["fused_phases_per_s"] / row["sequential_phases_per_s"], 2)
        rows.append(row)
        log(f"fused training k={k}: {row['fused_phases_per_s']} vs sequential {row['sequential_phases_per_s']} "
            f"student-phases/s ({row['speedup']}x)")
    return {"setup": f"deeplabv3_mobilenet_v2, {size[0]}x{size[1]}, K={args.fused_iterations}, batch 8, gamma 0.05, "
                     f"{args.fused_rounds} timed rounds, device {device}", "rows": rows}
