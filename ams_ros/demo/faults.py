"""`make faults`: the fault benchmarks of issue #13, run in the demo's own processes.

Each scenario is one ``make demo`` run (same seed, world, student and length) with one thing
going wrong, made by the processes themselves rather than by a hand-made relay:

- ``undisturbed``: nothing (the reference for the others);
- ``drop_updates``: the robot's model patcher loses 20 % of the updates it receives
  (its test-only ``fault_drop_updates``);
- ``drop_batches``: the robot's camera sampler loses 20 % of the frame batches it sends
  (``fault_drop_batches``);
- ``dup_reorder_updates``: 15 % of the updates arrive twice and 15 % after the next one;
- ``forged``: a third process (the observer's) publishes, every few seconds, an update signed by
  a key the robot does not trust, an unsigned zero snapshot, a replay of a genuine update, a frame
  batch signed by the wrong key, a replay of a genuine batch and a malformed image;
- ``server_kill``: the server is killed (-9) mid-stream and started again 20 s later (its
  sessions are in ``state_dir``);
- ``robot_restart``: the robot is killed (-9) and started again 5 s later, resuming the stream;
- ``poisoned_phase`` (issue #29, a fault of the learning itself): for 30 s of stream time the
  base station trains with a learning rate of 1.0 (set and reset as `ros2 param set` does), which
  keeps the weights finite but makes them useless. With the phase gate on (``--demo-arg
  =--server-param=ams_trainer.gate_frames=4``) those phases are discarded; without it they reach the
  robot. Its row adds the robot's mIoU before, during and after the window and the phases the gate
  discarded;
- ``one_class_teacher``, ``covered_lens``, ``foreign_scene`` (issue #29): the teacher labels every
  pixel one class for 60 s (the labeler's test-only ``fault_teacher_one_class``), the robot's camera
  gives black frames for 60 s (``fault_black_frames``), or another synthetic world's frames for
  ``--foreign-s`` (one period; ``fault_foreign_source``). Their rows add, per update period, the
  robot's and the frozen student's mIoU, and the batches the label checks refused.

Each reports the longest inference gap, updates applied and rejected, the final version, every
resync (from the fault to the model being back on the server's chain: its time and the bytes the
catch-up or snapshot cost on the downlink) and the mIoU against the undisturbed run. The resync
events are read from the robot's own log lines (``applied catch-up v3->v5 ... N bytes``), whose
timestamps are the wall clock, as are the fault events here.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ams_ros.demo.runner import Disturbance, Stage, run_demo
from ams_ros.core.security.signing import SigningKey, sign_update
from ams_ros.core.wire.encodings import encode_snapshot
from ams_ros.demo.cli import parse_args as demo_args
from ams_ros.nodes.common import topics as T
from ams_ros.nodes.common.conversions import msg_to_update, update_to_msg, frame_batch_signing_input
from ams_ros.nodes.common.local_dds import private_domain_id, use_loopback
from ams_ros.nodes.common.qos import qos

SCENARIOS = ("undisturbed", "drop_updates", "drop_batches", "dup_reorder_updates", "forged", "server_kill",
             "robot_restart", "poisoned_phase", "one_class_teacher", "covered_lens", "foreign_scene")

_APPLIED = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*model_patcher\]: applied (update|catch-up|snapshot|resync) "
                      r"v(\d+)->v(\d+) .*?, (\d+) bytes,")
_FAULT = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*model_patcher\]: fault injection: (drop|duplicate|reorder) update "
                    r"v(\d+)->v(\d+)")


# ----------------------------------------------------------------------------- disturbances
class EdgeFaults(Disturbance):
    """The robot's own test-only ``fault_*`` parameters (:mod:`ams_ros.core.sources.fault_injection`)."""

    def __init__(self, params: dict[str, dict]) -> None:
        self.params = params

    def edge_params(self) -> dict[str, dict]:
        return self.params


