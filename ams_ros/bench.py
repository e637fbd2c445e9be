"""`make bench` / `ams-bench`: speed and size figures of the core pieces, as JSON.

Writes ``out/bench/bench.json`` and prints it. CPU figures on this machine; no timed asserts
live in the unit tests, targets are checked here and reported as ``targets``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

GAMMAS = (0.2, 0.1, 0.05, 0.01)
PAPER_UPDATE_BYTES_AT_5PCT = 205_000 / 8 * 10  # 205 Kbps at T_update 10 s = 256 KB per update


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def _median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def _synthetic_samples(n: int, size: tuple[int, int], seed: int = 0):
    from ams_ros.core.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=seed, width=size[0], height=size[1])
    return [(float(t), *world.frame_at(float(t))) for t in np.linspace(0.0, 60.0, n)]


def _trainer(model, size, gamma, iterations=20, batch=8, seed=0):
    from ams_ros.core.trainer import AMSTrainer, TrainerConfig

    cfg = TrainerConfig(iterations=iterations, batch_size=batch, gamma=gamma, input_size=size, seed=seed)
    return AMSTrainer(model, cfg)


def _teacher_agreement_on_decoded() -> dict | None:
    """Teacher labels on H.264-decoded vs original frames of real footage (shared assets)."""
    from ams_ros.core.assets import asset_path
    from ams_ros.core.frame_codec import decode_frames, encode_frames

    teacher_path = asset_path("models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite")
    frames_dir = asset_path("video/camvid-0016E5/frames")
    if teacher_path is None or frames_dir is None:
        log("shared assets absent: skipping the teacher agreement on decoded frames")
        return None
    import cv2

    from ams_ros.core.models.teachers import build_teacher

    files = sorted(frames_dir.glob("*.jpg"))[:10]
    frames = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (512, 256)) for f in files]
    stamps = [int(f.stem) / 30.0 for f in files]
    enc = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0)
    decoded = decode_frames(enc.data, enc.codec, enc.width, enc.height)
    teacher = build_teacher(f"tflite:{teacher_path}")
    a = teacher.label(frames)
    b = teacher.label(decoded)
    agree = float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))
    log(f"teacher label agreement, decoded vs original (10 CamVid frames, 200 Kbps): {agree:.4f}")
    return {"frames": len(files), "batch_bytes": len(enc.data), "pixel_agreement": round(agree, 4),
            "teacher": teacher_path.name, "source": "camvid-0016E5"}


def _inference_beside_encoder(student, frames: list, stamps: list[float]) -> dict:
    """Inference latency (512x256) while the camera sampler H.264-encodes one batch on another
    thread, per torch thread count and x264 thread count: torch's spinning workers and a busy
    encoder must not want more cores than there are. The edge's defaults are marked."""
    from ams_ros.core.frame_codec import encode_frames
    from ams_ros.core.threads import set_torch_threads, usable_cores

    old = torch.get_num_threads()
    cores = usable_cores()
    default_torch = set_torch_threads(0, reserve=1)
    x = torch.rand(1, 3, 256, 512)
    out: dict = {"cores": cores, "edge_default": {"torch_threads": default_torch, "encoder_threads": 1}, "runs": []}
    for nt in sorted({1, max(1, cores - 1), cores}):
        for xt in (1, 0):
            torch.set_num_threads(nt)
            with torch.no_grad():
                idle = _median_ms(lambda: student(x), repeat=5)
                done, busy, encode_s = threading.Event(), [], []

                def encode():
                    t0 = time.perf_counter()
                    encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0, threads=xt)
                    encode_s.append(time.perf_counter() - t0)
                    done.set()

                th = threading.Thread(target=encode)
                th.start()
                while not done.is_set():
                    t0 = time.perf_counter()
                    student(x)
                    busy.append((time.perf_counter() - t0) * 1000.0)
                th.join()
            run = {"torch_threads": nt, "encoder_threads": xt, "idle_ms": round(idle, 1),
                   "during_encode_median_ms": round(float(statistics.median(busy)), 1),
                   "during_encode_max_ms": round(max(busy), 1), "encode_s": round(encode_s[0], 3),
                   "edge_default": nt == default_torch and xt == 1}
            out["runs"].append(run)
            log(f"inference beside the batch encoder: torch {nt} thread(s), x264 {xt or 'auto'}: idle {run['idle_ms']} ms,"
                f" during encode median {run['during_encode_median_ms']} max {run['during_encode_max_ms']} ms"
                + ("  (edge default)" if run["edge_default"] else ""))
    torch.set_num_threads(old)
    return out


