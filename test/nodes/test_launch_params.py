"""Launch arguments win over the parameter file in every section that sets them, only when given,
typed like the file's value (issue #27; ``ams_ros/nodes/common/launch_params.py``). Without processes:
the launch actions are performed in a LaunchContext as ``ros2 launch`` would perform them."""

from __future__ import annotations

import re

import pytest
import yaml

from launch_helpers import launch_missing

if launch_missing():
    pytest.skip(launch_missing(), allow_module_level=True)

from launch import LaunchContext  # noqa: E402
from launch.actions import DeclareLaunchArgument  # noqa: E402

from ams_ros.nodes.common.launch_params import (  # noqa: E402
    LaunchParameterError, ParameterOverrides, config_argument, typed)
from ams_ros.nodes.common.parameter_files import read_parameter_file, write_parameter_file  # noqa: E402

CONFIG = {
    "/**": {"device_id": "robot1", "device_ids": ["robot1"], "selected_classes": [""]},
    "/**/camera_sampler": {"source": "topic", "publish_rate": 10.0, "loop": False},
    "/**/teacher_labeler": {"device": "cpu", "teacher": "oracle"},
    "/**/ams_trainer": {"device": "auto", "iterations": 20},
}


pytestmark = pytest.mark.ros


def perform(tmp_path, given: dict[str, str], names: list[str]) -> dict[str, dict]:
    """Declare ``names`` as launch_params arguments with ``given`` on the command line; the
    override file's sections ({} when nothing is given: the overrides are the config file itself)."""
    config = write_parameter_file(tmp_path / "config.yaml", CONFIG)
    context = LaunchContext()
    context.launch_configurations.update({"config_file": str(config), **given})
    for name in names:
        config_argument(name, f"argument {name} for the test").execute(context)
    path = ParameterOverrides(names).perform(context)
    return {} if path == str(config) else read_parameter_file(path)


def test_a_given_argument_is_written_into_every_section_that_sets_it(tmp_path):
    out = perform(tmp_path, {"device": "cuda:1", "source": "synthetic:3"}, ["device", "source"])
    assert out == {"/**/teacher_labeler": {"device": "cuda:1"}, "/**/ams_trainer": {"device": "cuda:1"},
                   "/**/camera_sampler": {"source": "synthetic:3"}}


def test_an_argument_not_given_keeps_the_files_values_even_where_they_differ_per_node(tmp_path):
    assert perform(tmp_path, {}, ["device", "source", "iterations"]) == {}
    out = perform(tmp_path, {"iterations": "5"}, ["device", "iterations"])
    assert out == {"/**/ams_trainer": {"iterations": 5}}  # device stays cpu / auto


def test_values_take_the_type_of_the_files_value(tmp_path):
    out = perform(tmp_path, {"publish_rate": "7", "loop": "True", "device_ids": "rover1", "iterations": "3"},
                  ["publish_rate", "loop", "device_ids", "iterations"])
    assert out["/**/camera_sampler"] == {"publish_rate": 7.0, "loop": True}
    assert type(out["/**/camera_sampler"]["publish_rate"]) is float
    assert out["/**"] == {"device_ids": ["rover1"]}
    assert out["/**/ams_trainer"] == {"iterations": 3}
    assert typed("device_ids", "[a, b]", ["x"]) == ["a", "b"]
    assert typed("selected_classes", "[]", [""]) == [""]  # ROS cannot type an empty list
    assert typed("use_sim_time", "true", None) is True  # not in the file: read as YAML, as launch_ros does


@pytest.mark.parametrize("name,text,like,expected", [
    ("iterations", "many", 20, "an integer"), ("publish_rate", "fast", 10.0, "a number"),
    ("loop", "yes", False, "true or false"), ("device_ids", "[a, [b", ["x"], "a list"),
])
def test_a_value_that_does_not_fit_names_the_argument_and_what_it_takes(name, text, like, expected):
    with pytest.raises(LaunchParameterError, match=rf"launch argument {name}:=.*{expected}"):
        typed(name, text, like)


def test_the_default_shown_and_taken_is_the_files_value(tmp_path):
    config = write_parameter_file(tmp_path / "config.yaml", CONFIG)
    context = LaunchContext()
    context.launch_configurations["config_file"] = str(config)
    arg = config_argument("publish_rate", "frames per second")
    assert "publish_rate in config_file" in arg.default_value[0].describe()
    arg.execute(context)
    assert context.launch_configurations["publish_rate"] == "10.0"
    fallback = config_argument("use_sim_time", "sim time", ["true", "false"], fallback="false")
    fallback.execute(context)
    assert context.launch_configurations["use_sim_time"] == "false"


def test_a_missing_config_file_is_named(tmp_path):
    context = LaunchContext()
    context.launch_configurations["config_file"] = str(tmp_path / "nope.yaml")
    with pytest.raises(LaunchParameterError, match="nope.yaml"):
        config_argument("source", "the source").execute(context)


def test_the_override_file_has_no_yaml_aliases_rcl_would_reject(tmp_path):
    """One value object written into two sections must be written twice, not as an anchor."""
    config = write_parameter_file(tmp_path / "config.yaml", {"/**/a": {"ids": ["x"]}, "/**/b": {"ids": ["y"]}})
    context = LaunchContext()
    context.launch_configurations.update({"config_file": str(config), "ids": "[p, q]"})
    DeclareLaunchArgument("ids").execute(context)
    text = open(ParameterOverrides(["ids"]).perform(context)).read()
    assert not re.search(r"[&*]id\d", text), text  # PyYAML's anchors and aliases
    assert yaml.safe_load(text) == {"/**/a": {"ros__parameters": {"ids": ["p", "q"]}},
                                    "/**/b": {"ros__parameters": {"ids": ["p", "q"]}}}
