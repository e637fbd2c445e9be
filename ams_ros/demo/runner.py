"""The demo's orchestration: weights, the processes (one server, one edge per robot), the observer,
the report."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ams_ros.core.models.labels import parse_class_list
from ams_ros.nodes.common.dds_shm import remove_dead_segments
from ams_ros.nodes.common.processes import CONFIG, LaunchedProcess, RosProcess, launch_available, write_overrides
from ams_ros.nodes.common.parameter_files import merge_parameter_files, write_parameter_file
from ams_ros.core.security.signing import generate_key_file as generate
from ams_ros.demo.observer import Observer
from ams_ros.demo.report import write_report
from ams_ros.demo.rss import RssLog
from ams_ros.demo.synthetic_student import pretrained_synthetic_student


def prepare_weights(args: argparse.Namespace, out: Path) -> str:
    """The student's initial weights: given, or pretrained on the synthetic world and cached."""
    if args.student_weights:
        return args.student_weights
    if not args.source.startswith("synthetic"):
        raise SystemExit("--student-weights is required with a real source (a checkpoint or tflite:PATH)")

    return str(pretrained_synthetic_student(args, cache_dir=Path(args.cache_dir)))


@dataclass(frozen=True)
class RobotPlan:
    """One robot of the demo (issue #16: ``--robots N``): its id (and namespace), the source it
    plays, the server's teacher for its batches, and the suffix of its files (none with one
    robot: ``edge.log``, ``params_edge.yaml``; ``_robot2`` and so on with several)."""

    device_id: str
    source: str
    teacher: str
    suffix: str = ""


def robot_plans(robots: int, device_id: str, source: str, teacher: str) -> list[RobotPlan]:
    """The robots of a demo. One robot is ``device_id`` playing ``source``. ``N`` robots are
    ``robot1..robotN``; on the synthetic world robot i plays ``synthetic:<seed+i-1>`` (the same
    shift times) and the oracle teacher (``teacher`` "oracle") labels each robot's frames from its
    own world; a real source is played by every robot alike, labelled by the one ``teacher``."""
    if robots < 1:
        raise SystemExit(f"--robots must be >= 1, got {robots}")
    synthetic = source.startswith("synthetic")
    rest = source[len("synthetic"):] if synthetic else ""
    seed_part, sep, query = rest.partition("?")
    if synthetic and seed_part not in ("", ":") and not seed_part[1:].isdigit():
        raise SystemExit(f"--source '{source}': the seed must be an integer (synthetic[:SEED][?shifts=T1,T2])")
    seed = int(seed_part[1:]) if seed_part[1:] else 0
    tail = f"?{query}" if sep else ""
    if teacher == "oracle":
        if not synthetic:
            raise SystemExit("the oracle teacher only knows the synthetic world: pass --teacher tflite:PATH (or another spec)")

    def teacher_of(world_seed: int) -> str:  # the oracle of that world, or the one teacher
        return f"oracle:{world_seed}{tail}" if teacher == "oracle" else teacher

    if robots == 1:
        return [RobotPlan(device_id, source, teacher_of(seed))]
    if device_id != "robot1":
        raise SystemExit(f"--device-id '{device_id}' names the robot of a one-robot demo; with --robots {robots} "
                         f"the robots are robot1..robot{robots}: drop --device-id")
    return [RobotPlan(f"robot{i + 1}", f"synthetic:{seed + i}{tail}" if synthetic else source, teacher_of(seed + i),
                      f"_robot{i + 1}") for i in range(robots)]