def resync_bytes(args: argparse.Namespace, student=None) -> dict:
    """Bytes a robot 1, 2, 4 versions behind is sent: one catch-up update (the union of the
    phases' changes, issue #13) vs a full snapshot, after real phases on the synthetic world."""
    from ams_ros.core.models.student import build_student
    from ams_ros.core.server_session import DeviceSession, SessionConfig
    from ams_ros.core.trainer import TrainerConfig
    from ams_ros.core.update_codec import encoded_size

    if student is None:
        torch.manual_seed(0)
        student = build_student("deeplabv3_mobilenet_v2", num_classes=21).eval()
    size = (args.update_width, args.update_height)
    cfg = SessionConfig(trainer=TrainerConfig(iterations=args.iterations, batch_size=8, gamma=0.05, input_size=size,
                                              horizon_s=600.0, update_period_s=10.0, lr=1e-3))
    session = DeviceSession("bench", copy.deepcopy(student), cfg)
    samples = _synthetic_samples(40, size)
    out: dict = {"setup": f"gamma 0.05, K={args.iterations}, batch 8, {size[0]}x{size[1]}, synthetic world, "
                          f"update encoding {cfg.update_encoding}, catch-up/snapshot encoding {cfg.snapshot_encoding}"}
    per_phase = []
    for i in range(5):
        for t, f, g in samples[8 * i: 8 * i + 8]:
            session.add_labeled(t, f, g)
        per_phase.append(encoded_size(session.run_phase().update))
    out["update_bytes"] = per_phase
    out["snapshot_bytes"] = encoded_size(session.snapshot())
    for behind in (1, 2, 4):
        u = session.catch_up(session.version - behind)
        out[f"catch_up_bytes_{behind}_behind"] = encoded_size(u)
        out[f"catch_up_params_{behind}_behind"] = int(u.num_selected)
        log(f"robot {behind} behind: catch-up {encoded_size(u):,} B ({u.num_selected:,} parameters) vs snapshot "
            f"{out['snapshot_bytes']:,} B")
    return out
FUSED_KS_FULL = (1, 2, 4, 9, 18)


def _fused_throughput(args: argparse.Namespace) -> dict:
    """Student-phases per second, k robots' phases fused in one vmapped step vs one after another
    (issue #16). Same students, buffers and settings both ways; the first round is warm-up."""
    from ams_ros.core.fused_training import fused_train_phases
    from ams_ros.core.models.student import build_student

    ks = FUSED_KS_FULL if args.fused_full else tuple(int(k) for k in args.fused_k.split(","))
    size = (args.fused_width, args.fused_height)
    device = torch.device(args.fused_device)
    samples = _synthetic_samples(16, size)
    torch.manual_seed(0)
    base = build_student("deeplabv3_mobilenet_v2", num_classes=21).eval().to(device)

    def make(k: int):
        out = []
        for j in range(k):
            tr = _trainer(copy.deepcopy(base), size, 0.05, iterations=args.fused_iterations, seed=j)
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


