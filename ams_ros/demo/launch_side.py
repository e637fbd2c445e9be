"""One side of the demo started through its launch file, as ``ros2 launch ams_ros FILE ARGS`` does.

    python -m ams_ros.demo.launch_side edge.launch.py --status out/edge.status.json config_file:=... namespace:=robot1

``ros2 launch`` includes the file in a ``LaunchService`` and runs it; this does the same (the same
launch file, arguments, ``respawn`` and shutdown on SIGINT/SIGTERM) and adds what a supervisor of
the run needs that ``ros2 launch`` does not give: the node process's pid and exit codes, written to
``--status`` as JSON after every start and exit (``ros2 launch`` itself exits 0 whatever its
processes did), and an exit code of its own that is the node's: 0 when every run of it ended 0,
else the first non-zero one (128 + N for a signal N).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_status(path: Path, status: dict) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def exit_code_of(codes: list[int]) -> int:
    """The node's exit codes as one process exit code: the first non-zero, signals as 128 + N."""
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return 128 - bad[0] if bad[0] < 0 else bad[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ams_ros.demo.launch_side", description=__doc__.splitlines()[0])
    ap.add_argument("launch_file", help="a launch file of the ams_ros package, e.g. edge.launch.py")
    ap.add_argument("--status", required=True, help="JSON file for the node's pids and exit codes")
    ap.add_argument("arguments", nargs="*", metavar="NAME:=VALUE", help="launch arguments")
    args = ap.parse_args(argv)
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription, RegisterEventHandler
    from launch.event_handlers import OnProcessExit, OnProcessStart
    from launch.launch_description_sources import AnyLaunchDescriptionSource
    from ros2launch.api import get_share_file_path_from_package

    launch_arguments = []
    for item in args.arguments:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            ap.error(f"launch argument {item!r}: expected NAME:=VALUE")
        launch_arguments.append((name, value))
    path = get_share_file_path_from_package(package_name="ams_ros", file_name=args.launch_file)
    status_path = Path(args.status)
    status: dict = {"launch_pid": os.getpid(), "pids": [], "exit_codes": []}
    write_status(status_path, status)

    def started(event, context) -> None:
        status["pids"].append(event.pid)
        write_status(status_path, status)

    def exited(event, context) -> None:
        status["exit_codes"].append(event.returncode)
        write_status(status_path, status)

    service = LaunchService(argv=[f"{n}:={v}" for n, v in launch_arguments])
    service.include_launch_description(LaunchDescription([
        RegisterEventHandler(OnProcessStart(on_start=started)),
        RegisterEventHandler(OnProcessExit(on_exit=exited)),
        IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=launch_arguments),
    ]))
    rc = service.run()
    return rc or exit_code_of(status["exit_codes"])


if __name__ == "__main__":
    sys.exit(main())
