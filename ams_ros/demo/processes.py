"""Start the `edge` and `server` executables as OS processes, the way the launch files do.

`ros2 launch` is not available everywhere (it cannot be installed from PyPI), so the demo and
the end-to-end tests start the same executables with the same parameter files themselves,
on loopback DDS (:mod:`ams_ros.local_dds`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import yaml

from ams_ros.dds_shm import remove_dead_segments
from ams_ros.local_dds import loopback_env
from ams_ros.paths import SOURCE_ROOT, config_dir

CONFIG = config_dir()


class _NoAliasDumper(yaml.SafeDumper):
    """rcl's YAML parser rejects anchors/aliases, which PyYAML emits for shared objects."""

    def ignore_aliases(self, data) -> bool:
        return True


def write_overrides(path: Path, sections: dict[str, dict]) -> Path:
    """Write ``{node: {param: value}}`` as a ROS 2 parameter file (``"/**"``: every node)."""
    # "/**/name" matches the node in any namespace (robots run under /<device_id>)
    data = {(node if node.startswith("/") else f"/**/{node}"): {"ros__parameters": params}
            for node, params in sections.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False))
    return path


class RosProcess:
    """One executable (``python -m ams_ros.nodes.<module>``) with its log streamed to a file."""

    def __init__(self, name: str, module: str, params_files: list[Path], namespace: str | None,
                 log_path: Path, echo: bool = False) -> None:
        cmd = [sys.executable, "-m", module, "--ros-args"]
        if namespace:
            cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
        for f in params_files:
            cmd += ["--params-file", str(f)]
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
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._pump.join(timeout=5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and wait; then remove the DDS shared-memory segments the kill left behind (they
        would hang processes started later on this machine)."""
        self.proc.kill()
        self.proc.wait()
        remove_dead_segments()

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