def run(args: argparse.Namespace) -> dict:
    from ams_ros.core.frame_codec import encode_frames
    from ams_ros.core.models.student import build_student
    from ams_ros.core.params import flatten_params, num_params
    from ams_ros.core.double_buffer import DoubleBufferedModel
    from ams_ros.core.update_codec import ENCODINGS, encode_update

    torch.manual_seed(0)
    res: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "torch": torch.__version__, "device": "cpu"}}
    res["fused_training"] = _fused_throughput(args)
    student = build_student("deeplabv3_mobilenet_v2", num_classes=21).eval()
    res["student_params"] = num_params(student)
    log(f"student deeplabv3_mobilenet_v2: {res['student_params']:,} parameters")

    x = torch.rand(1, 3, 256, 512)
    with torch.no_grad():
        res["student_ms_512x256"] = round(_median_ms(lambda: student(x), repeat=args.repeat), 2)
    log(f"student inference 512x256, batch 1: {res['student_ms_512x256']} ms")

    # one training phase at the paper's settings (K=20, batch 8, 512x256, gamma 0.05)
    samples = _synthetic_samples(24, (512, 256))
    model = copy.deepcopy(student)
    tr = _trainer(model, (512, 256), 0.05, iterations=args.iterations)
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

    # update sizes after real training phases, per encoding and gamma
    size_small = (args.update_width, args.update_height)
    small = _synthetic_samples(24, size_small)
    res["update_bytes"] = {name: {} for name in ENCODINGS}
    res["update_bytes_setup"] = (f"2 phases (random then gradient-guided mask), K={args.iterations}, batch 8, "
                                 f"{size_small[0]}x{size_small[1]}, synthetic world; bytes of the 2nd update")
    updates_5pct: dict = {}
    for gamma in GAMMAS:
        m = copy.deepcopy(student)
        tr = _trainer(m, size_small, gamma, iterations=args.iterations)
        for t, f, g in small:
            tr.add_sample(t, f, g)
        tr.train_phase(60.0)
        before = flatten_params(m).numpy()
        result = tr.train_phase(60.0)
        base = before[result.indices]
        for name in ENCODINGS:
            upd = encode_update(m, result.indices, result.values, base_version=1, new_version=2, encoding=name,
                                base_values=base if ENCODINGS[name].residual else None)
            res["update_bytes"][name][str(gamma)] = len(upd.indices_blob) + len(upd.values_blob)
            if gamma == 0.05:
                updates_5pct[name] = upd
        log(f"update bytes at gamma {gamma}: " + ", ".join(f"{n} {res['update_bytes'][n][str(gamma)]:,}" for n in ENCODINGS))

    # decode + apply + swap of a 5% update on the edge's double buffer, for every encoding
    # (the edge's budget is 10 ms; size and decode time trade against each other)
    edge = DoubleBufferedModel(copy.deepcopy(student))

    def apply(upd):
        u = copy.copy(upd)
        u.base_version, u.new_version = edge.version, edge.version + 1
        u.checksum = u.compute_checksum()
        edge.apply_update(u)

    res["patch_apply_ms_by_encoding"] = {}
    for name, upd in updates_5pct.items():
        res["patch_apply_ms_by_encoding"][name] = round(_median_ms(lambda: apply(upd), repeat=args.repeat), 2)
    log("patch decode+apply+swap (5%): " + ", ".join(
        f"{n} {ms} ms ({res['update_bytes'][n]['0.05']:,} B)" for n, ms in res["patch_apply_ms_by_encoding"].items()))
    res["patch_apply_ms"] = res["patch_apply_ms_by_encoding"]["paper_gzip_fp16"]
    res["patch_apply_encoding"] = "paper_gzip_fp16"
    within = [n for n, ms in res["patch_apply_ms_by_encoding"].items() if ms < 10.0]
    res["smallest_encoding_within_10ms"] = min(within, key=lambda n: res["update_bytes"][n]["0.05"]) if within else None

    frames = [f for _, f, _ in _synthetic_samples(10, (512, 256))]
    stamps = [float(i) for i in range(10)]
    t0 = time.perf_counter()
    enc = encode_frames(frames, stamps, bitrate_bps=200_000, period_s=10.0)
    res["batch_encode_s"] = round(time.perf_counter() - t0, 3)
    res["batch_bytes_10_frames"] = len(enc.data)
    log(f"frame batch: 10 frames 512x256 at 200 Kbps -> {len(enc.data):,} bytes in {res['batch_encode_s']} s")

    res["inference_beside_batch_encoder"] = _inference_beside_encoder(student, frames, stamps)
    res["batch_teacher_agreement"] = _teacher_agreement_on_decoded()
    res["resync"] = resync_bytes(args, student)

    paper5 = res["update_bytes"]["paper_gzip_fp16"]["0.05"]
    best5 = min(v["0.05"] for v in res["update_bytes"].values())
    res["targets"] = {
        "paper_encoding_5pct_at_most_256KB": paper5 <= PAPER_UPDATE_BYTES_AT_5PCT,
        "best_encoding_5pct_at_most_half_of_paper_figure": best5 <= PAPER_UPDATE_BYTES_AT_5PCT / 2,
        "patch_apply_under_10ms": res["patch_apply_ms"] < 10.0,
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
    p.add_argument("--only", choices=["all", "resync", "fused"], default="all",
                   help="'resync': only the catch-up vs snapshot sizes (issue #13); 'fused': only the fused-training "
                        "figures (issue #16)")
    p.add_argument("--fused-k", default="1,2,4", help="robots per fused step to measure (comma list)")
    p.add_argument("--fused-full", action="store_true", help="measure k = 1, 2, 4, 9, 18 (the issue-16 list; slow on CPU)")
    p.add_argument("--fused-width", type=int, default=64, help="training width of the fused-training figures")
    p.add_argument("--fused-height", type=int, default=32, help="training height of the fused-training figures")
    p.add_argument("--fused-iterations", type=int, default=2, help="K per phase in the fused-training figures")
    p.add_argument("--fused-rounds", type=int, default=1, help="timed rounds per k (after one warm-up)")
    p.add_argument("--fused-device", default="cpu", help="torch device of the fused-training figures (cpu | cuda)")
    args = p.parse_args(argv)
    if args.only == "all":
        res = run(args)
    elif args.only == "fused":
        res = {"fused_training": _fused_throughput(args)}
    else:
        res = {"resync": resync_bytes(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
