"""Start the `edge` and `server` sides as OS processes, on loopback DDS (:mod:`ams_ros.nodes.common.local_dds`).

The demo starts each side through its launch file (:class:`LaunchedProcess`: the launch file's
arguments, respawn and shutdown, issue #27) wherever ``ros2 launch`` is installed; where it is
not, and in tests that exercise one executable, :class:`RosProcess` starts the executable itself
with the same parameter files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

from ams_ros.nodes.common.dds_shm import remove_dead_segments
from ams_ros.nodes.common.local_dds import loopback_env
from ams_ros.nodes.common.parameter_files import write_parameter_file
from ams_ros.core.common.paths import SOURCE_ROOT
from ams_ros.nodes.common.package_share import config_dir

CONFIG = config_dir()


def write_overrides(path: Path, sections: dict[str, dict]) -> Path:
    """Write ``{node: {param: value}}`` as a ROS 2 parameter file (``"/**"``: every node)."""
    return write_parameter_file(path, sections)


class RosProcess:
    """One executable (``python -m ams_ros.nodes.<module>``) with its log streamed to a file."""

    def __init__(self, name: str, module: str, params_files: list[Path], namespace: str | None,
                 log_path: Path, echo: bool = False) -> None:
        cmd = [sys.executable, "-m", module, "--ros-args"]
        if namespace:
            cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
        for f in params_files:
            cmd += ["--params-file", str(f)]
        self._run(name, cmd, log_path, echo)

    def _run(self, name: str, cmd: list[str], log_path: Path, echo: bool) -> None:
        env = loopback_env()
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = f"{SOURCE_ROOT}:{env.get('PYTHONPATH', '')}"
        env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=SOURCE_ROOT, start_new_session=True)
        self._echo = echo
        self._pump = threading.Thread(target=self._copy_output, daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            if self._echo:
                sys.stdout.write(f"[{self.name}] {line}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """Ctrl-C (SIGINT) like a terminal would, then wait; kill only if it hangs."""
        if RosProcess.alive(self):  # the process itself (a subclass's alive() may mean its node)
            self._interrupt()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._pump.join(timeout=5)
        self._log.close()
        return self.proc.returncode

    def _interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL and wait; then remove the DDS shared-memory segments the kill left behind (they
        would hang processes started later on this machine)."""
        self.proc.kill()
        self.proc.wait()
        remove_dead_segments()

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def launch_available() -> bool:
    """True when ``ros2 launch`` can run here (launch, launch_ros and ros2launch importable)."""
    try:
        import launch_ros.actions  # noqa: F401
        import ros2launch.api  # noqa: F401
    except ImportError:
        return False
    return True


class LaunchedProcess(RosProcess):
    """One side started through its launch file (:mod:`ams_ros.demo.launch_side`, as ``ros2 launch
    ams_ros FILE`` would), in a process group of its own: the launch process and the node it runs.

    ``pid`` is the node's (the process that infers or trains), ``alive()`` is true while the node
    runs (a node that died and waits for its respawn is not), ``stop()`` sends SIGINT to the
    group as a terminal's Ctrl-C does and returns the node's exit code (the first non-zero one of
    its runs, negative for a signal), ``kill()`` is a power cut: SIGKILL to the whole group."""

    def __init__(self, name: str, launch_file: str, config_file: Path, log_path: Path, echo: bool = False,
                 arguments: dict[str, str] | None = None) -> None:
        self.status_path = log_path.with_name(f"{name}.status.json")
        self.status_path.unlink(missing_ok=True)
        args = {"config_file": str(config_file), **(arguments or {})}
        cmd = [sys.executable, "-m", "ams_ros.demo.launch_side", "--status", str(self.status_path), launch_file,
               *(f"{k}:={v}" for k, v in args.items())]
        self._run(name, cmd, log_path, echo)

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"pids": [], "exit_codes": []}

    @property
    def pid(self) -> int:
        """The node's pid (its latest run's), waiting up to 60 s for launch to start it."""
        deadline = time.monotonic() + 60.0
        while True:
            pids = self.status()["pids"]
            if pids:
                return int(pids[-1])
            if not super().alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: launch started no node process (see {self.log_path})")
            time.sleep(0.1)

    def alive(self) -> bool:
        s = self.status()
        return super().alive() and len(s["pids"]) > len(s["exit_codes"])

    def _interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C to the process group, as a terminal sends it

    def stop(self, timeout: float = 15.0) -> int:
        """Ctrl-C to the process group, then wait; kill only if it hangs. The node's exit code."""
        returncode = super().stop(timeout)
        codes = self.status()["exit_codes"]
        bad = [c for c in codes if c != 0]
        return bad[0] if bad else (codes[-1] if codes else returncode)

    def kill(self) -> None:
        """SIGKILL to the launch process and its node, then the DDS segments they left."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        remove_dead_segments()


def cli_environment(domain_id: int | None = None) -> dict[str, str]:
    """The environment of a ``ros2`` CLI or ``ros2 launch`` process: DDS on loopback in this
    process's domain (or ``domain_id``), the checkout first on the Python path, no colours."""
    env = loopback_env(domain_id)
    env["PYTHONPATH"] = f"{SOURCE_ROOT}:{env.get('PYTHONPATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