def demo_sections(args: argparse.Namespace, weights: str, state_dir: str,
                  robots: list[RobotPlan] | None = None) -> tuple[list[dict[str, dict]], dict[str, dict]]:
    """The demo's values over config/edge.yaml (one ``{node: {name: value}}`` per robot) and
    config/server.yaml (the values every node of a process shares in ``/**``, the rest per node)."""
    robots = robots or [RobotPlan(args.device_id, args.source, args.teacher)]
    sel = parse_class_list(args.selected_classes) or [""]
    student = {"student": args.student, "student_weights": weights, "label_space": args.label_space,
               "selected_classes": sel}
    edges = [{
        "/**": {"device_id": r.device_id, **student, "device": args.device},
        "camera_sampler": {
            "source": r.source, "publish_rate": float(args.fps),
            "duration_s": float(args.duration) + 5.0 if args.duration else 0.0, "stamp_origin": "stream",
            "source_width": args.width, "source_height": args.height,
            "train_width": args.width, "train_height": args.height,
            "update_period": float(args.update_period), "bitrate_bps": int(args.bitrate),
        },
        "student_segmenter": {
            "input_width": args.width, "input_height": args.height, "torch_threads": 1,
            "inference_dtype": args.inference_dtype, "inference_backend": args.inference_backend,
            "output_qos_depth": 50,  # the observer shares the CPU with both stacks: 10 s to catch up
        },
    } for r in robots]
    own_teachers = [f"{r.device_id}={r.teacher}" for r in robots if r.teacher != robots[0].teacher]
    server = {
        "/**": {"device_ids": [r.device_id for r in robots], **student},
        "teacher_labeler": {"teacher": robots[0].teacher, "device": args.device,
                            **({"device_teachers": own_teachers} if own_teachers else {})},
        "ams_trainer": {
            "input_width": args.width, "input_height": args.height, "iterations": int(args.iterations),
            "batch_size": int(args.batch_size), "horizon_s": float(args.horizon),
            "update_period_s": float(args.update_period), "lr": float(args.lr), "gamma": float(args.gamma),
            "update_encoding": args.encoding, "torch_threads": 1, "state_dir": state_dir,
            "device": args.device, "train_precision": args.train_precision,
        },
    }
    return edges, server


def edge_and_server_params(args: argparse.Namespace, weights: str, out: Path,
                           robots: list[RobotPlan] | None = None) -> tuple[list[Path], Path]:
    """Parameter files layered over config/edge.yaml (one per robot) and config/server.yaml
    (:func:`demo_sections`), signed unless ``--unsigned``."""
    robots = robots or [RobotPlan(args.device_id, args.source, args.teacher)]
    # the robot's session survives a server restart (issue #13); cleared per run in run_demo
    edge_sections, server_sections = demo_sections(args, weights, str(out / "server_state"), robots)
    edges = [write_overrides(out / f"params_edge{r.suffix}.yaml", sections)
             for r, sections in zip(robots, edge_sections)]
    server = write_overrides(out / "params_server.yaml", server_sections)
    if not getattr(args, "unsigned", False):
        _add_demo_keys(edges, server, [r.device_id for r in robots], out / "keys")
    return edges, server


def _add_demo_keys(edges: list[Path], server: Path, devs: list[str], key_dir: Path) -> None:
    """(issue #13) Ephemeral keys for this run, wired into the parameter files: the server's and
    one per robot (``edges[i]`` is robot ``devs[i]``'s). The demo runs signed, as a deployment should."""
    import shutil

    import yaml

    shutil.rmtree(key_dir, ignore_errors=True)
    server_key_path, server_key = generate(key_dir, "server")
    public = []
    for edge, dev in zip(edges, devs):
        robot_key_path, robot_key = generate(key_dir, dev)
        public.append(f"{dev}={robot_key.public_text}")
        data = yaml.safe_load(edge.read_text())
        data["/**"]["ros__parameters"]["robot_key_file"] = str(robot_key_path)
        patcher = data.setdefault("/**/model_patcher", {"ros__parameters": {}})["ros__parameters"]
        patcher["server_public_keys"] = [server_key.public_text]
        edge.write_text(yaml.safe_dump(data))
    data = yaml.safe_load(server.read_text())
    data["/**"]["ros__parameters"]["robot_public_keys"] = public
    data["/**/ams_trainer"]["ros__parameters"]["signing_key_file"] = str(server_key_path)
    server.write_text(yaml.safe_dump(data))


