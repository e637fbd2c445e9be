"""Per-device figures (``--device``): student inference and a training phase per precision, the teacher per frame and per batch, patch time on the device, the edge segmenter's pipeline against the bare model, inference beside the batch encoder."""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
from pathlib import Path

import torch

from ams_ros.core.common.devices import (
    describe, resolve_dtype, autocast_for)
from ams_ros.core.common.threads import set_torch_threads, usable_cores
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.inference import EdgeInference
from ams_ros.core.models.labels import colorize, get_label_space, overlay
from ams_ros.core.models.student import to_input
from ams_ros.core.models.teachers import build_teacher, place_teacher
from ams_ros.core.wire.frame_codec import encode_frames

from ams_ros.bench.common import log, median_ms, small_trainer, synthetic_samples, timed_ms


def inference_beside_encoder(student, frames: list, stamps: list[float]) -> dict:
    """Inference latency (512x256) while the camera sampler H.264-encodes one batch on another
    thread, per torch thread count and x264 thread count: torch's spinning workers and a busy
    encoder must not want more cores than there are. The edge's defaults are marked."""

    old = torch.get_num_threads()
    cores = usable_cores()
    default_torch = set_torch_threads(0, reserve=1)
    x = torch.rand(1, 3, 256, 512)
    out: dict = {"cores": cores, "edge_default": {"torch_threads": default_torch, "encoder_threads": 1}, "runs": []}
    for nt in sorted({1, max(1, cores - 1), cores}):
        for xt in (1, 0):
            torch.set_num_threads(nt)
            with torch.no_grad():
                idle = median_ms(lambda: student(x), repeat=5)
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


def segmenter_pipeline(student, repeat: int) -> dict:
    """The edge segmenter's work per frame (256x128, one torch thread) against the bare model:
    labels only (nobody subscribes to mask/overlay), all outputs on the device path, and the
    pipeline before issue #14 (predict + NumPy colorize + overlay). ROS message conversion is
    not included (this runs without ROS)."""

    space = get_label_space("voc")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frame = synthetic_samples(1, (256, 128))[0][1]
        x = torch.rand(1, 3, 128, 256)
        inf = EdgeInference(space, (256, 128), "cpu")
        with torch.no_grad():
            bare = median_ms(lambda: student(x), repeat=repeat)
        labels_only = median_ms(lambda: inf.run(student, frame), repeat=repeat)
        all_outputs = median_ms(lambda: inf.run(student, frame, mask=True, overlay=True, alpha=0.5), repeat=repeat)

        def before():  # what the node did before issue #14: predict() with argmax, NumPy colour and blend
            with torch.no_grad():
                lab = student(to_input([frame], (256, 128))).argmax(dim=1).to(torch.uint8).numpy()[0]
            overlay(frame, colorize(lab, space), 0.5)

        old_all = median_ms(before, repeat=repeat)
    finally:
        torch.set_num_threads(old)
    out = {"bare_model_ms": round(bare, 2), "labels_only_ms": round(labels_only, 2),
           "all_outputs_ms": round(all_outputs, 2), "before_issue14_all_outputs_ms": round(old_all, 2),
           "ratio_labels_only": round(labels_only / bare, 3), "ratio_all_outputs": round(all_outputs / bare, 3),
           "ratio_before_issue14": round(old_all / bare, 3), "torch_threads": 1, "size": "256x128",
           "note": "frame (uint8) -> label map (+ colour mask, overlay) in core; message conversion not included"}
    log(f"segmenter pipeline 256x128, 1 thread: bare model {out['bare_model_ms']} ms, labels only "
        f"{out['labels_only_ms']} ms ({out['ratio_labels_only']}x), all outputs {out['all_outputs_ms']} ms "
        f"({out['ratio_all_outputs']}x), before #14 {out['before_issue14_all_outputs_ms']} ms ({out['ratio_before_issue14']}x)")
    return out