class RosLaunch:
    """``ros2 launch ams_ros FILE NAME:=VALUE ...`` in a process group of its own."""

    def __init__(self, launch_file: str, args: dict[str, Any], log_path: Path, domain_id: int | None = None,
                 shell_command: str | None = None, env: dict[str, str] | None = None) -> None:
        """``ros2 launch ams_ros launch_file args``, or ``shell_command`` (a ``ros2 launch`` line as
        a user types it, run by bash with its expansions; ``exec`` keeps ros2 launch the group leader)."""
        self.name = launch_file.removesuffix(".launch.py")
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        extra = [f"{k}:={v}" for k, v in args.items()]
        if shell_command is None:
            self.cmd = ["ros2", "launch", "ams_ros", launch_file, *extra]
        else:
            self.cmd = ["bash", "-c", "exec " + shell_command + "".join(f" '{a}'" for a in extra)]
        self.proc = subprocess.Popen(self.cmd, env={**cli_environment(domain_id), **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=SOURCE_ROOT, start_new_session=True)
        self.started_at = time.monotonic()

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[re.Match]:
        """The first ``count`` matches of ``pattern`` in the output; fails the test with the output's tail."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.output()))
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {count} x {pattern!r} within {timeout:g} s\n{self.output()[-5000:]}")
            time.sleep(0.1)

    def node_processes(self) -> list[psutil.Process]:
        """The node processes launch runs (its children whose command is an ams_ros executable)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for c in children:
            try:
                if any("/lib/ams_ros/" in part for part in c.cmdline()):
                    out.append(c)
            except psutil.NoSuchProcess:
                pass
        return out

    def send(self, sig: int, group: bool = True) -> None:
        """``sig`` to the whole process group (a terminal's Ctrl-C) or to ``ros2 launch`` alone."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGINT, group: bool = True, timeout: float = 30.0) -> tuple[int | None, float]:
        """Send ``sig`` and wait for launch to end: (its exit code or None if it hung, seconds taken)."""
        t0 = time.monotonic()
        self.send(sig, group)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - t0

    def close(self) -> None:
        """Whatever is left of the group is killed (also nodes that outlived a ``ros2 launch`` gone
        before them: they are no longer its children); DDS segments left by a kill are removed."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:  # nothing of the group is left
            killed = False
        self.proc.wait()
        if killed:
            remove_dead_segments()
        self._log.close()

    def exits(self) -> list[tuple[int, int]]:
        """(pid, exit code) of every node process launch saw end, from launch's own report of it."""
        out = []
        for m in re.finditer(r"process has (?:finished cleanly \[pid (\d+)\]|died \[pid (\d+), exit code (-?\d+))",
                             self.output()):
            out.append((int(m.group(1) or m.group(2)), 0 if m.group(1) else int(m.group(3))))
        return out