def parse_param_overrides(items: list[str], flag: str) -> dict[str, dict]:
    """``["model_patcher.lost_update_grace_s=2.0", ...]`` as ``{node: {name: value}}`` (values read
    as YAML, so ``0.2`` is a float and ``[a, b]`` a list)."""
    import yaml

    sections: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot or not node or not name:
            raise SystemExit(f"{flag} {item!r}: expected NODE.NAME=VALUE, e.g. {flag} "
                             f"model_patcher.lost_update_grace_s=2.0")
        sections.setdefault(node, {})[name] = yaml.safe_load(value)
    return sections


class Disturbance:
    """What a fault benchmark (:mod:`ams_ros.demo.faults`) does to a running demo; the base class
    does nothing. ``edge_params`` are layered over every robot's parameter files; ``attach`` is
    called once with the observer (whose node may publish, as a third process would); ``tick``
    on every pass of the observer's loop, with the stream time reached and the :class:`Stage`."""

    def edge_params(self) -> dict[str, dict]:
        return {}

    def attach(self, observer) -> None:
        pass

    def tick(self, stream_t: float, stage: "Stage") -> None:
        pass


class Stage:
    """The demo's running processes, which a disturbance may kill (-9) and start again with the
    same parameter files (plus overrides): the observer checks that ``processes`` are alive, and
    the report takes their exit codes; a killed process is kept in ``killed`` instead.

    Each side starts through its launch file (``server.launch.py``, ``edge.launch.py`` with one
    ``config_file``: the package's YAML with the demo's values merged in) wherever ``ros2 launch`` is
    installed (issue #27: the main job runs the launch files every time); elsewhere it starts the
    executables with the same parameter files."""

    def __init__(self, out: Path, quiet: bool, server_files: list[Path], edge_files: list[list[Path]],
                 robots: list[RobotPlan]) -> None:
        self.out, self.quiet = out, quiet
        self.launch = launch_available()
        self._server_files, self._edge_files, self.robots = server_files, edge_files, robots
        self.server = self._start("server", server_files, None)
        self.edges: list[RosProcess] = []
        self.processes: list[RosProcess] = [self.server]
        self.killed: list[RosProcess] = []
        self._starts: dict[str, int] = {}

    def _start(self, name: str, files: list[Path], namespace: str | None) -> RosProcess:
        side = "server" if namespace is None else "edge"
        log = self.out / f"{name}.log"
        if self.launch:
            config = write_parameter_file(self.out / f"config_{name}.yaml", merge_parameter_files(files))
            return LaunchedProcess(name, f"{side}.launch.py", config, log, echo=not self.quiet)
        return RosProcess(name, f"ams_ros.nodes.{side}", files, namespace, log, echo=not self.quiet)

    def start_edges(self) -> None:
        self.edges = [self._start(f"edge{r.suffix}", files, r.device_id)
                      for r, files in zip(self.robots, self._edge_files)]
        self.processes.extend(self.edges)

    def kill(self, proc: RosProcess) -> None:
        """SIGKILL (a power cut or an OOM kill: nothing is flushed or saved)."""
        self.processes.remove(proc)
        proc.kill()
        proc.stop()
        self.killed.append(proc)

    def restart(self, proc: RosProcess, overrides: dict[str, dict] | None = None) -> RosProcess:
        """Start ``proc``'s side again (log ``<name>_restart<k>.log``) with its parameter files
        and ``overrides`` ({node: {param: value}}) over them."""
        base = proc.name.split("_restart")[0]
        k = self._starts[base] = self._starts.get(base, 0) + 1
        name = f"{base}_restart{k}"
        if base == "server":
            files, ns = list(self._server_files), None
        else:
            i = [f"edge{r.suffix}" for r in self.robots].index(base)
            files, ns = list(self._edge_files[i]), self.robots[i].device_id
        if overrides:
            files.append(write_overrides(self.out / f"params_{name}.yaml", overrides))
        new = self._start(name, files, ns)
        if base == "server":
            self.server = new
        else:
            self.edges[i] = new
        self.processes.append(new)
        return new