@dataclass
class KillRestart(Disturbance):
    """Kill (-9) the server or the robot at ``at_s`` of stream time; start it again ``down_s``
    (wall) seconds later. A robot resumes its stream where the wall clock says it would be."""

    which: str                 # "server" | "edge"
    at_s: float
    down_s: float
    killed_at: float | None = None          # wall (time.time()) of the kill
    restarted_at: float | None = None       # wall of the restart
    killed_stream_t: float | None = None
    _mono_kill: float = 0.0

    def tick(self, stream_t: float, stage: Stage) -> None:
        if self.killed_at is None and stream_t >= self.at_s:
            proc = stage.server if self.which == "server" else stage.edges[0]
            self.killed_at, self.killed_stream_t, self._mono_kill = time.time(), stream_t, time.monotonic()
            print(f"[faults] kill -9 {proc.name} (pid {proc.pid}) at stream t={stream_t:.1f} s", flush=True)
            stage.kill(proc)
        elif self.killed_at is not None and self.restarted_at is None \
                and time.monotonic() - self._mono_kill >= self.down_s:
            if self.which == "server":
                new = stage.restart(stage.killed[-1])
            else:
                resume = round(self.killed_stream_t + (time.monotonic() - self._mono_kill), 2)
                new = stage.restart(stage.killed[-1], {"camera_sampler": {"start_s": resume}})
            self.restarted_at = time.time()
            print(f"[faults] started {new.name} again (pid {new.pid}) after {self.down_s:g} s", flush=True)


@dataclass
class ParamWindow(Disturbance):
    """Set parameters of one node, as `ros2 param set` does, at ``at_s`` of stream time and set them
    back to what they were ``for_s`` later (issue #29: the faults of the learning itself). ``node``
    is the base station's (``ams_trainer``, ``teacher_labeler``) or, with ``robot``, one of the
    first robot's (``camera_sampler``)."""

    changes: dict[str, object]
    at_s: float
    for_s: float
    node: str = "ams_trainer"
    robot: bool = False
    started_t: float | None = None      # stream times the window really began and ended
    ended_t: float | None = None
    original: dict[str, object] = field(default_factory=dict)
    _asked_at: float | None = None      # (monotonic) when the node was last asked for its values

    def attach(self, observer) -> None:
        from rclpy.parameter_client import AsyncParameterClient

        name = f"/{next(iter(observer.robots))}/{self.node}" if self.robot else self.node
        self.client = AsyncParameterClient(observer.node, name)

    def _ask_original(self) -> None:
        """Ask the node what it runs with, once its parameter services are there (a request sent
        before the node's services are discovered is never answered: ask again every 5 s)."""
        from rclpy.parameter import parameter_value_to_python

        now = time.monotonic()
        if self._asked_at is not None and now - self._asked_at < 5.0 or not self.client.services_are_ready():
            return
        self._asked_at = now

        def keep(future) -> None:
            for name, value in zip(self.changes, future.result().values):
                self.original[name] = parameter_value_to_python(value)
        self.client.get_parameters(list(self.changes), callback=keep)

    def _set(self, values: dict) -> None:
        from rclpy.parameter import Parameter

        self.client.set_parameters([Parameter(k, value=v) for k, v in values.items()])

    def tick(self, stream_t: float, stage: Stage) -> None:
        if self.started_t is None and len(self.original) < len(self.changes):
            self._ask_original()  # from the start: the answer must be there at at_s
        if self.started_t is None and stream_t >= self.at_s:
            if len(self.original) < len(self.changes):
                return  # the node has not answered what it runs with yet
            self._set(self.changes)
            self.started_t = stream_t
            print(f"[faults] {self.node} {self.changes} at stream t={stream_t:.1f} s (was {self.original})", flush=True)
        elif self.started_t is not None and self.ended_t is None and stream_t >= self.started_t + self.for_s:
            self._set(self.original)
            self.ended_t = stream_t
            print(f"[faults] {self.node} back to {self.original} at stream t={stream_t:.1f} s", flush=True)


def window_miou(scores: list[dict], start: float, end: float, which: str = "streamed") -> float | None:
    """The robot's (``streamed``) or the frozen student's mean per-frame mIoU over the frames scored
    in [start, end) of stream time."""
    vals = [s[which] for s in scores if start <= s["t"] < end and s.get(which) is not None]
    return round(float(sum(vals) / len(vals)), 4) if vals else None


