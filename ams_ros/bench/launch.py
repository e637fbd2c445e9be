"""``ams-bench --only launch``: the system started, stopped and restarted by ``ros2 launch`` (issue #27).

A base station and a robot start as two ``ros2 launch`` processes (``server.launch.py`` and
``edge.launch.py source:=synthetic:0``, DDS on loopback, with the demo's parameter files by
default: ``config/demo_*.yaml``). Measured from the moment ``ros2 launch`` starts: the first label
map the robot publishes and the first model update it applies; then the time Ctrl-C (SIGINT to each
launch's process group, as a terminal sends it) takes to end each side, once while idle and once in
the middle of a training phase with both cores busy; and, in a second run, the time from a kill -9
of the robot's process (launch respawns it) to its first label map and to its model being back on
the server's chain. Repeated ``--launch-repeat`` times; the figures are medians and extremes.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ams_ros.nodes.common.processes import RosLaunch
from ams_ros.nodes.common.package_share import config_dir


class Watcher:
    """An rclpy node of this process that records when robot1's label maps and statuses arrive."""

    def __init__(self, device_id: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from ams_msgs.msg import EdgeStatus, ServerStatus
        from ams_ros.nodes.common.qos import qos  # lazy: ROS only when the launch figures run

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_bench", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.labels: list[float] = []
        self.versions: list[tuple[float, int]] = []
        self.server_versions: list[int] = []
        self.node.create_subscription(Image, f"/{device_id}/segmentation/labels",
                                      lambda m: self.labels.append(time.monotonic()), qos("reliable", 10))
        self.node.create_subscription(EdgeStatus, f"/{device_id}/ams/edge_status",
                                      lambda m: self.versions.append((time.monotonic(), int(m.model_version))), 10)
        self.node.create_subscription(ServerStatus, f"/{device_id}/ams/server_status",
                                      lambda m: self.server_versions.append(int(m.model_version)), 10)

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:g} s")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def start_system(out: Path, configs: dict[str, str]) -> tuple[RosLaunch, RosLaunch, float]:
    t0 = time.monotonic()
    server = RosLaunch("server.launch.py", {"config_file": configs["server"]}, out / "server.log")
    edge = RosLaunch("edge.launch.py", {"config_file": configs["edge"], "source": "synthetic:0"}, out / "edge.log")
    return server, edge, t0


def ctrl_c(runs: list[RosLaunch]) -> dict[str, float | None]:
    """SIGINT to each launch's process group at once; seconds until each launch process ended."""
    t0 = time.monotonic()
    for run in runs:
        run.send(signal.SIGINT, group=True)
    out = {}
    for run in runs:
        try:
            run.proc.wait(timeout=30)
            out[run.name] = round(time.monotonic() - t0, 2)
        except subprocess.TimeoutExpired:
            out[run.name] = None
        escalated = "failed to terminate" in run.output()
        codes = [code for _, code in run.exits()]
        out[f"{run.name}_exit_codes"] = codes
        out[f"{run.name}_escalated"] = escalated
    return out


def one_run(out: Path, configs: dict[str, str], busy: bool) -> dict:
    """Start both sides, time the first label map and update, then stop them (mid-phase and busy
    when ``busy``)."""
    watcher = Watcher("robot1")
    server, edge, t0 = start_system(out, configs)
    try:
        watcher.until(lambda: bool(watcher.labels), 300, "label map")
        first_label = watcher.labels[0] - t0
        watcher.until(lambda: any(v >= 1 for _, v in watcher.versions), 600, "applied update")
        first_update = next(t for t, v in watcher.versions if v >= 1) - t0
        burners = []
        if busy:  # in the middle of the next phase, with both cores busy
            phases = len(server.wait_for(r"robot1: labelled batch", 120))
            server.wait_for(r"robot1: labelled batch", 120, count=phases + 1)
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
            time.sleep(1.0)
        try:
            stop = ctrl_c([server, edge])
        finally:
            for b in burners:
                b.kill()
                b.wait()
    finally:
        for run in (edge, server):
            run.close()
        watcher.close()
    return {"first_label_map_s": round(first_label, 2), "first_update_s": round(first_update, 2), "stop": stop}


def respawn_run(out: Path, configs: dict[str, str]) -> dict:
    """kill -9 of the robot's process under launch: seconds to its first label map and to its
    model being back at the server's version."""
    watcher = Watcher("robot1")
    server, edge, _ = start_system(out, configs)
    try:
        watcher.until(lambda: any(v >= 2 for _, v in watcher.versions), 600, "second update")
        [node] = edge.node_processes()
        node.kill()
        killed = time.monotonic()
        watcher.labels.clear()
        watcher.until(lambda: any(t > killed for t in watcher.labels), 120, "label map after the kill")
        first_label = min(t for t in watcher.labels if t > killed) - killed
        watcher.until(lambda: any(t > killed + 1.0 and v >= 1 and watcher.server_versions
                                  and v >= watcher.server_versions[-1] - 1 for t, v in watcher.versions),
                      120, "resynced model")
        resynced = next(t for t, v in watcher.versions if t > killed + 1.0 and v >= 1) - killed
        stop = ctrl_c([server, edge])
    finally:
        for run in (edge, server):
            run.close()
        watcher.close()
    return {"first_label_map_after_kill_s": round(first_label, 2), "resynced_after_kill_s": round(resynced, 2),
            "stop": stop}


def summarize(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def run(args: argparse.Namespace) -> dict:
    configs = {"edge": str(config_dir() / f"{args.launch_configs}edge.yaml"),
               "server": str(config_dir() / f"{args.launch_configs}server.yaml")}
    runs, busy_runs, respawns = [], [], []
    with tempfile.TemporaryDirectory(prefix="ams_launch_bench_") as tmp:
        for i in range(args.launch_repeat):
            runs.append(one_run(Path(tmp) / f"idle{i}", configs, busy=False))
            print(f"[bench] launch run {i + 1}: {runs[-1]}", flush=True)
            busy_runs.append(one_run(Path(tmp) / f"busy{i}", configs, busy=True))
            print(f"[bench] launch run {i + 1}, stopped mid-phase with both cores busy: {busy_runs[-1]}", flush=True)
            respawns.append(respawn_run(Path(tmp) / f"respawn{i}", configs))
            print(f"[bench] respawn run {i + 1}: {respawns[-1]}", flush=True)
    every = runs + busy_runs
    stops = {f"{side} ({state})": summarize([r["stop"][side] for r in rs if r["stop"][side] is not None])
             for side in ("server", "edge") for state, rs in (("idle", runs), ("mid-phase, cores busy", busy_runs))}
    return {
        "configs": configs,
        "runs": args.launch_repeat,
        "first_label_map_s": summarize([r["first_label_map_s"] for r in every]),
        "first_update_s": summarize([r["first_update_s"] for r in every]),
        "ctrl_c_stop_s": stops,
        "escalated_to_sigterm": sum(bool(r["stop"][f"{s}_escalated"]) for r in every for s in ("server", "edge")),
        "node_exit_codes": sorted({c for r in every for s in ("server", "edge") for c in r["stop"][f"{s}_exit_codes"]}),
        "respawn_first_label_map_s": summarize([r["first_label_map_after_kill_s"] for r in respawns]),
        "respawn_resynced_s": summarize([r["resynced_after_kill_s"] for r in respawns]),
        "detail": {"runs": runs, "busy_runs": busy_runs, "respawns": respawns},
    }