def run_demo(args: argparse.Namespace, disturbance: Disturbance | None = None) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    disturbance = disturbance or Disturbance()
    robots = robot_plans(getattr(args, "robots", 1), args.device_id, args.source, args.teacher)
    print(f"[demo] output: {out.resolve()}  (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, DDS on loopback)")
    dead = remove_dead_segments()  # left by a process killed in an earlier run: they can hang this one
    if dead:
        print(f"[demo] removed {len(dead)} DDS shared-memory segment(s) of killed processes from /dev/shm")
    weights = prepare_weights(args, out)
    for old in (out / "server_state").glob("*.session*"):  # each demo run starts new chains
        old.unlink()
    args.teacher = robots[0].teacher
    edge_params, server_params = edge_and_server_params(args, weights, out, robots)
    edge_files = [[CONFIG / "edge.yaml", params] for params in edge_params]
    server_files = [CONFIG / "server.yaml", server_params]
    edge_extra = parse_param_overrides(getattr(args, "edge_param", []), "--edge-param")
    for node, values in disturbance.edge_params().items():
        edge_extra.setdefault(node, {}).update(values)
    if edge_extra:
        extra = write_overrides(out / "params_edge_extra.yaml", edge_extra)
        edge_files = [[*files, extra] for files in edge_files]
    server_extra = parse_param_overrides(getattr(args, "server_param", []), "--server-param")
    if server_extra:
        server_files.append(write_overrides(out / "params_server_extra.yaml", server_extra))

    observer = Observer(args, weights, out, [(r.device_id, r.source) for r in robots])
    stage = Stage(out, args.quiet, server_files, edge_files, robots)
    # give the server a moment to come up so the robots' start-up snapshot requests are answered
    observer.wait_for_service(timeout=30.0)
    stage.start_edges()
    disturbance.attach(observer)
    print(f"[demo] server pid {stage.server.pid}, edge pid(s) {', '.join(str(e.pid) for e in stage.edges)}; "
          f"streaming {args.duration:g} s of {', '.join(repr(r.source) for r in robots)}")
    rss = None
    if getattr(args, "rss_every", 0.0):
        rss = RssLog({**{e.name: e.pid for e in stage.edges}, "server": stage.server.pid},
                     every_s=args.rss_every, fit_from_s=args.rss_fit_from)
    interrupted = False
    try:
        observer.run(until_stream_t=args.duration, processes=stage.processes, rss=rss,
                     on_tick=lambda t: disturbance.tick(t, stage))
    except KeyboardInterrupt:
        interrupted = True
        print("\n[demo] interrupted: stopping the processes and writing what was measured")
    finally:
        edge_rcs = [e.stop() for e in stage.edges]
        server_rc = stage.server.stop()
        observer.close()
    edges, server = stage.edges, stage.server
    tracebacks = [p.name for p in (*edges, server) if "Traceback" in p.output()]
    rss_summary = rss.write(out) if rss is not None else None

    exit_codes = {**{e.name: rc for e, rc in zip(edges, edge_rcs)}, "server": server_rc}
    summary = write_report(observer, out, args, extra={
        "edge_pid": edges[0].pid, "server_pid": server.pid, "edge_exit_code": edge_rcs[0], "server_exit_code": server_rc,
        **({"exit_codes": exit_codes} if len(edges) > 1 else {}),
        **({"killed_by_benchmark": [p.name for p in stage.killed]} if stage.killed else {}),
        "tracebacks_in": tracebacks, "interrupted": interrupted, "wall_seconds": time.monotonic() - t_start,
        "student_weights": weights, **({"rss": rss_summary} if rss_summary else {}),
    }, exit_codes={r.device_id: rc for r, rc in zip(robots, edge_rcs)})
    print(json.dumps(summary, indent=2))
    problems = exit_problems(exit_codes, tracebacks)
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
