"""ams-eval: replay a video through every scheme of the paper in stream time and compare them.

    make eval ARGS="run --source VIDEO|FOLDER|ROSBAG|synthetic[:SEED] --teacher SPEC \\
        --student-weights CKPT --preset cpu-quick --out out/eval/NAME"
    make eval ARGS="pretrain --sources A B ... --exclude EVALUATED --teacher SPEC \\
        --student-weights tflite:STUDENT.tflite --out out/eval/student.pt"
    make eval ARGS="summarize out/eval/A out/eval/B"
    make eval ARGS="fleet --sources synthetic:0 synthetic:1 --robots 1,2,4 --policies round_robin,utility \
        --teacher oracle --out out/eval/fleet"      (N robots sharing one server GPU, issue 16)
    make eval ARGS="fleet-check out/demo3"       (that model against a `make demo ARGS="--robots 3 --out out/demo3"` run, issue 31)
    make eval ARGS="replot out/eval/A"
    make eval ARGS="merge out/eval/A-jit out/eval/A-ams --out out/eval/A"   (schemes run in parallel processes)
    make eval ARGS="merge out/eval/F-9 out/eval/F-136 --out out/eval/F"    (fleet studies of other N, side by side)

``run`` is the default subcommand. Teacher specs: ``tflite:PATH``, ``torchvision:NAME[@W.pth]``,
``checkpoint:PATH``, ``espnetv2:PATH[@DEVICE]``, ``oracle[:SEED][?shifts=..]`` (the synthetic world's). Schemes: ``none``,
``one_time``, ``remote_tracking``, ``jit``, ``shadowtutor``, ``ams``, each optionally with
parameters (``jit:threshold=0.6``, ``ams:strategy=random,gamma=0.1``); ``--table3`` adds the
selection strategies x fractions of the paper's Table 3. Ctrl-C writes what was computed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from ams_ros.core import sources as _sources  # noqa: F401 (registers the synthetic world's oracle teacher)
from ams_ros.core.common.devices import resolve_device, describe, torch_sees
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.core.fleet.scheduling import POLICIES, SchedulerConfig
from ams_ros.core.fleet.worker import TeacherSpec
from ams_ros.core.models.labels import parse_class_list
from ams_ros.core.models.teachers import build_teacher, place_teacher, select_classes
from ams_ros.core.models.weights import load_student
from ams_ros.eval.analysis import analyze
from ams_ros.eval.clips import load_clip
from ams_ros.eval.fleet import StudyInterrupted, fleet_study, parse_alone, write_study
from ams_ros.eval.leave_one_out import pretrain
from ams_ros.eval.fleet_merge import REFERENCE_NEUTRAL, is_fleet_folder, merge_studies
from ams_ros.eval.merge import merge_runs
from ams_ros.eval.presets import get_preset, parse_overrides
from ams_ros.eval.report import write_results, combine, replot, PAPER_NAMES
from ams_ros.eval.schemes import parse_scheme, table3_specs, run_scheme
from ams_ros.eval.simulator import RunContext

DEFAULT_CLASSES = "road,sidewalk,building,vegetation,sky,person,car"
DEFAULT_SCHEMES = "none,one_time,remote_tracking,jit,shadowtutor,ams"
DEFAULT_CACHE = "out/eval/cache"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True,
                   help="tflite:PATH | torchvision:NAME[@WEIGHTS.pth] | checkpoint:PATH | espnetv2:PATH[@DEVICE] | oracle[:SEED][?shifts=T,..]")
    p.add_argument("--label-space", default="", help="the teacher's label space (default: the teacher's own)")
    p.add_argument("--teacher-min-confidence", type=float, default=TeacherSpec.min_confidence,
                   help="teacher pixels whose top softmax probability is below this are ignored (issue #29; PyTorch "
                        "teachers; 0 = every pixel)")
    p.add_argument("--classes", "--selected-classes", dest="classes", default=DEFAULT_CLASSES,
                   help="comma-separated class names evaluated and trained ('' = all of the teacher's)")
    p.add_argument("--student", default="deeplabv3_mobilenet_v2", help="student model name")
    p.add_argument("--preset", default="cpu-quick", help="paper | cpu-quick | cpu-paper-timing (ams_ros/eval/presets.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override preset fields, e.g. --set train_speedup=5 --set jit_threshold=0.6")
    p.add_argument("--max-seconds", type=float, default=0.0, help="use only the first N seconds of each source (0 = all)")
    p.add_argument("--device", default="auto",
                   help="torch device of the student, the server's training and a PyTorch teacher: auto (first CUDA "
                        "device, else the CPU) | cpu | cuda | cuda:N; CUDA where torch sees none is an error")
    p.add_argument("--inference-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="the edge student's inference precision (autocast; weights and updates stay float32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a small machine shared with other work; 0 = torch's default)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="folder caching the teacher's labels ('' = no cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ams-eval", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="replay a clip through the schemes (default)")
    run.add_argument("--source", required=True,
                     help="video file, image folder (frame-number names, labels/ beside), rosbag2, device:N, synthetic[:SEED]")
    run.add_argument("--student-weights", default="", help="initial student weights: checkpoint or tflite:PATH")
    run.add_argument("--schemes", default=DEFAULT_SCHEMES, help=f"comma-separated (default {DEFAULT_SCHEMES}); "
                     "parameters after ':' separated by '+', e.g. jit:threshold=0.6+gamma=1")
    run.add_argument("--table3", action="store_true", help="also run AMS with every Table 3 strategy x fraction")
    run.add_argument("--out", default="out/eval/run", help="output folder")
    run.add_argument("--no-plots", action="store_true")
    _common(run)
    pre = sub.add_parser("pretrain", help="distil the teacher into the student on generic footage")
    pre.add_argument("--sources", nargs="+", required=True, help="footage NOT evaluated later")
    pre.add_argument("--exclude", nargs="*", default=[], help="evaluated footage; refused as a pretraining source")
    pre.add_argument("--student-weights", default="", help="starting weights, e.g. tflite:PATH (VOC backbone)")
    pre.add_argument("--steps", type=int, default=300, help="Adam steps")
    pre.add_argument("--batch-size", type=int, default=8)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--sample-fps", type=float, default=1.0, help="frames taken per second of each source")
    pre.add_argument("--holdout", type=float, default=0.2, help="last fraction of each source held out for scoring")
    pre.add_argument("--no-flip", action="store_true", help="no mirrored copies")
    pre.add_argument("--out", required=True, help="checkpoint path to write")
    _common(pre)
    summ = sub.add_parser("summarize", help="one markdown table over several runs")
    summ.add_argument("runs", nargs="+", help="output folders (or results.json files)")
    summ.add_argument("--out", default="", help="write the markdown here (default: print)")
    summ.add_argument("--skip-s", type=float, default=0.0,
                      help="mIoU over the frames after the first SKIP_S seconds of each run (from its series.json; "
                           "the paper skips 250 s of its long videos)")
    fl = sub.add_parser("fleet", help="N robots sharing one server GPU, per scheduling policy (Figure 6)")
    fl.add_argument("--sources", nargs="+", default=["synthetic:0"],
                    help="robots' clips; robot j replays source j mod len (reused: time-offset, mirrored every other)")
    fl.add_argument("--robots", default="1,2,4", help="comma list of N (robots per GPU)")
    fl.add_argument("--policies", default="round_robin,utility", help="comma list of scheduler policies")
    fl.add_argument("--fused", action="store_true", help="train all due robots in one fused phase (costed by the preset)")
    fl.add_argument("--alone", default="all",
                    help="robots whose reference run alone this study computes: all (every robot up to the largest N), "
                         "none, or a list such as 1-4,7; a study without some references gets its losses from "
                         "'ams-eval merge' with a study that has them")
    fl.add_argument("--student-weights", default="", help="initial student weights: checkpoint or tflite:PATH")
    fl.add_argument("--out", default="out/eval/fleet", help="output folder")
    fl.add_argument("--no-plots", action="store_true")
    _common(fl)
    pl = sub.add_parser("plan", help="robots per GPU at a loss budget and GPUs for a fleet, from a fleet study (issue 31)")
    pl.add_argument("study", help="fleet.json of an earlier 'ams-eval fleet'")
    pl.add_argument("--loss-budget", type=float, default=1.0, help="mIoU points a robot may lose to sharing the GPU")
    pl.add_argument("--fleets", default="10,50,200", help="comma list of fleet sizes to provision GPUs for")
    pl.add_argument("--out", default="", help="also write the answer as JSON here")
    fc = sub.add_parser("fleet-check", help="the fleet model against a real `make demo --robots N` run (issue 31)")
    fc.add_argument("demo", help="output folder of the demo run (its summary.json)")
    fc.add_argument("--policy", default=SchedulerConfig.policy,
                    help=f"the base station's scheduler policy in that run (default {SchedulerConfig.policy})")
    fc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the model's settings, e.g. --set teacher_s=0.05")
    fc.add_argument("--device", default="auto", help="torch device of the modelled students' training")
    fc.add_argument("--threads", type=int, default=1, help="torch threads")
    fc.add_argument("--cache", default=DEFAULT_CACHE, help="folder caching the teacher's labels ('' = no cache)")
    fc.add_argument("--out", default="", help="output folder (default: DEMO/fleet-check)")
    fc.add_argument("--quiet", action="store_true", help="no progress bars")
    an = sub.add_parser("analyze", help="per-frame gain of one scheme over another vs label age and motion (issue #11)")
    an.add_argument("run", help="output folder of an earlier 'ams-eval run' (its series.json and results.json)")
    an.add_argument("--source", default="", help="the run's source, for the motion (default: as in results.json)")
    an.add_argument("--a", default="ams", help="the scheme whose gain is measured")
    an.add_argument("--b", default="remote_tracking", help="the scheme it is measured against")
    an.add_argument("--no-motion", action="store_true", help="skip the optical flow (no source needed)")
    an.add_argument("--skip-s", type=float, default=0.0,
                    help="only frames this many seconds after the stream's start (the paper skips 250 s)")
    mg = sub.add_parser("merge", help="one run folder from runs of the same experiment made in parallel "
                        "(e.g. --schemes jit in one process, --schemes none,ams in another; or fleet studies: "
                        "--robots 9 in one, --robots 1,3,6 in another)")
    mg.add_argument("runs", nargs="+", help="output folders of earlier 'ams-eval run's, or all of 'ams-eval fleet' "
                    "studies: same source(s), teacher, student, classes and preset")
    mg.add_argument("--out", required=True, help="the merged run's folder (not one of the runs)")
    mg.add_argument("--references-only", nargs="+", default=[], metavar="STUDY",
                    help="fleet studies whose robots' references alone are taken (not their runs); their preset may "
                         f"differ in fleet-only fields ({', '.join(REFERENCE_NEUTRAL)}, where checked not to change a "
                         "robot alone)")
    mg.add_argument("--no-plots", action="store_true")
    rep = sub.add_parser("replot", help="redraw a run's figures from its series.json")
    rep.add_argument("runs", nargs="+", help="output folders of earlier runs")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*sub.choices, "-h", "--help"):
        argv = ["run", *argv]
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help()
        raise SystemExit(2)
    args.argv = argv
    return args


def _setup(args):
    """Device, threads, preset, teacher (on the device when it is a PyTorch model), selected label
    space and its LUT."""

    args.torch_device = resolve_device(args.device)  # DeviceError (exit 2) naming what torch sees
    set_torch_threads(args.threads)  # 1 is fastest on a small machine shared with other work
    overrides = parse_overrides(args.overrides)
    if getattr(args, "inference_dtype", "float32") != "float32":
        overrides.setdefault("inference_dtype", args.inference_dtype)
    preset = get_preset(args.preset).with_overrides(overrides)
    teacher = build_teacher(args.teacher, label_space=args.label_space or None)
    args.teacher_device = place_teacher(teacher, args.torch_device,
                                        explicit=args.device.strip().lower() not in ("", "auto"),
                                        min_confidence=float(args.teacher_min_confidence))
    # the clip and the harness map the full teacher's labels (and human labels) through the LUT
    restricted = select_classes(teacher, parse_class_list(args.classes))
    return preset, overrides, teacher, restricted.label_space, getattr(restricted, "lut", None)


def _machine(args=None) -> dict:
    import torch

    device = getattr(args, "torch_device", None)
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": describe(device) if device is not None else "cpu", "torch_sees": torch_sees(),
            "teacher_device": getattr(args, "teacher_device", None),

            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _scheme_list(args) -> list:
    texts = [s.strip() for s in args.schemes.split(",") if s.strip()]
    # parameters are written with '+' between them on the command line (',' separates schemes)
    texts = [t.replace("+", ",") for t in texts]
    if args.table3:
        texts += [t for t in table3_specs() if t not in texts]
    specs = [parse_scheme(t) for t in texts]
    if not any(s.name == "none" for s in specs):
        specs.insert(0, parse_scheme("none"))  # the reference of Figure 5
    else:
        specs.sort(key=lambda s: s.name != "none")
    seen, out = set(), []
    for s in specs:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    t_start = time.monotonic()
    specs = _scheme_list(args)
    preset, overrides, teacher, space, lut = _setup(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": args.source, "teacher": args.teacher, "student": args.student,
            "student_weights": args.student_weights or None, "overrides": overrides or None,
            "command": "python -m ams_ros.eval.cli " + shlex.join(args.argv),
            "started": _dt.datetime.now().isoformat(timespec="seconds"), "machine": _machine(args)}
    results: dict = {}
    interrupted = False
    failed: list[str] = []
    try:
        clip = load_clip(args.source, (preset.width, preset.height), teacher, lut, eval_fps=preset.eval_fps,
                         max_seconds=args.max_seconds, cache_dir=args.cache or None, progress=not args.quiet,
                         upload_quality=preset.jpeg_quality)
    except KeyboardInterrupt:
        print("\n[ams-eval] interrupted while labelling the clip: nothing to report", flush=True)
        return 130
    torch.manual_seed(preset.seed)  # a random start (no weights given) is the same in every run
    student = load_student(args.student, num_classes=len(space.class_names),
                           weights=args.student_weights or None).to(args.torch_device).eval()
    print(f"[ams-eval] {len(clip)} frames over {clip.duration:.1f} s of '{args.source}', preset {preset.name}"
          f"{' ' + str(overrides) if overrides else ''}, classes {list(space.class_names)}", flush=True)
    for spec in specs:
        bar = tqdm(total=len(clip), desc=spec.name, unit="frame", disable=args.quiet)
        ctx = RunContext(clip, student, preset, teacher=teacher, lut=lut, progress=bar.update)
        try:
            results[spec.name] = run_scheme(ctx, spec)
        except KeyboardInterrupt:
            interrupted = True
            if ctx.started:
                results[spec.name] = ctx.started[-1].finish(interrupted=True)
            print(f"\n[ams-eval] interrupted during '{spec.name}': writing what was computed", flush=True)
        except Exception as exc:  # one scheme's failure must not cost the others' results
            failed.append(spec.name)
            traceback.print_exc()
            if ctx.started:
                res = ctx.started[-1].finish(interrupted=True)
                res.notes.append(f"FAILED after {res.frames_done} frames: {type(exc).__name__}: {exc}")
                results[spec.name] = res
            print(f"\n[ams-eval] '{spec.name}' failed ({exc}); going on with the other schemes", flush=True)
        finally:
            bar.close()
        meta["wall_seconds"] = round(time.monotonic() - t_start, 1)
        last = interrupted or spec is specs[-1]
        write_results(out, meta, clip, results, preset, partial=interrupted, plots=last and not args.no_plots)
        if interrupted:
            break
    print((out / "results.md").read_text(), flush=True)
    print(f"[ams-eval] wrote {out}/results.json, results.md and plots", flush=True)
    if failed:
        print(f"[ams-eval] failed: {', '.join(failed)} (see the notes in results.md)", file=sys.stderr, flush=True)
    return 130 if interrupted else (1 if failed else 0)


def cmd_plan(args: argparse.Namespace) -> int:
    """(issue #31) An operator's answer from a fleet study: robots per GPU at a loss budget, GPUs per fleet."""
    from ams_ros.eval.fleet import plan

    study = json.loads(Path(args.study).read_text())
    fleets = [int(n) for n in args.fleets.split(",") if n.strip()]
    answer = plan(study, args.loss_budget, fleets)
    cost = study.get("preset", {})
    print(f"[ams-eval] from {args.study} (teacher {cost.get('teacher_call_s', 0):g} s a call + {cost.get('teacher_s')} "
          f"s a frame, training {cost.get('train_s_per_step')} s a step, K={cost.get('iterations')}; N tested up to "
          f"{answer['largest_n_tested']}):")
    print(f"robots per GPU within {args.loss_budget:g} mIoU point(s): {answer['robots_per_gpu']['mean']} on average, "
          f"{answer['robots_per_gpu']['worst']} for the worst robot")
    print("| robots | GPUs (mean loss within budget) | GPUs (worst robot within budget) |\n|---|---|---|")
    for size, gpus in answer["gpus"].items():
        print(f"| {size} | {gpus['mean'] if gpus['mean'] is not None else '-'} | "
              f"{gpus['worst'] if gpus['worst'] is not None else '-'} |")
    if answer["note"]:
        print(answer["note"])
    if args.out:
        Path(args.out).write_text(json.dumps(answer, indent=2))
    return 0


def _fleet_clips(sources, preset, teacher, lut, max_seconds: float, args: argparse.Namespace) -> list:
    """Each robot's clip, labelled (cached in ``args.cache``) and cut to the shortest one's frames."""
    clips = [load_clip(src, (preset.width, preset.height), teacher, lut, eval_fps=preset.eval_fps,
                       max_seconds=max_seconds, cache_dir=args.cache or None, progress=not args.quiet).cache_frames()
             for src in sources]
    n = min(len(c) for c in clips)
    return [c.head(n) for c in clips]


def cmd_fleet_check(args: argparse.Namespace) -> int:
    """(issue #31) The fleet model of a real demo run, compared per robot (ams_ros/eval/fleet_check.py)."""
    from tqdm import tqdm

    from ams_ros.eval.fleet_check import DemoRun, markdown, model_preset, run_check

    t_start = time.monotonic()
    demo = DemoRun.read(args.demo)
    s = demo.settings
    # the demo's teacher and classes, as _setup reads them from a command line
    args.teacher, args.label_space = s.get("teacher") or "oracle", s.get("label_space") or ""
    args.classes, args.teacher_min_confidence, args.preset = s.get("selected_classes") or "", 0.0, "cpu-quick"
    user_overrides, args.overrides = args.overrides, []
    _, _, teacher, space, lut = _setup(args)
    preset = model_preset(demo, get_preset("cpu-quick")).with_overrides(parse_overrides(user_overrides))
    sources = [r["source"] for r in demo.robots.values()]
    clips = _fleet_clips(sources, preset, teacher, lut, demo.stream_seconds, args)
    torch.manual_seed(preset.seed)
    student = load_student(s.get("student") or "deeplabv3_mobilenet_v2", num_classes=len(space.class_names),
                           weights=demo.student_weights or None).eval()

    def progress(name: str, total: int):
        bar = tqdm(total=total, desc=name, unit="frame", disable=args.quiet)
        return bar.update

    result = run_check(demo, clips, student, preset, teacher, lut, policy=args.policy, progress=progress)
    out = Path(args.out or Path(args.demo) / "fleet-check")
    out.mkdir(parents=True, exist_ok=True)
    result["command"] = "python -m ams_ros.eval.cli " + shlex.join(args.argv)
    result["wall_seconds"] = round(time.monotonic() - t_start, 1)
    result["machine"] = _machine(args)
    (out / "fleet_check.json").write_text(json.dumps(result, indent=2))
    text = markdown(result["rows"], demo)
    (out / "fleet_check.md").write_text(text)
    print(text, flush=True)
    print(f"[ams-eval] wrote {out}/fleet_check.json and fleet_check.md in {result['wall_seconds']} s", flush=True)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    """N robots sharing one modelled server GPU (ams_ros/eval/fleet.py): JSON, markdown, plot."""
    from tqdm import tqdm

    t_start = time.monotonic()
    robots = [int(n) for n in args.robots.split(",") if n.strip()]
    policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    bad = [s for s in policies if s not in POLICIES]
    if bad or not robots or min(robots) < 1:
        raise ValueError(f"--policies {bad} not valid (choose from {', '.join(POLICIES)}) or --robots "
                         f"'{args.robots}' not a list of N >= 1")
    alone = parse_alone(args.alone, max(robots))
    preset, overrides, teacher, space, lut = _setup(args)
    out = Path(args.out)
    meta = {"sources": args.sources, "teacher": args.teacher, "student": args.student,
            "student_weights": args.student_weights or None, "classes": args.classes or None,
            "max_seconds": args.max_seconds, "overrides": overrides or None, "command": "python -m ams_ros.eval.cli " + shlex.join(args.argv),
            "started": _dt.datetime.now().isoformat(timespec="seconds"), "machine": _machine()}
    try:
        clips = _fleet_clips(args.sources, preset, teacher, lut, args.max_seconds, args)
    except KeyboardInterrupt:
        print("\n[ams-eval] interrupted while labelling the clips: nothing to report", flush=True)
        return 130
    torch.manual_seed(preset.seed)  # a random start (no weights given) is the same in every run
    student = load_student(args.student, num_classes=len(space.class_names),
                           weights=args.student_weights or None).eval()
    bars: list = []

    def progress(name: str, total: int):
        for b in bars:
            b.close()
        bars[:] = [tqdm(total=total, desc=name, unit="frame", disable=args.quiet)]
        return bars[0].update

    def save(study: dict, plots: bool = False) -> None:
        meta["wall_seconds"] = round(time.monotonic() - t_start, 1)
        write_study(out, study, preset, meta, plots=plots and not args.no_plots)

    try:
        study = fleet_study(clips, student, preset, robots, policies, args.fused, teacher, lut, progress, save,
                            alone=alone)
        interrupted = False
    except StudyInterrupted as exc:
        study, interrupted = exc.study, True
        print("\n[ams-eval] interrupted: writing what was computed", flush=True)
    for b in bars:
        b.close()
    save(study, plots=True)
    print((out / "fleet.md").read_text(), flush=True)
    print(f"[ams-eval] wrote {out}/fleet.json, fleet.md and fleet_miou_loss.png in {meta['wall_seconds']} s", flush=True)
    return 130 if interrupted else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    preset, _, teacher, space, lut = _setup(args)
    try:
        pretrain(args.sources, teacher, lut, args.student, args.student_weights or None,
                 (preset.width, preset.height), args.out, space, steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, sample_fps=args.sample_fps, holdout=args.holdout, max_seconds=args.max_seconds,
                 flip=not args.no_flip, cache_dir=args.cache or None, exclude=args.exclude,
                 log=lambda m: print(m, flush=True), progress=not args.quiet)
    except KeyboardInterrupt:
        print("\n[ams-eval pretrain] interrupted: no checkpoint written", flush=True)
        return 130
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    text = combine(args.runs, skip_s=args.skip_s)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_replot(args: argparse.Namespace) -> int:
    for run in args.runs:
        if not (Path(run) / "series.json").exists():
            raise FileNotFoundError(f"{run}/series.json not found: replot needs a run folder written by 'ams-eval run'")
        replot(Path(run))
        print(f"[ams-eval] redrew the figures of {run}", flush=True)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    fleets = [is_fleet_folder(r) for r in args.runs]
    if all(fleets):
        study = merge_studies(args.runs, args.out, plots=not args.no_plots, references=args.references_only)
        print((Path(args.out) / "fleet.md").read_text(), flush=True)
        for d in study["differences"]:
            print(f"[ams-eval] {d['what']} ran in {d['kept_from']} (kept) and {d['other']} with other figures: "
                  + ", ".join(f"{k} {a} / {b}" for k, (a, b) in d["fields"].items()), flush=True)
        print(f"[ams-eval] merged N = {', '.join(map(str, study['robots']))} and {len(study['alone'])} robots alone "
              f"from {len(args.runs)} fleet studies into {args.out}", flush=True)
        return 0
    if any(fleets):
        raise ValueError(f"{', '.join(r for r, f in zip(args.runs, fleets) if f)} are 'ams-eval fleet' studies and "
                         f"{', '.join(r for r, f in zip(args.runs, fleets) if not f)} are not: merge folders of one kind")
    merged = merge_runs(args.runs, args.out, plots=not args.no_plots)
    print((Path(args.out) / "results.md").read_text(), flush=True)
    print(f"[ams-eval] merged {', '.join(merged['schemes'])} from {len(args.runs)} runs into {args.out}", flush=True)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    run = Path(args.run)
    if not (run / "series.json").exists() or not (run / "results.json").exists():
        raise FileNotFoundError(f"{run}/series.json or results.json not found: analyze needs a folder written by "
                                f"'ams-eval run'")
    meta = json.loads((run / "results.json").read_text())
    params = meta.get("preset_params") or {}
    size = (int(params.get("width", 256)), int(params.get("height", 128)))
    source = None if args.no_motion else (args.source or meta.get("source"))
    res = analyze(run, source, size, a=args.a, b=args.b, skip_s=args.skip_s)
    after = f" after {args.skip_s:g} s" if args.skip_s else ""
    print(f"[ams-eval] {res['a']} - {res['b']} over {res['frames']} frames{after}: mean {100 * (res['gain_mean'] or 0):+.1f} "
          f"points", flush=True)
    for key, unit in (("gain_vs_label_age_frames", "frames since the tracked label"), ("gain_vs_motion_px", "flow px")):
        for row in res.get(key, []):
            if row["frames"]:
                print(f"  {unit} [{row['from']:g}, {row['to']:g}): {row['frames']} frames, mean "
                      f"{100 * row['gain_mean']:+.1f} points", flush=True)
    if res.get("per_item"):
        names = list(res["per_item"][0]["miou"])
        print("[ams-eval] mean windowed mIoU vs teacher (%) per playlist item:\n| item (stream s) | "
              + " | ".join(PAPER_NAMES.get(n, f"`{n}`") for n in names) + f" | {res['a']} - {res['b']}, per frame |\n"
              + "|---" * (len(names) + 2) + "|", flush=True)
        for row in res["per_item"]:
            cells = ["-" if row["miou"][n] is None else f"{100 * row['miou'][n]:.1f}" for n in names]
            gain = "-" if row["gain_mean"] is None else f"{100 * row['gain_mean']:+.1f}"
            print(f"| {row['item']} ({row['from']:.0f}-{row['to']:.0f}) | " + " | ".join(cells) + f" | {gain} |",
                  flush=True)
    print(f"[ams-eval] wrote {run}/analysis.json and its plots", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cmd == "pretrain":
            return cmd_pretrain(args)
        if args.cmd == "summarize":
            return cmd_summarize(args)
        if args.cmd == "replot":
            return cmd_replot(args)
        if args.cmd == "fleet":
            return cmd_fleet(args)
        if args.cmd == "fleet-check":
            return cmd_fleet_check(args)
        if args.cmd == "plan":
            return cmd_plan(args)
        if args.cmd == "analyze":
            return cmd_analyze(args)
        if args.cmd == "merge":
            return cmd_merge(args)
        return cmd_run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ams-eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