def bench_teacher(spec: str, device, size: tuple[int, int], repeat: int, tmp: Path):
    """A teacher for timing: ``spec``, or a randomly initialised torchvision DeepLabV3-MobileNetV3
    loaded by spec from a state dict written to ``tmp`` (timing does not depend on the weights)."""

    if not spec:
        import torchvision.models.segmentation as seg

        path = tmp / "deeplabv3_mobilenet_v3_large_random.pth"
        if not path.exists():
            torch.manual_seed(0)
            net = seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
            torch.save(net.state_dict(), path)
        spec = f"torchvision:deeplabv3_mobilenet_v3_large@{path}"
    teacher = build_teacher(spec)
    if hasattr(teacher, "input_size"):
        teacher.input_size = size
    where = place_teacher(teacher, device, explicit=False)
    return teacher, spec, where


def device_figures(args: argparse.Namespace, student, samples, updates_5pct: dict, device) -> dict:
    """Per precision on ``device``: inference, a training phase, the teacher, patch apply."""

    out: dict = {"device": describe(device), "phase_steps": args.phase_steps, "phase_batch": 8,
                 "phase_size": "512x256", "precisions": {}}
    x = torch.rand(1, 3, 256, 512, device=device)
    model = copy.deepcopy(student).to(device).eval()
    frames = [f for _, f, _ in samples[:10]]
    tw, th = args.teacher_width, args.teacher_height
    teacher, spec, where = bench_teacher(args.teacher, device, (tw, th), args.repeat, Path(args.out))
    out["teacher"] = {"spec": spec, "runs_on": where, "input": f"{tw}x{th}"}
    for name in args.precisions:
        dtype = resolve_dtype(name)
        fig: dict = {}
        with torch.no_grad(), autocast_for(device, dtype):
            fig["student_ms_512x256"] = round(timed_ms(lambda: model(x), device, args.repeat), 2)
            if args.channels_last:
                cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
                xc = x.contiguous(memory_format=torch.channels_last)
                fig["student_ms_512x256_channels_last"] = round(timed_ms(lambda: cl(xc), device, args.repeat), 2)
        m = copy.deepcopy(student).to(device)
        tr = small_trainer(m, (512, 256), 0.05, iterations=args.phase_steps)
        tr.reconfigure(train_precision=name)
        for t, f, g in samples:
            tr.add_sample(t, f, g)
        t0 = time.perf_counter()
        res = tr.train_phase(60.0)
        fig["phase_s"] = round(time.perf_counter() - t0, 3)
        fig["phase_loss"] = round(float(res.loss), 4)
        out["precisions"][name] = fig
        log(f"{describe(device)} {name}: " + ", ".join(f"{k} {v}" for k, v in fig.items()))
    # the teacher and the patcher run in float32
    teacher.label(frames[:1])  # warm-up (cuDNN, allocator)
    reps = max(1, args.repeat // 4)
    out["teacher_ms_per_frame"] = round(median_ms(lambda: teacher.label(frames[:1]), reps, warmup=1), 1)
    out["teacher_ms_per_10_frame_batch"] = round(median_ms(lambda: teacher.label(frames), reps, warmup=1), 1)
    edge = DoubleBufferedModel(copy.deepcopy(student).to(device))
    upd = updates_5pct["paper_gzip_fp16"]

    def apply():
        u = copy.copy(upd)
        u.base_version, u.new_version = edge.version, edge.version + 1
        u.checksum = u.compute_checksum()
        edge.apply_update(u)

    out["patch_apply_ms_paper_gzip_fp16"] = round(timed_ms(apply, device, args.repeat), 2)
    log(f"{describe(device)}: teacher {out['teacher_ms_per_frame']} ms/frame, {out['teacher_ms_per_10_frame_batch']} ms "
        f"per 10-frame batch ({spec.split('@')[0]} at {tw}x{th}, on {where}); patch decode+apply+swap "
        f"{out['patch_apply_ms_paper_gzip_fp16']} ms")
    return out
