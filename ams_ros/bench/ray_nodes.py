"""The session pool on two Ray nodes, and the loss of one (issue #31, item 5):
``python -m ams_ros.bench.ray_nodes`` (root; about two minutes).

A head node and a worker node, each started with ``ray start`` as on two machines, serve two
robots, one actor on each node (``pool_spread``). Each robot streams frame batches and runs a
phase every period, applying every update to its chain as a robot does. Then the worker node dies
(every process of it SIGKILLed, as when the machine loses power). What is measured: how long until
the pool restores the worker's robot on the head, how long until that robot gets its next update,
whether its chain continues unbroken and its adaptation is kept (the version and phase it resumes
at against those it had), the updates lost, what the robot on the head saw meanwhile, and where the
replacement actor comes up.

Why two network namespaces. ``ray start --address`` refuses to start a worker node while Ray's
single-machine mode keeps its addresses on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and
with it off Ray rewrites 127.0.0.1 into the machine's network address, which nothing here may use.
So the two nodes get a network of their own: two network namespaces joined by a veth pair, the head
at 10.77.0.1 and the worker at 10.77.0.2 (a /30). Neither namespace has any other interface or
route, so Ray's traffic cannot leave the pair; the DDS of the rest of the project is not involved.
Creating namespaces needs root (CAP_NET_ADMIN), as ``ip netns`` does; the command says so and
stops where it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ams_ros.core.common.paths import SOURCE_ROOT

HEAD_IP, WORKER_IP, PREFIX = "10.77.0.1", "10.77.0.2", 30
ROBOTS = ("robot1", "robot2")


# ----------------------------------------------------------------------------- the network and the nodes
def netns_problem() -> Optional[str]:
    """Why two network namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN): run it as root, e.g. with sudo"
    return None


