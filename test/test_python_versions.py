"""Jetsons on JetPack 6 run ROS 2 Humble on Python 3.10 (issue #27): nothing in the package (the
edge nodes, the core they import, the server, the programs) or its launch files may need a newer
Python. ``vermin`` reads every file's syntax, standard-library modules, functions and arguments and
names the minimum version each needs; the check fails on a 3.11-only construct or library call,
naming the file and the line (a seeded one proves it can fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ams_ros.core.common.paths import SOURCE_ROOT

pytest.importorskip("vermin", reason="vermin is not installed: run `make setup` (requirements/common.txt)")

TARGET = "3.10"


def vermin(*paths: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("vermin")  # the venv's console script (no python -m entry)
    return subprocess.run([str(exe), "--no-tips", "--violations", "--eval-annotations",
                           f"--target={TARGET}-", *paths], capture_output=True, text=True, cwd=SOURCE_ROOT)


def test_the_package_and_its_launch_files_need_no_python_newer_than_3_10():
    out = vermin("ams_ros", "launch")
    assert out.returncode == 0, f"needs a Python newer than {TARGET}:\n{out.stdout}{out.stderr}"


def test_the_check_fails_on_a_3_11_only_construct_and_names_it(tmp_path):
    seeded = tmp_path / "newer.py"
    seeded.write_text("import tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    out = vermin(str(seeded))
    assert out.returncode != 0
    assert "tomllib" in out.stdout and "3.11" in out.stdout, out.stdout
