"""`make eval ARGS="..."` / `ams-eval`: compare every scheme of the paper on one clip.

    ams-eval run --source ../shared/assets/video/camvid-0016E5 \\
        --teacher tflite:../shared/assets/models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite \\
        --student-weights out/eval/pretrained_not_0016E5.pt --preset cpu-quick --out out/eval/camvid-0016E5
    ams-eval pretrain --sources A B --teacher ... --out out/eval/pretrained.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CLASSES = "road,sidewalk,building,vegetation,sky,person,car"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="tflite:PATH | torchvision:NAME | checkpoint:PATH | oracle:SEED")
    p.add_argument("--label-space", default="cityscapes", help="the teacher's label space")
    p.add_argument("--selected-classes", default=DEFAULT_CLASSES, help="comma-separated class names evaluated and trained")
    p.add_argument("--student", default="deeplabv3_mobilenet_v2", help="student model name")
    p.add_argument("--preset", default="cpu-quick", help="paper | cpu-quick")
    p.add_argument("--max-seconds", type=float, default=0.0, help="use only the first N seconds of the source (0 = all)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ams-eval", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="replay a clip through the schemes")
    run.add_argument("--source", required=True, help="video file, image folder (frame-number names), rosbag or synthetic[:seed]")
    run.add_argument("--student-weights", default="", help="initial student weights (checkpoint or tflite:PATH)")
    run.add_argument("--schemes", default="none,one_time,remote_tracking,jit,shadowtutor,ams", help="comma-separated schemes")
    run.add_argument("--out", default="out/eval", help="output folder")
    _common(run)
    pre = sub.add_parser("pretrain", help="distil the teacher into the student on generic footage")
    pre.add_argument("--sources", nargs="+", required=True, help="footage NOT evaluated later")
    pre.add_argument("--student-weights", default="", help="starting weights, e.g. tflite:PATH (backbone)")
    pre.add_argument("--steps", type=int, default=300, help="Adam steps")
    pre.add_argument("--out", required=True, help="checkpoint path to write")
    _common(pre)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("run", "pretrain", "-h", "--help"):
        argv = ["run", *argv]
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help()
        raise SystemExit(2)
    return args


def _spaces(args):
    from ams_ros.core.labels import get_label_space

    full = get_label_space(args.label_space)
    selected = [c.strip() for c in args.selected_classes.split(",") if c.strip()]
    if selected:
        return full.restrict(selected)
    return full, None


def load_clip(source: str, size: tuple[int, int], eval_fps: float, max_seconds: float, teacher, lut, progress=True):
    """Frames of ``source`` at the evaluation rate, with teacher and (if any) human labels."""
    from tqdm import tqdm

    from ams_ros.core.labels import camvid_to_cityscapes
    from ams_ros.core.sources import open_source
    from ams_ros.eval.harness import Clip

    times, frames, gts = [], [], []
    next_t = -1e9
    for t, rgb, gt in open_source(source, size=size, fps=eval_fps or None):
        if max_seconds and t > max_seconds:
            break
        if eval_fps and t < next_t - 1e-6:
            continue
        next_t = t + (1.0 / eval_fps if eval_fps else 0.0)
        times.append(float(t))
        frames.append(rgb)
        if gt is not None and source.startswith("synthetic"):
            gts.append(lut[gt] if lut is not None else gt)
        elif gt is not None and "camvid" in source.lower():  # CamVid ids -> Cityscapes -> selected
            g = camvid_to_cityscapes(gt)
            gts.append(lut[g] if lut is not None else g)
        else:
            gts.append(None)
    if not frames:
        raise SystemExit(f"no frames read from '{source}'")
    labels = []
    it = tqdm(range(0, len(frames), 8), desc="teacher labels", disable=not progress, unit="batch")
    for a in it:
        batch = frames[a:a + 8]
        stamped = getattr(teacher, "uses_stamps", False)
        for lab in (teacher.label(batch, stamps=times[a:a + 8]) if stamped else teacher.label(batch)):
            labels.append(lut[lab] if lut is not None else lab)
    n = int(lut.max(initial=0)) + 1 if lut is not None else len(teacher.label_space.class_names)
    n = len([v for v in np.unique(lut) if v != 255]) if lut is not None else n
    return Clip(np.asarray(times), frames, labels, gts, n)


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ams_ros.core.models.student import load_student
    from ams_ros.core.models.teachers import build_teacher
    from ams_ros.eval.harness import RUNNERS, SCHEMES
    from ams_ros.eval.presets import get_preset
    from ams_ros.eval.report import write_results

    preset = get_preset(args.preset)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise SystemExit(f"unknown scheme(s) {unknown}; choose from {', '.join(SCHEMES)}")
    if "none" in schemes:
        schemes.remove("none")
    schemes = ["none", *schemes]  # the reference for Figure 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space, lut = _spaces(args)
    teacher = build_teacher(args.teacher, label_space=args.label_space)
    t0 = time.monotonic()
    clip = load_clip(args.source, (preset.width, preset.height), preset.eval_fps, args.max_seconds, teacher, lut)
    student = load_student(args.student, num_classes=len(space.class_names), weights=args.student_weights or None).eval()
    print(f"[ams-eval] {len(clip.frames)} frames over {clip.times[-1] - clip.times[0]:.0f} s of '{args.source}', "
          f"preset {preset.name}, classes {list(space.class_names)}", flush=True)
    results = {}
    interrupted = False
    for name in schemes:
        bar = tqdm(total=len(clip.frames), desc=name, unit="frame")
        try:
            results[name] = RUNNERS[name](clip, student, preset, bar.update)
        except KeyboardInterrupt:
            interrupted = True
            print(f"\n[ams-eval] interrupted during '{name}': writing what was computed", flush=True)
            break
        finally:
            bar.close()
        write_results(out, args, preset, clip, results, space, partial=True)
    summary = write_results(out, args, preset, clip, results, space, partial=interrupted)
    summary["wall_seconds"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print((out / "results.md").read_text())
    return 130 if interrupted else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ams_ros.core.distill import distill
    from ams_ros.core.labels import get_label_space
    from ams_ros.core.metrics import ConfusionMatrix
    from ams_ros.core.models.student import load_student, predict, save_student_checkpoint
    from ams_ros.core.models.teachers import build_teacher
    from ams_ros.eval.presets import get_preset

    preset = get_preset(args.preset)
    size = (preset.width, preset.height)
    space, lut = _spaces(args)
    teacher = build_teacher(args.teacher, label_space=args.label_space)
    samples = []
    for src in args.sources:
        clip = load_clip(src, size, 1.0, args.max_seconds, teacher, lut)
        samples += list(zip(clip.frames, clip.teacher))
    held = samples[::5]
    train = [s for i, s in enumerate(samples) if i % 5]
    model = load_student(args.student, num_classes=len(space.class_names), weights=args.student_weights or None)

    def score() -> float:
        cm = ConfusionMatrix(len(space.class_names))
        for f, lab in held:
            cm.update(predict(model, [f], size=size)[0], lab)
        return cm.miou()

    before = score()
    print(f"[ams-eval pretrain] {len(train)} training / {len(held)} held-out frames from {args.sources}; "
          f"held-out mIoU vs teacher before: {before:.3f}", flush=True)

    def progress(step: int, loss: float) -> None:
        if step % 50 == 0:
            print(f"[ams-eval pretrain] step {step}/{args.steps} loss {loss:.3f}", flush=True)

    distill(model, train, steps=args.steps, batch_size=8, lr=1e-3, progress=progress)
    after = score()
    save_student_checkpoint(model, args.out, args.student, len(space.class_names), space,
                            pretrained_on=args.sources, heldout_miou=after)
    print(f"[ams-eval pretrain] held-out mIoU vs teacher after: {after:.3f}; wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cmd_pretrain(args) if args.cmd == "pretrain" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