class TwoHosts:
    """Two network namespaces joined by a veth pair: the head's and the worker's network."""

    def __init__(self, tag: str) -> None:
        self.ns = {"head": f"ams-{tag}-h", "worker": f"ams-{tag}-w"}
        self.link = {"head": f"ams{tag}h", "worker": f"ams{tag}w"}  # interface names: 15 characters at most
        self.ip = {"head": HEAD_IP, "worker": WORKER_IP}

    def __enter__(self) -> "TwoHosts":
        problem = netns_problem()
        if problem:
            raise RuntimeError(f"two Ray nodes on one machine need two network namespaces, but {problem}")
        for ns in self.ns.values():
            _ip("netns", "add", ns)
        _ip("link", "add", self.link["head"], "netns", self.ns["head"], "type", "veth", "peer", "name",
            self.link["worker"], "netns", self.ns["worker"])
        for host, ns in self.ns.items():
            _ip("-n", ns, "addr", "add", f"{self.ip[host]}/{PREFIX}", "dev", self.link[host])
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", self.link[host], "up")
        return self

    def __exit__(self, *exc: Any) -> None:
        for host in ("worker", "head"):
            self.kill(host, keep=os.getpid())
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def run(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.ns[host]]

    def pids(self, host: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True, text=True, check=False)
        return [int(p) for p in out.stdout.split()]

    def kill(self, host: str, keep: int = -1) -> int:
        """SIGKILL every process on ``host`` (but ``keep``): the machine lost power. Returns how many."""
        n = 0
        for pid in self.pids(host):
            if pid in (keep, os.getpid()):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
        return n

    def cut(self, host: str) -> None:
        """Take ``host``'s end of the link down: the node lives on, unreachable (a network partition)."""
        _ip("-n", self.ns[host], "link", "set", self.link[host], "down")

    def host_of(self, pid: int) -> str:
        """Which host a process runs on (its network namespace), "?" when neither."""
        try:
            mine = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return "?"
        for host, ns in self.ns.items():
            if os.stat(f"/run/netns/{ns}").st_ino == mine:
                return host
        return "?"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def ray_environment(token: str) -> dict[str, str]:
    """The environment of the nodes and the driver: a token of this run's own (Ray's token
    authentication), no usage statistics, this ams_ros importable by the actors."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), *paths])})
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a cluster of two nodes: Ray's default on Linux
    return env


def start_nodes(net: TwoHosts, env: dict[str, str], port: int, temp_dir: Path, head_cpus: int,
                worker_cpus: int) -> None:
    """``ray start`` the head on its host, then the worker on its own, joined to the head."""
    ray = str(Path(sys.executable).with_name("ray"))
    commands = {
        "head": [ray, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                 f"--num-cpus={head_cpus}", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={temp_dir}"],
        "worker": [ray, "start", f"--address={HEAD_IP}:{port}", f"--node-ip-address={WORKER_IP}",
                   f"--num-cpus={worker_cpus}", "--disable-usage-stats"],
    }
    for host in ("head", "worker"):
        done = subprocess.run(net.run(host) + commands[host], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start` of the {host} node failed ({done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-2000:]}")
        print(f"[ray-nodes] {host} node up at {net.ip[host]} ({len(net.pids(host))} processes)", flush=True)


# ----------------------------------------------------------------------------- the robots
@dataclass
class RobotLog:
    """What a robot saw: every update it applied (when, which), and any break in its chain."""

    dev: str
    version: int = 0
    tag: str = ""
    applied: list[tuple[float, int, int]] = field(default_factory=list)  # (time, base, new)
    breaks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def apply(self, update: Any) -> None:
        if update.base_version != self.version or (self.tag and update.chain_tag != self.tag):
            self.breaks.append(f"runs v{self.version} of {self.tag}, got v{update.base_version}->"
                               f"v{update.new_version} of {update.chain_tag}")
        self.version, self.tag = update.new_version, update.chain_tag
        self.applied.append((time.monotonic(), update.base_version, update.new_version))

    def first_update_after(self, t: float) -> Optional[float]:
        return next((at for at, _, _ in self.applied if at > t), None)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start] + [at for at, _, _ in self.applied if start < at < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


def stream(pool: Any, dev: str, world: Any, log: RobotLog, stop: threading.Event, period_s: float,
           frames: int, size: tuple[int, int]) -> None:
    """One robot: every period, a batch of ``frames`` camera frames labelled, then a phase; its
    update applied to the robot's chain. Stream time advances one period per period."""
    from ams_ros.core.wire.frame_codec import encode_frames

    t = 0.0
    while not stop.is_set():
        started = time.monotonic()
        stamps = [t + i * period_s / frames for i in range(frames)]
        enc = encode_frames([world.frame_at(s)[0] for s in stamps], stamps, codec="jpeg")
        try:
            pool.label(dev, enc.data, "jpeg", size[0], size[1], stamps)
            outcome = pool.run_phase(dev)
            if outcome is not None:
                log.apply(outcome.update)
        except Exception as exc:  # noqa: BLE001 - reported in the figures
            log.errors.append(f"{time.monotonic():.1f}: {type(exc).__name__}: {exc}")
        t += period_s
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))


FAULTS = ("power", "link")