def period_mious(scores: list[dict], period_s: float) -> list[dict]:
    """Per update period: [start, end) of stream time, the robot's and the frozen student's mean mIoU."""
    if not scores:
        return []
    end = max(s["t"] for s in scores)
    out = []
    k = 0
    while k * period_s <= end:
        a, b = k * period_s, (k + 1) * period_s
        out.append({"t": [round(a, 1), round(b, 1)], "streamed": window_miou(scores, a, b),
                    "frozen": window_miou(scores, a, b, "frozen")})
        k += 1
    return out


@dataclass
class Forger(Disturbance):
    """A third process's forgeries, one kind in turn every ``every_s`` of stream time from
    ``from_s``: what a robot or the base station must reject without changing anything."""

    from_s: float = 15.0
    every_s: float = 2.0
    sent: dict[str, int] = field(default_factory=dict)
    _next_t: float = 0.0
    _turn: int = 0

    KINDS = ("update_wrong_key", "unsigned_zero_snapshot", "replayed_update", "batch_wrong_key",
             "replayed_batch", "malformed_image")

    def attach(self, observer) -> None:
        from sensor_msgs.msg import Image

        from ams_msgs.msg import FrameBatch, ModelUpdate

        self.observer = observer
        self.dev, self.watch = next(iter(observer.robots.items()))
        node, ns = observer.node, f"/{self.dev}"
        self.key = SigningKey.generate()  # the attacker's: no robot or server trusts it
        self.updates: list = []
        self.batches: list = []
        node.create_subscription(ModelUpdate, f"{ns}/{T.MODEL_UPDATE}", self.updates.append, qos("reliable", 10))
        node.create_subscription(FrameBatch, f"{ns}/{T.FRAME_BATCH}", self.batches.append, qos("reliable", 10))
        self.update_pub = node.create_publisher(ModelUpdate, f"{ns}/{T.MODEL_UPDATE}", qos("reliable", 10))
        self.batch_pub = node.create_publisher(FrameBatch, f"{ns}/{T.FRAME_BATCH}", qos("reliable", 10))
        self.image_pub = node.create_publisher(Image, f"{ns}/{T.IMAGE}", qos("best_effort", 5))
        self._Image = Image
        self._next_t = self.from_s

    def tick(self, stream_t: float, stage: Stage) -> None:
        if stream_t < self._next_t:
            return
        self._next_t = stream_t + self.every_s
        kind = self.KINDS[self._turn % len(self.KINDS)]
        self._turn += 1
        if getattr(self, f"_{kind}")():
            self.sent[kind] = self.sent.get(kind, 0) + 1

    def _version(self) -> int:
        st = self.watch.edge_status
        return int(st.model_version) if st is not None else 0

    def _update_wrong_key(self) -> bool:
        genuine = [u for u in self.updates if not u.full_snapshot]
        if not genuine:
            return False
        update = msg_to_update(copy.deepcopy(genuine[-1]))
        update.base_version, update.new_version = self._version(), self._version() + 1
        update.checksum = update.compute_checksum()
        sign_update(update, self.dev, self.key)
        self.update_pub.publish(update_to_msg(update, self.dev))
        return True

    def _unsigned_zero_snapshot(self) -> bool:
        import torch

        zero = copy.deepcopy(self.observer.frozen)
        with torch.no_grad():
            for p in zero.parameters():
                p.zero_()
        snap = encode_snapshot(zero, version=self._version() + 100)
        self.update_pub.publish(update_to_msg(snap, self.dev))
        return True

    def _replayed_update(self) -> bool:
        if len(self.updates) < 2:
            return False
        self.update_pub.publish(self.updates[-2])  # genuine, signed, and old
        return True

    def _batch_wrong_key(self) -> bool:
        if not self.batches:
            return False
        msg = copy.deepcopy(self.batches[-1])
        msg.batch_seq += 1000

        msg.signature = self.key.sign(frame_batch_signing_input(msg, self.dev))  # a well-formed signature, wrong key
        msg.signer_key_id = self.key.key_id
        self.batch_pub.publish(msg)
        return True

    def _replayed_batch(self) -> bool:
        if not self.batches:
            return False
        self.batch_pub.publish(self.batches[-1])  # genuine and signed: a recording played again
        return True

    def _malformed_image(self) -> bool:
        self.image_pub.publish(self._Image(height=32, width=63, encoding="yuyv", step=63 * 2, data=bytes(32 * 63 * 2)))
        return True


