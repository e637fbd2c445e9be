"""The layout keeps its promises: algorithms in ams_ros/core never import ROS, and the package
passes the project's own lint configuration (ruff.toml: unused imports, undefined names)."""

from __future__ import annotations

import ast
import json
import os
import re
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


# ---------------------------------------------------------------------------- the layers (issue #28)
CORE = ("core.common", "core.models", "core.wire", "core.security", "core.sources", "core.edge", "core.server",
        "core.fleet")
BELOW_EDGE_AND_SERVER = {"core.common", "core.models", "core.wire", "core.security", "core.sources"}
PROGRAMS = ("demo", "eval", "bench", "fuzz", "keys")
#: what each part of the package may import (besides itself): the dependency rule of docs/architecture.md
LAYERS: dict[str, set[str]] = {
    "core.common": set(),
    "core.models": {"core.common"},
    "core.wire": {"core.common", "core.models"},
    "core.security": {"core.common", "core.models", "core.wire"},
    "core.sources": {"core.common", "core.models"},
    "core.edge": BELOW_EDGE_AND_SERVER,
    "core.server": BELOW_EDGE_AND_SERVER,
    "core.fleet": BELOW_EDGE_AND_SERVER | {"core.server"},
    "nodes.common": set(CORE),
    "nodes.edge": BELOW_EDGE_AND_SERVER | {"core.edge", "nodes.common"},
    "nodes.server": set(CORE) - {"core.edge"} | {"nodes.common"},
    "nodes": set(CORE) | {"nodes.common", "nodes.edge", "nodes.server"},  # nodes/config_files.py lists both
    **{program: set(CORE) | {"nodes", "nodes.common", "nodes.edge", "nodes.server"} for program in PROGRAMS},
}


def _part(module: str) -> str:
    """The layer a dotted module belongs to: ``core.wire``, ``nodes.edge``, ``nodes`` (its top), ``demo``, ..."""
    parts = module.split(".")[1:]
    if parts[:1] == ["core"] and len(parts) >= 2:
        return "core." + parts[1]
    if parts[:1] == ["nodes"]:
        return "nodes." + parts[1] if len(parts) >= 2 and parts[1] in ("common", "edge", "server") else "nodes"
    return parts[0] if parts else ""


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ams_ros import in ``path``, at the top and inside functions
    (``from ams_ros.core import sources`` imports the module ``ams_ros.core.sources``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ams_ros"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("ams_ros.")]
    return out


def test_every_part_imports_only_what_the_layer_table_allows():
    """core/ by side of the wire, each part importing only those below it; the robot side and the
    base station never import each other; nodes import core, never the programs; nothing imports
    the programs."""
    offenders, parts = [], set()
    for path in sorted((ROOT / "ams_ros").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        me = _part(module)
        if me not in LAYERS:
            continue
        parts.add(me)
        for line, imported in _imports(path):
            other = _part(imported)
            if other and other != me and other not in LAYERS[me]:
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {imported} ({other})")
    assert not offenders, "\n".join(offenders)
    assert set(CORE) <= parts and {"nodes.common", "nodes.edge", "nodes.server"} <= parts


def test_the_layer_check_catches_a_lower_layer_importing_a_higher_one(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text("from ams_ros.core.server.trainer import AMSTrainer\nfrom ams_ros.demo.cli import main\n")
    found = {_part(m) for _, m in _imports(bad)}
    assert found == {"core.server", "demo"}
    assert "core.server" not in LAYERS["core.edge"] and "demo" not in LAYERS["nodes.server"]


# ---------------------------------------------------------------------------- the test tree (issue #28)
TEST = ROOT / "test"
NEEDS_ROS = re.compile(r"^(require_ros\(\)|require_launch\(\)|if launch_missing\(\):)", re.M)


def test_every_test_module_that_needs_ros_carries_the_ros_mark_and_system_tests_the_slow_one():
    """CI runs the tests marked `ros` on Kilted (.ci/run): a module that needs ROS but lacks the
    mark would silently never run there."""
    missing = []
    for path in sorted(TEST.rglob("test_*.py")):
        text = path.read_text()
        marks = " ".join(re.findall(r"^pytestmark = (.*)$", text, re.M))
        if NEEDS_ROS.search(text) and "mark.ros" not in marks:
            missing.append(f"{path.relative_to(ROOT)}: needs ROS, no pytestmark with pytest.mark.ros")
        if path.parent.name == "system" and "mark.slow" not in marks:
            missing.append(f"{path.relative_to(ROOT)}: a system test without pytest.mark.slow")
    assert not missing, "\n".join(missing)


def test_a_ros_test_module_skips_cleanly_where_ros_is_missing(tmp_path):
    """require_ros() skips the module (it used to stop the whole run with a collection error:
    pytest.skip at module level without allow_module_level)."""
    fake = tmp_path / "rclpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('rclpy is not installed here (the test hides it)')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:launch_testing",
                          "-p", "no:launch_ros", "test/nodes/test_compat.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # 5: pytest collected nothing to run (the module skipped whole); a collection error gives 2
    assert out.returncode in (0, 5), out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 skipped" in out.stdout and "error" not in out.stdout.lower(), out.stdout[-3000:]
