"""Dead Fast DDS shared-memory segments (a process killed with SIGKILL leaves them, and they can
hang later processes of its domain) are removed; a live process's segments are left alone.
Checked on stand-in segments in a temporary folder, held by real processes, without DDS."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from ams_ros.nodes.common.dds_shm import remove_dead_segments

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)  # as Fast DDS holds a segment's lock file while it lives
print("held", flush=True)
time.sleep(600)
"""


def _segment(shm: Path, name: str, mutex: bool = False) -> Path:
    (shm / name).write_bytes(b"\0" * 64)
    (shm / f"{name}_el").write_bytes(b"")
    if mutex:
        (shm / f"sem.{name}_mutex").write_bytes(b"\0" * 32)
    return shm / f"{name}_el"


def _hold(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_processs_segments_go_and_a_live_ones_stay(tmp_path):
    killed_lock = _segment(tmp_path, "fastrtps_port7000", mutex=True)
    live_lock = _segment(tmp_path, "fastdds_0123456789abcdef")
    (tmp_path / "lttng-ust-wait-6").write_bytes(b"x")  # not Fast DDS: never touched
    killed, live = _hold(killed_lock), _hold(live_lock)
    try:
        assert remove_dead_segments(tmp_path) == []  # both held: nothing is dead yet
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        assert remove_dead_segments(tmp_path) == ["fastrtps_port7000"]
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["fastdds_0123456789abcdef", "fastdds_0123456789abcdef_el", "lttng-ust-wait-6"]
    finally:
        for p in (killed, live):
            p.kill()
            p.wait()


def test_segments_nobody_holds_are_removed_and_a_missing_folder_is_nothing_to_do(tmp_path):
    _segment(tmp_path, "fastrtps_bc7158e2e0f64b9d")
    (tmp_path / "fastrtps_orphan_el").write_bytes(b"")  # a lock file whose segment is already gone
    assert remove_dead_segments(tmp_path) == ["fastrtps_bc7158e2e0f64b9d", "fastrtps_orphan"]
    assert list(tmp_path.iterdir()) == []
    assert remove_dead_segments(tmp_path / "absent") == []