def disturbance_for(name: str, args: argparse.Namespace) -> Disturbance:
    kill_at = round(0.3 * args.duration, 1)
    if name == "undisturbed":
        return Disturbance()
    if name == "drop_updates":
        return EdgeFaults({"model_patcher": {"fault_drop_updates": 0.2, "fault_seed": args.seed}})
    if name == "drop_batches":
        return EdgeFaults({"camera_sampler": {"fault_drop_batches": 0.2, "fault_seed": args.seed}})
    if name == "dup_reorder_updates":
        return EdgeFaults({"model_patcher": {"fault_duplicate_updates": 0.15, "fault_reorder_updates": 0.15,
                                             "fault_seed": args.seed}})
    if name == "forged":
        return Forger()
    if name == "server_kill":
        return KillRestart("server", at_s=kill_at, down_s=20.0)
    if name == "robot_restart":
        return KillRestart("edge", at_s=kill_at, down_s=5.0)
    if name == "poisoned_phase":
        return ParamWindow({"lr": 1.0}, at_s=kill_at, for_s=30.0)
    if name == "one_class_teacher":
        return ParamWindow({"fault_teacher_one_class": 0}, at_s=kill_at, for_s=60.0, node="teacher_labeler")
    if name == "covered_lens":
        return ParamWindow({"fault_black_frames": True}, at_s=kill_at, for_s=60.0, node="camera_sampler", robot=True)
    if name == "foreign_scene":  # one update period of another robot's scene (the synthetic world of seed 7)
        return ParamWindow({"fault_foreign_source": "synthetic:7"}, at_s=kill_at, for_s=args.foreign_s,
                           node="camera_sampler", robot=True)
    raise SystemExit(f"unknown fault scenario '{name}'; choose from {', '.join(SCENARIOS)} or all")


# ----------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Applied:
    wall: float
    kind: str          # update | catch-up | snapshot | resync
    base: int
    new: int
    nbytes: int


def parse_applied(log_text: str) -> list[Applied]:
    return [Applied(float(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])) for m in _APPLIED.finditer(log_text)]


def parse_update_faults(log_text: str) -> list[tuple[float, str, int, int]]:
    """(wall, drop | duplicate | reorder, base, new) of each update the fault link disturbed."""
    return [(float(m[1]), m[2], int(m[3]), int(m[4])) for m in _FAULT.finditer(log_text)]


def resync_after(t: float, applied: list[Applied], need_version: int | None) -> dict:
    """From a fault at wall ``t``: when the robot next held version ``need_version`` or later
    (any newly applied version when None), and the catch-up / snapshot bytes spent on the way."""
    resync_bytes = 0
    for a in applied:
        if a.wall < t:
            continue
        if a.kind != "update":
            resync_bytes += a.nbytes
        if need_version is None or a.new >= need_version:
            return {"seconds": round(a.wall - t, 2), "by": a.kind, "resync_bytes": resync_bytes,
                    "version": a.new}
    return {"seconds": None, "by": None, "resync_bytes": resync_bytes, "version": None}


