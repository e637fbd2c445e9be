"""The launch files and YAML configs are consistent with the package, read as files. Running them
(every argument taking effect, stopping, respawn, configuration errors) is tested under
`ros2 launch` in test/system/ (issue #27)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ams_ros.core.common.paths import SOURCE_ROOT

import pytest
import yaml

ROOT = SOURCE_ROOT
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
pytestmark = pytest.mark.ros  # some read the nodes' declared parameters (rclpy)



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
    nodes = calls(tree, "Node") + calls(tree, "supervised_node")
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
    for call in calls(tree, "config_argument"):  # (name, description, ...): a parameter of config_file
        assert len(ast.literal_eval(call.args[1])) > 10, f"{path.name}: argument without description"
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


@pytest.fixture(scope="module")
def param_tables():
    """{config file stem: {node: {name: (default, Param)}}}: what each process's nodes declare."""
    pytest.importorskip("rclpy")
    pytest.importorskip("ams_msgs.msg")
    from ams_ros.nodes.config_files import process_nodes

    return {stem: {node: {p.name: (p.default, p) for p in specs} for node, specs in nodes.items()}
            for stem, nodes in process_nodes().items()}


@pytest.mark.parametrize("config", [ROOT / "config" / "edge.yaml", ROOT / "config" / "server.yaml"],
                         ids=lambda p: p.name)
def test_yaml_keys_match_declared_parameters(config, param_tables):
    data = yaml.safe_load(config.read_text())
    assert data, f"{config.name} is empty"
    tables = param_tables[config.stem]
    shared = data.get("/**", {}).get("ros__parameters", {})
    for key, body in data.items():
        params = body["ros__parameters"]
        if key == "/**":  # values every node of the process shares: declared by at least one of them
            declared = {n: d for table in tables.values() for n, d in table.items() if n in params}
            unknown = set(params) - set(declared)
            assert not unknown, f"{config.name}/**: keys no node declares: {sorted(unknown)}"
            assert all(declared[n][1].shared for n in params), f"{config.name}/**: a per-node parameter is shared"
        else:
            section = key.removeprefix("/**/")
            assert section in tables, f"{config.name}: unknown node section '{section}'"
            declared = tables[section]
            unknown = set(params) - set(declared)
            assert not unknown, f"{config.name}/{section}: keys no node declares: {sorted(unknown)}"
            missing = set(declared) - set(params) - set(shared)
            assert not missing, f"{config.name}/{section}: declared parameters missing from the YAML: {sorted(missing)}"
        for name, value in params.items():
            default = declared[name][0]
            assert type(value) is type(default) or (isinstance(default, float) and isinstance(value, int)), (
                f"{config.name}/{key}/{name}: YAML type {type(value).__name__} != declared {type(default).__name__}"
            )


def test_every_node_has_a_yaml_section(param_tables):
    for stem, tables in param_tables.items():
        sections = {k.removeprefix("/**/") for k in yaml.safe_load((ROOT / "config" / f"{stem}.yaml").read_text())}
        assert set(tables) <= sections


def test_config_files_are_generated_from_the_declared_parameters(param_tables):
    """One place holds each default: the YAML is what the parameter specs render, byte for byte
    (after a default changes in ams_ros/core, `python -m ams_ros.nodes.config_files` rewrites it)."""
    from ams_ros.nodes.config_files import render

    for stem in param_tables:
        assert (ROOT / "config" / f"{stem}.yaml").read_text() == render(stem), (
            f"config/{stem}.yaml is stale: run python -m ams_ros.nodes.config_files")


def test_demo_launch_configs_are_the_base_files_with_make_demos_defaults(param_tables):
    """config/demo_*.yaml (demo.launch.py's) are what ``python -m ams_ros.demo.launch_config``
    writes: the base file's sections and names, the demo's values (256x128 frames, ...)."""
    from ams_ros.demo.launch_config import render

    for stem in ("edge", "server"):
        text = (ROOT / "config" / f"demo_{stem}.yaml").read_text()
        assert text == render(stem), f"config/demo_{stem}.yaml is stale: run python -m ams_ros.demo.launch_config"
        demo, base = yaml.safe_load(text), yaml.safe_load((ROOT / "config" / f"{stem}.yaml").read_text())
        assert {k: set(v["ros__parameters"]) for k, v in demo.items()} == {
            k: set(v["ros__parameters"]) for k, v in base.items()}
    edge = yaml.safe_load((ROOT / "config" / "demo_edge.yaml").read_text())
    assert edge["/**/student_segmenter"]["ros__parameters"]["input_width"] == 256


def test_yaml_sets_each_shared_value_once(param_tables):
    """device_id(s) and the student are written once per file, in /**, not per node."""
    for stem, tables in param_tables.items():
        data = yaml.safe_load((ROOT / "config" / f"{stem}.yaml").read_text())
        shared = {n for table in tables.values() for n, (_, p) in table.items() if p.shared}
        for key, body in data.items():
            if key != "/**":
                again = shared & set(body["ros__parameters"])
                assert not again, f"config/{stem}.yaml sets {sorted(again)} in {key} as well as in /**"
        assert shared == set(data["/**"]["ros__parameters"])
        assert ("device_id" if stem == "edge" else "device_ids") in shared


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


def _module_lists(path: Path) -> dict[str, list[str]]:
    tree = ast.parse(path.read_text())
    return {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.List)}


def test_launch_choices_are_the_packages_own():
    """The launch files cannot import torch-heavy modules to list the students and encodings, so
    they spell them out; this keeps them equal to the core's."""
    from ams_ros.core.models.student import STUDENTS
    from ams_ros.core.wire.encodings import ENCODINGS

    for name in ("edge.launch.py", "server.launch.py"):
        lists = _module_lists(ROOT / "launch" / name)
        assert sorted(lists["STUDENTS"]) == sorted(STUDENTS), name
        if "ENCODINGS" in lists:
            assert lists["ENCODINGS"] == list(ENCODINGS), name
        from ams_ros.core.common.devices import DTYPE_CHOICES

        assert lists["DTYPES"] == list(DTYPE_CHOICES), name
        if name == "edge.launch.py":
            from ams_ros.core.edge.runtimes import RUNTIMES

            assert lists["INFERENCE_BACKENDS"] == list(RUNTIMES), name
        if "BACKENDS" in lists:
            from ams_ros.core.fleet.scheduling import POLICIES
            from ams_ros.core.fleet.pool_config import BACKENDS, PLACEMENTS

            assert lists["BACKENDS"] == list(BACKENDS), name
            assert lists["POLICIES"] == list(POLICIES), name
            assert lists["PLACEMENTS"] == list(PLACEMENTS), name


def test_the_package_finds_its_config_through_the_ament_index():
    """A plain (non-symlink) colcon install has no source tree next to the code: the config
    comes from share/ams_ros, with the checkout only as a fallback."""
    pytest.importorskip("ament_index_python")
    from ament_index_python.packages import get_package_share_directory

    from ams_ros.nodes.common.package_share import config_dir

    assert config_dir() == Path(get_package_share_directory("ams_ros")) / "config"
    assert (config_dir() / "edge.yaml").exists()