def drive(net: TwoHosts, address: str, before_s: float, after_s: float, period_s: float, frames: int,
          size: tuple[int, int], iterations: int, fault: str = "power") -> dict[str, Any]:
    """Serve the robots on the two nodes, kill the worker node, and measure (runs on the head)."""
    from ams_ros.bench.pool import synthetic_worker_spec
    from ams_ros.core.fleet.pool import SessionPool
    from ams_ros.core.fleet.pool_config import PoolConfig
    from ams_ros.core.fleet.transports import connect_ray, disconnect_ray, ray_actor_factory
    from ams_ros.core.fleet.worker import TeacherSpec
    from ams_ros.core.sources.synthetic import SyntheticWorld

    print(f"[ray-nodes] {connect_ray(address)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ams-ray-nodes-"))
    spec = synthetic_worker_spec(tmp, size, iterations, batch_size=2, horizon_s=30.0, update_period_s=period_s)
    # overload 1.0: no load-driven moves, so the recovery is the only thing that moves a robot
    config = PoolConfig(backend="ray", actors=2, actor_cpus=1.0, overload=1.0, check_period_s=0.5, spread=True)
    pool = SessionPool(ray_actor_factory(spec, config), config,
                       log=lambda level, text: print(f"[ray-nodes] pool {level}: {text}", flush=True))
    pool.start(list(ROBOTS))
    pool.set_teachers(TeacherSpec({d: f"oracle:{i}" for i, d in enumerate(ROBOTS)}))
    hosts = {i: net.host_of(pool.actors[i].call("ping").pid) for i in range(2)}
    placed = {dev: hosts[pool.actor_of(dev)] for dev in ROBOTS}
    print(f"[ray-nodes] actors on {hosts}; robots on {placed}", flush=True)
    if sorted(hosts.values()) != ["head", "worker"]:
        raise RuntimeError(f"the two actors did not land on the two nodes ({hosts}): pool_spread failed")
    victim = next(d for d in ROBOTS if placed[d] == "worker")
    survivor = next(d for d in ROBOTS if d != victim)
    pool.start_monitor()
    logs = {d: RobotLog(d) for d in ROBOTS}
    stop = threading.Event()
    threads = [threading.Thread(target=stream, args=(pool, d, SyntheticWorld(i, *size), logs[d], stop, period_s,
                                                     frames, size), daemon=True) for i, d in enumerate(ROBOTS)]
    t_start = time.monotonic()
    for th in threads:
        th.start()
    time.sleep(before_s)
    before = pool.info[victim]
    had = {"version": logs[victim].version, "server_version": int(before.version), "phase": int(before.phase)}
    killed_at = time.monotonic()
    if fault == "power":
        n_killed = net.kill("worker")
        print(f"[ray-nodes] worker node killed ({n_killed} processes) with {victim} at v{had['version']}", flush=True)
    else:
        net.cut("worker")
        print(f"[ray-nodes] worker node cut off (its link down) with {victim} at v{had['version']}", flush=True)
    deadline = killed_at + 180.0
    while logs[victim].first_update_after(killed_at) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    pool.wait_all_up(max(1.0, deadline - time.monotonic()))  # and the replacement actor is up
    time.sleep(after_s)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    ended = time.monotonic()
    recover = [e for e in pool.events if e.kind == "recover" and e.device_id == victim]
    replace = [e for e in pool.events if e.kind == "replace"]
    after = pool.call(victim, "info")
    first = logs[victim].first_update_after(killed_at)
    replacement_host = net.host_of(pool.actors[replace[0].target].call("ping").pid) if replace else None
    result = {
        "setup": {"nodes": {"head": f"{HEAD_IP} (ray start --head)", "worker": f"{WORKER_IP} (ray start --address)"},
                  "student": f"deeplabv3_mobilenet_v2 {size[0]}x{size[1]}", "iterations": iterations,
                  "frames_per_period": frames, "period_s": period_s, "ray": _ray_version()},
        "fault": fault, "actors": {str(i): h for i, h in hosts.items()}, "victim": victim, "survivor": survivor,
        "streamed_before_kill_s": round(killed_at - t_start, 1),
        "victim_at_kill": had,
        "restored": [{"message": e.message, "after_kill_s": round(e.at - killed_at, 2), "version": e.version,
                      "target_host": hosts.get(e.target, "?")} for e in recover],
        "first_update_after_kill_s": None if first is None else round(first - killed_at, 2),
        "victim_after": {"version": logs[victim].version, "server_version": int(after.version),
                         "phase": int(after.phase), "chain_tag": after.chain_tag,
                         "updates_after_kill": sum(1 for at, _, _ in logs[victim].applied if at > killed_at)},
        "chain_breaks": {d: logs[d].breaks for d in ROBOTS},
        "errors": {d: logs[d].errors for d in ROBOTS},
        "survivor_longest_gap_s": round(logs[survivor].longest_gap(killed_at, ended), 2),
        "survivor_updates_after_kill": sum(1 for at, _, _ in logs[survivor].applied if at > killed_at),
        "replacement": None if not replace else {"after_kill_s": round(replace[0].at - killed_at, 2),
                                                 "host": replacement_host, "message": replace[0].message},
    }
    restored_version = recover[0].version if recover else None
    result["updates_lost"] = None if restored_version is None else max(0, had["server_version"] - restored_version)
    pool.shutdown(save=False)
    disconnect_ray()
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _ray_version() -> str:
    import ray

    return ray.__version__