def measure(name: str, out: Path, disturbance: Disturbance, summary: dict) -> dict:
    """The scenario's row: from its summary.json, the robot's log(s) and what the disturbance did."""
    texts = [p.read_text() for p in sorted(out.glob("edge*.log"))]  # edge.log, then edge_restart1.log
    text = "\n".join(texts)
    applied = sorted(parse_applied(text), key=lambda a: a.wall)
    # the robot's start-up snapshot (every run has one) is not a resync a fault caused
    first = parse_applied(texts[0]) if texts else []
    startup = first[0] if first and first[0].kind == "snapshot" else None
    later = [a for a in applied if a != startup]
    row = {
        "scenario": name,
        "miou_streamed": summary.get("miou_streamed"),
        "miou_frozen": summary.get("miou_frozen"),
        "max_inference_gap_ms": summary.get("max_inference_gap_ms"),
        "max_inference_gap_over_source_ms": summary.get("max_inference_gap_over_source_ms"),
        # as the observer saw the label maps arrive: includes a robot's own outage (restart)
        "max_label_arrival_gap_ms": summary.get("max_label_arrival_gap_ms"),
        "updates_applied": len(later),  # after the start-up snapshot
        "applied_by_kind": {k: sum(1 for a in later if a.kind == k) for k in ("update", "catch-up", "snapshot")},
        "updates_rejected": summary.get("updates_rejected"),
        "final_version": max((a.new for a in applied), default=0),
        "downlink_bytes_startup": startup.nbytes if startup else 0,
        "downlink_bytes_resync": sum(a.nbytes for a in later if a.kind != "update"),
        "downlink_bytes_updates": sum(a.nbytes for a in later if a.kind == "update"),
        "exit_codes_at_stop": {"edge": summary.get("edge_exit_code"), "server": summary.get("server_exit_code")},
        "killed_by_benchmark": summary.get("killed_by_benchmark", []),
        "inputs_rejected_edge": summary.get("inputs_rejected"),
    }
    resyncs = []
    faults = parse_update_faults(text)
    if faults:
        row["update_faults"] = {k: sum(1 for f in faults if f[1] == k) for k in ("drop", "duplicate", "reorder")}
        for wall, kind, base, new in faults:
            if kind in ("drop", "reorder"):
                resyncs.append({"fault": f"{kind} v{base}->v{new}", **resync_after(wall, later, new)})
    if isinstance(disturbance, KillRestart) and disturbance.restarted_at is not None:
        # the server: back when the robot applies the next version; the robot: when it holds a
        # version of the chain again (its restart loaded the initial weights, v0)
        resyncs.append({"fault": f"{disturbance.which} killed at t={disturbance.killed_stream_t:.1f} s, restarted "
                                 f"{disturbance.down_s:g} s later",
                        "seconds_down": round(disturbance.restarted_at - disturbance.killed_at, 2),
                        **resync_after(disturbance.restarted_at, later, None)})
    if isinstance(disturbance, Forger):
        row["forged_sent"] = dict(disturbance.sent)
        row["server_inputs_rejected"] = summary.get("server_inputs_rejected")
        row["server_batches_dropped"] = summary.get("server_batches_dropped")
    if isinstance(disturbance, ParamWindow) and disturbance.started_t is not None:
        a = disturbance.started_t
        b = disturbance.ended_t if disturbance.ended_t is not None else float("inf")
        scores = json.loads((out / "scores.json").read_text()) if (out / "scores.json").exists() else []
        row["poison_window_s"] = [round(a, 1), None if b == float("inf") else round(b, 1)]
        row["miou_before_window"] = window_miou(scores, a - 30.0, a)
        row["miou_in_window"] = window_miou(scores, a, b)
        row["miou_30s_after_window"] = window_miou(scores, b, b + 30.0)
        row["miou_frozen_in_window"] = window_miou(scores, a, b, "frozen")
        row["miou_frozen_30s_after_window"] = window_miou(scores, b, b + 30.0, "frozen")
        period = summary.get("update_period_s")
        row["periods"] = period_mious(scores, float(period)) if period else []
        row["phases_discarded"] = summary.get("server_phases_discarded")
        row["batches_refused"] = summary.get("server_batches_refused")
        row["frames_refused"] = summary.get("server_frames_refused")
        row["rollbacks"] = summary.get("server_rollbacks")
    row["resyncs"] = resyncs
    done = [r["seconds"] for r in resyncs if r["seconds"] is not None]
    row["resync_seconds_max"] = max(done) if done else None
    row["resyncs_unfinished"] = sum(1 for r in resyncs if r["seconds"] is None)
    return row


