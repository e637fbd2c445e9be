"""The layout keeps its promises: algorithms in ams_ros/core never import ROS, and the package
passes the project's own lint configuration (ruff.toml: unused imports, undefined names)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "ament_index_python", "launch", "launch_ros",
               "cv_bridge", "rosidl_runtime_py")


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs") or module.startswith("ams_ros.nodes")


def test_core_modules_import_nothing_from_ros_as_written():
    offenders = []
    for path in sorted((ROOT / "ams_ros" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if _is_ros(n)]
    assert not offenders, "\n".join(offenders)


def test_importing_all_of_core_loads_no_ros_module():
    """Also what core imports indirectly: a fresh interpreter imports every core module, then
    lists the ROS modules that got loaded."""
    code = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(ROOT)!r})
import ams_ros.core as core
for m in pkgutil.walk_packages(core.__path__, "ams_ros.core."):
    importlib.import_module(m.name)
tops = sorted({{name.split(".")[0] for name in sys.modules}})
print(json.dumps(tops + [n for n in sys.modules if n.startswith("ams_ros.")]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    ros = [m for m in loaded if _is_ros(m)]
    assert not ros, f"importing ams_ros.core loads ROS modules: {ros}"


def test_package_passes_the_projects_lint_configuration():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is not installed: `make test` installs it from requirements"
    out = subprocess.run([ruff, "check", "--output-format", "concise", "ams_ros", "test", "launch", "tools"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ruff found problems (config: ruff.toml):\n{out.stdout}{out.stderr}"
