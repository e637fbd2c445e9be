"""The launch files and YAML configs are consistent with the package (read, not launched:
`ros2 launch` cannot be installed here, robots have it)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))

# which node classes (by their PARAMS dicts) each YAML section configures
NODE_PARAM_TABLES = {
    "camera_sampler": ("ams_ros.nodes.camera_sampler", "PARAMS"),
    "student_segmenter": ("ams_ros.nodes.student_segmenter", "PARAMS"),
    "model_patcher": ("ams_ros.nodes.model_patcher", "PARAMS"),
    "teacher_labeler": ("ams_ros.nodes.server", "LABELER_PARAMS"),
    "ams_trainer": ("ams_ros.nodes.server", "TRAINER_PARAMS"),
    "asr_controller": ("ams_ros.nodes.server", "ASR_PARAMS"),
}


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets):
            return {ast.literal_eval(e).split("=")[0].strip() for e in node.value.elts}
    raise AssertionError("setup.py has no CONSOLE_SCRIPTS list")


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == name]


def kw(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def test_launch_files_exist():
    names = {p.name for p in LAUNCH_FILES}
    assert {"edge.launch.py", "server.launch.py", "demo.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_executable_is_a_console_script(path):
    tree = ast.parse(path.read_text())
    scripts = console_scripts()
    nodes = calls(tree, "Node")
    assert nodes, f"{path.name} starts no node"
    for call in nodes:
        pkg = ast.literal_eval(kw(call, "package"))
        exe = ast.literal_eval(kw(call, "executable"))
        if pkg == "ams_ros":
            assert exe in scripts, f"{path.name}: executable '{exe}' is not a console script of ams_ros"


def test_console_scripts_point_at_real_functions():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets):
            for e in node.value.elts:
                name, target = ast.literal_eval(e).split("=")
                module, func = target.strip().split(":")
                src = ROOT / (module.replace(".", "/") + ".py")
                if not src.exists():
                    src = ROOT / module.replace(".", "/") / "__init__.py"
                assert src.exists(), f"console script {name.strip()}: module {module} missing"
                assert re.search(rf"^def {func}\(", src.read_text(), re.M), f"{module} has no {func}()"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_have_descriptions_and_files_exist(path):
    tree = ast.parse(path.read_text())
    args = calls(tree, "DeclareLaunchArgument")
    assert args, f"{path.name} declares no launch arguments"
    for call in args:
        desc = kw(call, "description")
        assert desc is not None and len(ast.literal_eval(desc)) > 10, f"{path.name}: argument without description"
    # every os.path.join(share, "<dir>", "<file>") names a file the package installs
    for call in calls(tree, "join"):
        parts = [ast.literal_eval(a) for a in call.args[1:] if isinstance(a, ast.Constant)]
        if len(parts) == 2 and parts[0] in ("config", "rviz", "launch"):
            assert (ROOT / parts[0] / parts[1]).exists(), f"{path.name} loads missing {parts[0]}/{parts[1]}"
        elif len(parts) == 1 and isinstance(call.args[0], ast.Name) and call.args[0].id == "launch_dir":
            assert (ROOT / "launch" / parts[0]).exists(), f"{path.name} includes missing launch/{parts[0]}"


def test_launch_files_do_not_force_loopback():
    # robots discover across their subnet; only tests and the local demo force loopback
    for path in LAUNCH_FILES:
        assert "ROS_AUTOMATIC_DISCOVERY_RANGE" not in path.read_text()


def _tables():
    out = {}
    for section, (module, attr) in NODE_PARAM_TABLES.items():
        out[section] = getattr(importlib.import_module(module), attr)
    return out


@pytest.fixture(scope="module")
def param_tables():
    pytest.importorskip("rclpy")
    pytest.importorskip("ams_msgs.msg")
    return _tables()


@pytest.mark.parametrize("config", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_keys_match_declared_parameters(config, param_tables):
    data = yaml.safe_load(config.read_text())
    assert data, f"{config.name} is empty"
    for key, body in data.items():
        section = key.removeprefix("/**/")
        assert section in param_tables, f"{config.name}: unknown node section '{section}'"
        params = body["ros__parameters"]
        declared = param_tables[section]
        unknown = set(params) - set(declared)
        assert not unknown, f"{config.name}/{section}: keys no node declares: {sorted(unknown)}"
        missing = set(declared) - set(params)
        assert not missing, f"{config.name}/{section}: declared parameters missing from the YAML: {sorted(missing)}"
        for key, value in params.items():
            default = declared[key][0]
            assert type(value) is type(default) or (isinstance(default, float) and isinstance(value, int)), (
                f"{config.name}/{section}/{key}: YAML type {type(value).__name__} != declared {type(default).__name__}"
            )


def test_every_node_has_a_yaml_section(param_tables):
    sections = set()
    for config in (ROOT / "config").glob("*.yaml"):
        sections |= {k.removeprefix("/**/") for k in yaml.safe_load(config.read_text())}
    assert set(param_tables) <= sections


def test_package_xml_declares_runtime_dependencies():
    text = (ROOT / "package.xml").read_text()
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "ams_msgs", "cv_bridge", "diagnostic_msgs",
                "python3-torch", "python3-torchvision", "python3-opencv", "python3-numpy"):
        assert f">{dep}<" in text, f"package.xml does not declare {dep}"
    assert 'format="3"' in text


def test_rviz_config_shows_overlay_mask_and_status():
    rviz = (ROOT / "rviz" / "ams.rviz").read_text()
    data = yaml.safe_load(rviz)
    topics = [d.get("Topic", {}).get("Value") for d in data["Visualization Manager"]["Displays"] if isinstance(d.get("Topic"), dict)]
    assert "/robot1/segmentation/overlay" in topics
    assert "/robot1/segmentation/mask_color" in topics
