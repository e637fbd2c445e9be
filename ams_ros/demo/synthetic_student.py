"""The demo's "no customization" student: trained on the synthetic world before its first shift.

Made once per (student, resolution, seed, steps) and cached, so later demos start at once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ams_ros.core.models.pretraining import distill
from ams_ros.core.models.labels import get_label_space
from ams_ros.core.models.weights import load_student, save_student_checkpoint
from ams_ros.core.sources.synthetic import world_from_spec


def pretrained_synthetic_student(args: argparse.Namespace, cache_dir: Path) -> Path:
    seed_part = args.source.replace(":", "-")
    path = cache_dir / f"{args.student}_{seed_part}_{args.width}x{args.height}_{args.pretrain_steps}steps.pt"
    if path.exists():
        print(f"[demo] using cached pretrained student {path}")
        return path
    world = world_from_spec(args.source, width=args.width, height=args.height)
    first_shift = min((s.t for s in world.shifts), default=60.0)
    times = np.arange(0.0, max(first_shift - 1.0, 5.0), 0.5)
    samples = [world.frame_at(float(t)) for t in times]
    space = get_label_space("synthetic")
    torch.manual_seed(0)  # the same random start every run: the default demo is reproducible
    model = load_student(args.student, num_classes=len(space.class_names), weights=None)
    print(f"[demo] pretraining {args.student} on {len(samples)} synthetic frames before the first shift "
          f"({args.pretrain_steps} steps; cached for later runs)", flush=True)
    t0 = time.monotonic()

    def progress(step: int, loss: float) -> None:
        if step % 25 == 0 or step == args.pretrain_steps - 1:
            print(f"[demo]   pretrain step {step + 1}/{args.pretrain_steps}  loss {loss:.3f}  "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)

    distill(model, samples, steps=args.pretrain_steps, batch_size=8, lr=2e-3, seed=0, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_student_checkpoint(model, path, args.student, len(space.class_names), space)
    return path