# ----------------------------------------------------------------------------- running
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ams_faults", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default="all", help=f"comma-separated, from {', '.join(SCENARIOS)}, or all")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of stream time per scenario")
    p.add_argument("--out", default="out/faults", help="output folder (one sub-folder per scenario)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault links' draws")
    p.add_argument("--foreign-s", type=float, default=10.0,
                   help="foreign_scene: seconds of stream time the robot sees another robot's scene (one period)")
    p.add_argument("--demo-arg", action="append", default=[], metavar="ARG",
                   help="passed on to every scenario's demo, e.g. --demo-arg=--width=128")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    names = list(SCENARIOS) if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in names:
        disturbance_for(name, args)  # unknown names fail before the first run
    out = Path(args.out)
    rows, rcs = [], {}
    for i, name in enumerate(names):
        print(f"[faults] scenario {i + 1}/{len(names)}: {name} ({args.duration:g} s of stream)", flush=True)
        d_args = demo_args(["--out", str(out / name), "--duration", str(args.duration), "--no-video", "--quiet",
                            *args.demo_arg])
        disturbance = disturbance_for(name, args)
        rcs[name] = run_demo(d_args, disturbance)
        summary = json.loads((out / name / "summary.json").read_text())
        rows.append(measure(name, out / name, disturbance, summary))
    base = next((r for r in rows if r["scenario"] == "undisturbed"), None)
    for r in rows:
        if base is not None and r["miou_streamed"] is not None and base["miou_streamed"] is not None:
            r["miou_vs_undisturbed"] = round(r["miou_streamed"] - base["miou_streamed"], 4)
        r["demo_exit_code"] = rcs[r["scenario"]]
    (out / "faults.json").write_text(json.dumps({"duration_s": args.duration, "seed": args.seed, "rows": rows},
                                                indent=2))
    table = markdown_table(rows)
    (out / "faults.md").write_text(table)
    print(table)
    return 1 if any(rcs.values()) else 0


def markdown_table(rows: list[dict]) -> str:
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["| scenario | mIoU streamed (frozen) | vs undisturbed | longest inference gap (ms) | updates applied "
             "(update/catch-up/snapshot) | rejected | final version | resyncs, longest (s) | resync downlink (KB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["applied_by_kind"]
        n = len(r["resyncs"])
        unfinished = f", {r['resyncs_unfinished']} unfinished" if r["resyncs_unfinished"] else ""
        lines.append(
            f"| {r['scenario']} | {f(r['miou_streamed'])} ({f(r['miou_frozen'])}) | "
            f"{f(r.get('miou_vs_undisturbed'), '{:+.3f}')} | {f(r['max_inference_gap_ms'], '{:.0f}')} | "
            f"{r['updates_applied']} ({k['update']}/{k['catch-up']}/{k['snapshot']}) | {r['updates_rejected']} | "
            f"v{r['final_version']} | {n}{unfinished}, {f(r['resync_seconds_max'], '{:.1f}')} | "
            f"{r['downlink_bytes_resync'] / 1000:.1f} |")
    poisoned = [r for r in rows if "poison_window_s" in r]
    if poisoned:  # (issue #29) the faults of the learning itself
        lines += ["", "| scenario | window (stream s) | robot mIoU 30 s before | in the window (frozen) | 30 s after "
                      "(frozen) | phases discarded by the gate | batches refused (frames) | rollbacks |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in poisoned:
            a, b = r["poison_window_s"]
            lines.append(f"| {r['scenario']} | {a:g}-{f(b, '{:g}')} | {f(r['miou_before_window'])} | "
                         f"{f(r['miou_in_window'])} ({f(r.get('miou_frozen_in_window'))}) | "
                         f"{f(r['miou_30s_after_window'])} ({f(r.get('miou_frozen_30s_after_window'))}) | "
                         f"{f(r['phases_discarded'], '{:d}')} | {f(r.get('batches_refused'), '{:d}')} "
                         f"({f(r.get('frames_refused'), '{:d}')}) | {f(r.get('rollbacks'), '{:d}')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    use_loopback(private_domain_id(60, 40))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
