"""Fast DDS shared-memory segments left behind by a killed process, found and removed.

Fast DDS (the ROS 2 middleware of these wheels) exchanges data between processes on one machine
through segments in /dev/shm. Each segment ``<name>`` has a lock file ``<name>_el`` that its
owners hold with flock(2) while they live, and a process that exits normally removes what it
owns. A process killed with SIGKILL (a fault benchmark's kill -9, a hung process killed by the
demo or a test, the OOM killer) removes nothing, and later processes of the same domain can block
on its dead segments: a later run then hangs. A segment whose lock file no process holds is dead;
this is the check Fast DDS's own `fastdds shm clean` makes, done here because that tool is not in
the wheels. Segments of live processes, on any domain, are left alone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIXES = ("fastrtps_", "fastdds_")  # Fast DDS 2.x (Jazzy) and 3.x (Kilted)
LOCK_SUFFIX = "_el"


def _unheld(lock_file: Path) -> bool:
    """True when no process holds ``lock_file``'s flock (its owners are gone)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def remove_dead_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove every Fast DDS segment in ``shm_dir`` whose lock file no live process holds, with
    its lock file and its named semaphore; return the segment names removed."""
    removed = []
    try:
        locks = sorted(p for p in shm_dir.iterdir() if p.name.startswith(PREFIXES) and p.name.endswith(LOCK_SUFFIX))
    except OSError:  # no such folder (not Linux), or not readable: nothing to clean
        return removed
    for lock in locks:
        name = lock.name[: -len(LOCK_SUFFIX)]
        if not _unheld(lock):
            continue
        for path in (shm_dir / name, shm_dir / f"sem.{name}_mutex", lock):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # another user's segment: theirs to clean
                break
        removed.append(name)
    return removed
