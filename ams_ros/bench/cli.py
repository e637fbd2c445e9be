"""`make bench` / `ams-bench`: speed and size figures of the core pieces, as JSON.

Writes ``out/bench/bench.json`` and prints it. CPU figures on this machine; no timed asserts
live in the unit tests, targets are checked here and reported as ``targets``.

``--device DEV`` (auto | cpu | cuda | cuda:N) adds ``devices[DEV][PRECISION]``: student inference
at 512x256 (batch 1), one training phase at 512x256 (batch 8, K = ``--phase-steps``), teacher time
per frame and per 10-frame batch, and patch decode + apply + swap on that device; plus the edge
segmenter's per-frame pipeline against the bare model at 256x128 on one thread. The top-level
keys (CPU figures) are kept as they were. CUDA timings synchronise the device around each run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from ams_ros.bench import inference as inference_bench, pool as pool_bench, launch as launch_bench
from ams_ros.core.common.devices import (
    describe, resolve_dtype, configure_cudnn, resolve_device, torch_sees)
from ams_ros.core.models.params import flatten_params, num_params
from ams_ros.core.models.student import build_student
from ams_ros.core.wire.frame_codec import encode_frames
from ams_ros.bench.common import log, median_ms, synthetic_samples, small_trainer
from ams_ros.bench.devices import device_figures, inference_beside_encoder, segmenter_pipeline
from ams_ros.bench.fused import fused_throughput
from ams_ros.bench.updates import resync_bytes, update_figures, update_targets
from ams_ros.bench.uplink import UPLINK_CODECS, UPLINK_KBPS, uplink_choices, uplink_codecs, uplink_targets


def run(args: argparse.Namespace) -> dict:
    configure_cudnn(resolve_device(args.device), args.cudnn_benchmark)  # DeviceError at once, before any work

    torch.manual_seed(0)
    res: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "torch": torch.__version__, "device": "cpu"}}
    res["fused_training"] = fused_throughput(args)
    student = build_student("deeplabv3_mobilenet_v2", num_classes=21).eval()
    res["student_params"] = num_params(student)
    log(f"student deeplabv3_mobilenet_v2: {res['student_params']:,} parameters")

    x = torch.rand(1, 3, 256, 512)
    with torch.no_grad():
        res["student_ms_512x256"] = round(median_ms(lambda: student(x), repeat=args.repeat), 2)
    log(f"student inference 512x256, batch 1: {res['student_ms_512x256']} ms")

    # one training phase at the paper's settings (K=20, batch 8, 512x256, gamma 0.05)
    samples = synthetic_samples(24, (512, 256))
    model = copy.deepcopy(student)
    tr = small_trainer(model, (512, 256), 0.05, iterations=args.iterations)
    for t, f, g in samples:
        tr.add_sample(t, f, g)
    before = flatten_params(model).clone()
    log(f"training one phase: K={args.iterations}, batch 8, 512x256, gamma 0.05 ...")
    t0 = time.perf_counter()
    tr.train_phase(60.0)
    res["trainer_phase_s"] = round(time.perf_counter() - t0, 2)
    res["trainer_phase_iterations"] = args.iterations
    res["changed_fraction"] = round(float((flatten_params(model) != before).float().mean()), 5)
    log(f"phase: {res['trainer_phase_s']} s, changed fraction {res['changed_fraction']}")

    updates_5pct = update_figures(args, student, res)
    res["segmenter_pipeline_256x128"] = segmenter_pipeline(student, args.repeat)
    device = resolve_device(args.device)
    res["machine"]["device"] = describe(device)
    res["machine"]["torch_sees"] = torch_sees()
    res["devices"] = {str(device): device_figures(args, student, samples, updates_5pct, device)}

    frames = [f for _, f, _ in synthetic_samples(10, (512, 256))]
    stamps = [float(i) for i in range(10)]
    t0 = time.perf_counter()
    enc = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0)
    res["batch_encode_s"] = round(time.perf_counter() - t0, 3)
    res["batch_bytes_10_frames"] = len(enc.data)
    log(f"frame batch: 10 frames 512x256 at 200 Kbps -> {len(enc.data):,} bytes in {res['batch_encode_s']} s")

    res["inference_beside_batch_encoder"] = inference_beside_encoder(student, frames, stamps)
    res["uplink_codecs"] = uplink_codecs(args.uplink_codecs, args.uplink_kbps)
    res["resync"] = resync_bytes(args, student)

    res["targets"] = {
        **update_targets(res),
        **uplink_targets(res["uplink_codecs"]),
        "segmenter_labels_only_within_1.10x_of_bare_model": res["segmenter_pipeline_256x128"]["ratio_labels_only"] <= 1.10,
        "batch_within_1.3x_of_200kbps_budget": len(enc.data) <= 1.3 * 200_000 / 8 * 10,
        "edge_default_inference_beside_encoder_under_1.5x_idle": all(
            r["during_encode_max_ms"] < 1.5 * r["idle_ms"]
            for r in res["inference_beside_batch_encoder"]["runs"] if r["edge_default"]),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ams-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench", help="output folder")
    p.add_argument("--repeat", type=int, default=20, help="timed repetitions of short measurements")
    p.add_argument("--iterations", type=int, default=20, help="K per training phase")
    p.add_argument("--update-width", type=int, default=256, help="training width for the update-size phases")
    p.add_argument("--update-height", type=int, default=128, help="training height for the update-size phases")
    p.add_argument("--only", choices=["all", "resync", "fused", "updates", "uplink", "pool", "launch", "inference", "ray-nodes"],
                   default="all",
                   help="'resync': only the catch-up vs snapshot sizes (issue #13); 'fused': only the fused-training "
                        "figures (issue #16); 'updates': only the update encodings' sizes and times (issue #10); "
                        "'uplink': only the video codecs' bytes and teacher agreement (issue #10); 'pool': robots "
                        "served vs Ray actors, and GPUs for 10/50/200 robots (issue #12; not in 'all'); 'launch': "
                        "start, Ctrl-C and respawn times under ros2 launch (issue #27; not in 'all'); 'inference': the "
                        "student in each inference runtime, bare and in the node, and updates to running "
                        "(issue #30; not in 'all'); 'ray-nodes': the pool on two Ray nodes and the loss of one "
                        "(issue #31; root; python -m ams_ros.bench.ray_nodes has its options; not in 'all')")
    p.add_argument("--launch-repeat", type=int, default=3, help="runs of the 'launch' figures")
    p.add_argument("--launch-configs", default="demo_", choices=["demo_", ""],
                   help="parameter files of the 'launch' figures: config/demo_*.yaml (demo_) or config/*.yaml (the "
                        "paper's 512x256: one phase takes about 100 s on a 2-core CPU)")
    p.add_argument("--fused-k", default="1,2,4", help="robots per fused step to measure (comma list)")
    p.add_argument("--fused-full", action="store_true", help="measure k = 1, 2, 4, 9, 18 (the issue-16 list; slow on CPU)")
    p.add_argument("--fused-width", type=int, default=64, help="training width of the fused-training figures")
    p.add_argument("--fused-height", type=int, default=32, help="training height of the fused-training figures")
    p.add_argument("--fused-iterations", type=int, default=2, help="K per phase in the fused-training figures")
    p.add_argument("--fused-rounds", type=int, default=1, help="timed rounds per k (after one warm-up)")
    p.add_argument("--fused-device", default="cpu", help="torch device of the fused-training figures (cpu | cuda)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N: the device of the per-device figures")
    p.add_argument("--precisions", default="",
                   help="comma-separated float32,bfloat16,float16 (default: float32 on the CPU, all three on CUDA)")
    p.add_argument("--phase-steps", type=int, default=0,
                   help="K of the per-device 512x256 batch-8 phase (default: --iterations; a K=20 phase takes 25-46 s on a small CPU)")
    p.add_argument("--teacher", default="", help="teacher spec to time (default: a random-init torchvision "
                   "deeplabv3_mobilenet_v3_large, 21 classes, loaded by spec from a state dict written under --out)")
    p.add_argument("--teacher-width", type=int, default=520, help="teacher input width")
    p.add_argument("--teacher-height", type=int, default=520, help="teacher input height")
    p.add_argument("--uplink-codecs", default=",".join(UPLINK_CODECS),
                   help=f"video codecs of the uplink figures (comma list of {', '.join(UPLINK_CODECS)})")
    p.add_argument("--uplink-kbps", default=",".join(str(k) for k in UPLINK_KBPS),
                   help="target bitrates of the uplink figures (comma list; 200, H.264's reference, is always added)")
    p.add_argument("--channels-last", action="store_true", help="also time inference in channels-last memory format")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on CUDA")
    pool_bench.add_arguments(p)
    inference_bench.add_arguments(p)
    args = p.parse_args(argv)

    try:
        device = resolve_device(args.device)
        names = [n.strip() for n in args.precisions.split(",") if n.strip()] or (
            ["float32", "bfloat16", "float16"] if device.type == "cuda" else ["float32"])
        for n in names:
            resolve_dtype(n)
        args.uplink_codecs, args.uplink_kbps = uplink_choices(args.uplink_codecs, args.uplink_kbps)
    except ValueError as exc:
        print(f"ams-bench: error: {exc}", file=sys.stderr)
        return 2
    args.precisions = names
    args.phase_steps = args.phase_steps or args.iterations
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.only == "ray-nodes":
        from ams_ros.bench import ray_nodes

        return ray_nodes.main(["--out", str(Path(args.out) / "ray_nodes")])
    if args.only == "all":
        res = run(args)
    elif args.only == "fused":
        res = {"fused_training": fused_throughput(args)}
    elif args.only == "updates":
        torch.manual_seed(0)
        res = {}
        update_figures(args, build_student("deeplabv3_mobilenet_v2", num_classes=21).eval(), res)
        res["targets"] = update_targets(res)
    elif args.only == "pool":
        res = {"pool": pool_bench.pool_figures(args)}
    elif args.only == "launch":
        res = {"launch": launch_bench.run(args)}
    elif args.only == "inference":
        res = {"inference": inference_bench.run(args)}
    elif args.only == "uplink":
        res = {"uplink_codecs": uplink_codecs(args.uplink_codecs, args.uplink_kbps)}
        res["targets"] = uplink_targets(res["uplink_codecs"])
    else:
        res = {"resync": resync_bytes(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
