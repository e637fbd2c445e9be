"""The demo's orchestration: weights, the two processes, the observer, the report."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ams_ros.core.labels import parse_class_list
from ams_ros.demo.processes import CONFIG, RosProcess, write_overrides


def prepare_weights(args: argparse.Namespace, out: Path) -> str:
    """The student's initial weights: given, or pretrained on the synthetic world and cached."""
    if args.student_weights:
        return args.student_weights
    if not args.source.startswith("synthetic"):
        raise SystemExit("--student-weights is required with a real source (a checkpoint or tflite:PATH)")
    from ams_ros.demo.pretrain import pretrained_synthetic_student

    return str(pretrained_synthetic_student(args, cache_dir=Path(args.cache_dir)))


def edge_and_server_params(args: argparse.Namespace, weights: str, out: Path) -> tuple[Path, Path]:
    """Parameter files layered over config/edge.yaml and config/server.yaml (same layout: the
    values every node of a process shares in ``/**``, the rest per node)."""
    sel = parse_class_list(args.selected_classes) or [""]
    dev = args.device_id
    student = {"student": args.student, "student_weights": weights, "label_space": args.label_space,
               "selected_classes": sel}
    edge = write_overrides(out / "params_edge.yaml", {
        "/**": {"device_id": dev, **student, "device": args.device},
        "camera_sampler": {
            "source": args.source, "publish_rate": float(args.fps),
            "duration_s": float(args.duration) + 5.0, "stamp_origin": "stream",
            "source_width": args.width, "source_height": args.height,
            "train_width": args.width, "train_height": args.height,
            "update_period": float(args.update_period), "bitrate_bps": int(args.bitrate),
        },
        "student_segmenter": {
            "input_width": args.width, "input_height": args.height, "torch_threads": 1,
            "inference_dtype": args.inference_dtype,
            "output_qos_depth": 50,  # the observer shares the CPU with both stacks: 10 s to catch up
        },
    })
    server = write_overrides(out / "params_server.yaml", {
        "/**": {"device_ids": [dev], **student},
        "teacher_labeler": {"teacher": args.teacher, "device": args.device},
        "ams_trainer": {
            "input_width": args.width, "input_height": args.height, "iterations": int(args.iterations),
            "batch_size": int(args.batch_size), "horizon_s": float(args.horizon),
            "update_period_s": float(args.update_period), "lr": float(args.lr), "gamma": float(args.gamma),
            "update_encoding": args.encoding, "torch_threads": 1,
            # the robot's session survives a server restart (issue #13); cleared per run in run_demo
            "state_dir": str(out / "server_state"),
            "device": args.device, "train_precision": args.train_precision,
        },
    })
    if not getattr(args, "unsigned", False):
        _add_demo_keys(edge, server, dev, out / "keys")
    return edge, server


def _add_demo_keys(edge: Path, server: Path, dev: str, key_dir: Path) -> None:
    """(issue #13) Ephemeral server and robot keys for this run, wired into both parameter files:
    the demo runs signed, as a deployment should."""
    import shutil

    import yaml

    from ams_ros.keys import generate

    shutil.rmtree(key_dir, ignore_errors=True)
    server_key_path, server_key = generate(key_dir, "server")
    robot_key_path, robot_key = generate(key_dir, dev)
    for path, extra in ((edge, {"robot_key_file": str(robot_key_path)}),
                        (server, {"robot_public_keys": [f"{dev}={robot_key.public_text}"]})):
        data = yaml.safe_load(path.read_text())
        data["/**"]["ros__parameters"].update(extra)
        if path == edge:
            patcher = data.setdefault("/**/model_patcher", {"ros__parameters": {}})["ros__parameters"]
            patcher["server_public_keys"] = [server_key.public_text]
        else:
            data["/**/ams_trainer"]["ros__parameters"]["signing_key_file"] = str(server_key_path)
        path.write_text(yaml.safe_dump(data))


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    print(f"[demo] output: {out.resolve()}  (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, DDS on loopback)")
    weights = prepare_weights(args, out)
    for old in (out / "server_state").glob("*.session*"):  # each demo run starts new chains
        old.unlink()
    if args.teacher == "oracle":
        if not args.source.startswith("synthetic"):
            raise SystemExit("the oracle teacher only knows the synthetic world: pass --teacher tflite:PATH (or another spec)")
        args.teacher = "oracle" + (args.source[len("synthetic"):] or ":0")
        if args.teacher.startswith("oracle?"):
            args.teacher = "oracle:0" + args.teacher[len("oracle"):]
    edge_params, server_params = edge_and_server_params(args, weights, out)

    from ams_ros.demo.observer import Observer

    observer = Observer(args, weights, out)
    server = RosProcess("server", "ams_ros.nodes.server", [CONFIG / "server.yaml", server_params], None,
                        out / "server.log", echo=not args.quiet)
    # give the server a moment to come up so the robot's start-up snapshot request is answered
    observer.wait_for_service(timeout=30.0)
    edge = RosProcess("edge", "ams_ros.nodes.edge", [CONFIG / "edge.yaml", edge_params], args.device_id,
                      out / "edge.log", echo=not args.quiet)
    print(f"[demo] server pid {server.pid}, edge pid {edge.pid}; streaming {args.duration:g} s of '{args.source}'")
    rss = None
    if getattr(args, "rss_every", 0.0):
        from ams_ros.demo.rss import RssLog

        rss = RssLog({"edge": edge.pid, "server": server.pid}, every_s=args.rss_every, fit_from_s=args.rss_fit_from)
    interrupted = False
    try:
        observer.run(until_stream_t=args.duration, processes=[edge, server], rss=rss)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[demo] interrupted: stopping both processes and writing what was measured")
    finally:
        edge_rc = edge.stop()
        server_rc = server.stop()
        observer.close()
    tracebacks = [p.name for p in (edge, server) if "Traceback" in p.output()]
    rss_summary = rss.write(out) if rss is not None else None
    from ams_ros.demo.report import write_report

    summary = write_report(observer, out, args, extra={
        "edge_pid": edge.pid, "server_pid": server.pid, "edge_exit_code": edge_rc, "server_exit_code": server_rc,
        "tracebacks_in": tracebacks, "interrupted": interrupted, "wall_seconds": time.monotonic() - t_start,
        "student_weights": weights, **({"rss": rss_summary} if rss_summary else {}),
    })
    print(json.dumps(summary, indent=2))
    problems = exit_problems({"edge": edge_rc, "server": server_rc}, tracebacks)
    for p in problems:
        print(f"[demo] FAILED: {p}")
    return 1 if problems else 0


def exit_problems(exit_codes: dict[str, int | None], tracebacks: list[str]) -> list[str]:
    """Why the demo failed, from how its processes ended (issue #13: a server that aborted with
    -6 at stop used to leave the demo's exit code at 0). Each process must exit 0 when stopped
    and print no traceback."""
    problems = []
    for name, rc in exit_codes.items():
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
            problems.append(f"the {name} process {how} (see {name}.log); it must exit 0 when stopped")
    problems += [f"the {name} process printed a traceback (see {name}.log)" for name in tracebacks]
    return problems