def summary_lines(r: dict[str, Any]) -> list[str]:
    rest = r["restored"][0] if r["restored"] else None
    lines = [f"actors: {r['actors']}; {r['victim']} on the worker node, {r['survivor']} on the head",
             f"worker node {'killed' if r['fault'] == 'power' else 'cut off'} after {r['streamed_before_kill_s']} s with {r['victim']} at "
             f"v{r['victim_at_kill']['version']} (phase {r['victim_at_kill']['phase']})"]
    if rest:
        lines.append(f"restored on the {rest['target_host']} {rest['after_kill_s']} s after the kill: {rest['message']}")
    else:
        lines.append("NOT restored")
    lines.append(f"first update after the kill: {r['first_update_after_kill_s']} s; updates lost: {r['updates_lost']}; "
                 f"then v{r['victim_after']['version']} (phase {r['victim_after']['phase']}), "
                 f"{r['victim_after']['updates_after_kill']} updates since the kill")
    lines.append(f"chain breaks: {sum(len(v) for v in r['chain_breaks'].values())}; "
                 f"{r['survivor']}'s longest wait for an update meanwhile {r['survivor_longest_gap_s']} s "
                 f"({r['survivor_updates_after_kill']} updates)")
    if r["replacement"]:
        lines.append(f"replacement actor on the {r['replacement']['host']} {r['replacement']['after_kill_s']} s "
                     f"after the kill")
    return lines


# ----------------------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ams_ros.bench.ray_nodes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=float, default=20.0, help="seconds the robots stream before the worker dies")
    ap.add_argument("--after", type=float, default=20.0,
                    help="seconds they stream once the robot has its first update and the replacement actor is up")
    ap.add_argument("--period", type=float, default=1.0, help="each robot's update period (s of wall time)")
    ap.add_argument("--frames", type=int, default=2, help="frames labelled per robot per period")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=2, help="K per phase")
    ap.add_argument("--fault", choices=FAULTS, default="power",
                    help="how the worker node is lost: power (every process of it SIGKILLed) | link (its network "
                         "link taken down: alive but unreachable)")
    ap.add_argument("--port", type=int, default=0, help="the head's GCS port (0: a free one)")
    ap.add_argument("--out", default="out/bench/ray_nodes", help="folder for ray_nodes.json")
    ap.add_argument("--drive", default="", help=argparse.SUPPRESS)  # internal: run the driver on the head
    args = ap.parse_args(argv)
    if args.drive:
        return _driver(args)
    problem = netns_problem()
    if problem:
        print(f"ray_nodes: cannot run: {problem}", file=sys.stderr)
        return 2
    tag = f"{os.getpid() % 100000}"
    port = args.port or 36000 + os.getpid() % 2000
    token = secrets.token_hex(32)
    env = ray_environment(token)
    temp_dir = Path(tempfile.mkdtemp(prefix="ams-ray-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with TwoHosts(tag) as net:
        start_nodes(net, env, port, temp_dir, head_cpus=2, worker_cpus=1)
        cmd = net.run("head") + [sys.executable, "-m", "ams_ros.bench.ray_nodes", "--drive",
                                 f"{HEAD_IP}:{port}|{net.ns['head']}|{net.ns['worker']}|{out / 'ray_nodes.json'}",
                                 *[a for a in (argv if argv is not None else sys.argv[1:]) if a != "--drive"]]
        rc = subprocess.run(cmd, env=env, check=False).returncode
    shutil.rmtree(temp_dir, ignore_errors=True)
    if rc == 0:
        print(f"[ray-nodes] figures in {out / 'ray_nodes.json'}", flush=True)
    return rc


def _driver(args: argparse.Namespace) -> int:
    address, head_ns, worker_ns, path = args.drive.split("|")
    net = TwoHosts(head_ns.split("-")[1])
    assert net.ns == {"head": head_ns, "worker": worker_ns}, (net.ns, head_ns, worker_ns)
    result = drive(net, address, args.before, args.after, args.period, args.frames, (args.width, args.height),
                   args.iterations, args.fault)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    for line in summary_lines(result):
        print(f"[ray-nodes] {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
