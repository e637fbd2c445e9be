"""`make demo ARGS="--robots N"` (issue #16), without DDS: which robots the demo starts (ids,
sources, the oracle of each robot's own world), the parameter files and keys it writes for
them, and the server's per-robot teachers that keep each robot's labels from its own world."""

from __future__ import annotations

import argparse

import pytest
import yaml

from ros_helpers import require_ros

require_ros()
pytestmark = pytest.mark.ros

from ams_ros.demo.cli import parse_args  # noqa: E402
from ams_ros.demo.runner import RobotPlan, edge_and_server_params, robot_plans  # noqa: E402
from ams_ros.nodes.server.teacher_labeler import parse_device_teachers  # noqa: E402


def test_one_robot_keeps_its_device_id_source_and_file_names():
    (plan,) = robot_plans(1, "rover", "synthetic:4?shifts=20", "oracle")
    assert plan == RobotPlan("rover", "synthetic:4?shifts=20", "oracle:4?shifts=20", "")
    assert robot_plans(1, "robot1", "synthetic", "oracle")[0].teacher == "oracle:0"


def test_n_synthetic_robots_each_play_their_own_seed_with_their_own_oracle():
    plans = robot_plans(3, "robot1", "synthetic:5?shifts=20,40", "oracle")
    assert [p.device_id for p in plans] == ["robot1", "robot2", "robot3"]
    assert [p.source for p in plans] == [f"synthetic:{s}?shifts=20,40" for s in (5, 6, 7)]
    assert [p.teacher for p in plans] == [f"oracle:{s}?shifts=20,40" for s in (5, 6, 7)]
    assert [p.suffix for p in plans] == ["_robot1", "_robot2", "_robot3"]


def test_n_robots_on_a_real_source_all_play_it_with_the_one_teacher():
    plans = robot_plans(2, "robot1", "clip.mp4", "tflite:t.tflite")
    assert {(p.source, p.teacher) for p in plans} == {("clip.mp4", "tflite:t.tflite")}


@pytest.mark.parametrize("n, dev, source, teacher, why", [
    (0, "robot1", "synthetic", "oracle", "--robots must be >= 1"),
    (2, "rover", "synthetic", "oracle", "drop --device-id"),
    (2, "robot1", "clip.mp4", "oracle", "oracle teacher only knows the synthetic world"),
    (2, "robot1", "synthetic:x", "oracle", "the seed must be an integer"),
])
def test_bad_robot_settings_fail_with_the_fix(n, dev, source, teacher, why):
    with pytest.raises(SystemExit, match=why):
        robot_plans(n, dev, source, teacher)


def test_each_robot_gets_its_own_edge_params_and_key_and_the_server_trusts_them_all(tmp_path):
    args = parse_args(["--robots", "2", "--source", "synthetic:3"])
    plans = robot_plans(args.robots, args.device_id, args.source, args.teacher)
    edges, server = edge_and_server_params(args, "w.pt", tmp_path, plans)
    assert [e.name for e in edges] == ["params_edge_robot1.yaml", "params_edge_robot2.yaml"]
    for dev, path, source in zip(("robot1", "robot2"), edges, ("synthetic:3", "synthetic:4")):
        edge = yaml.safe_load(path.read_text())
        assert edge["/**"]["ros__parameters"]["device_id"] == dev
        assert edge["/**"]["ros__parameters"]["robot_key_file"].endswith(f"{dev}.key")
        assert edge["/**/camera_sampler"]["ros__parameters"]["source"] == source
        assert edge["/**/model_patcher"]["ros__parameters"]["server_public_keys"]
    s = yaml.safe_load(server.read_text())
    assert s["/**"]["ros__parameters"]["device_ids"] == ["robot1", "robot2"]
    assert [k.split("=")[0] for k in s["/**"]["ros__parameters"]["robot_public_keys"]] == ["robot1", "robot2"]
    labeler = s["/**/teacher_labeler"]["ros__parameters"]
    assert labeler["teacher"] == "oracle:3" and labeler["device_teachers"] == ["robot2=oracle:4"]
    assert (tmp_path / "keys" / "robot2.key").exists()


def test_one_robot_params_are_named_as_before(tmp_path):
    args = argparse.Namespace(**{**vars(parse_args([])), "teacher": "oracle:0"})
    edges, server = edge_and_server_params(args, "w.pt", tmp_path)
    assert [e.name for e in edges] == ["params_edge.yaml"] and server.name == "params_server.yaml"
    assert "device_teachers" not in yaml.safe_load(server.read_text())["/**/teacher_labeler"]["ros__parameters"]


def test_device_teachers_map_served_robots_and_name_the_fix_otherwise():
    assert parse_device_teachers(["robot2=oracle:1", " robot3 = oracle:2 "], ["robot1", "robot2", "robot3"]) == {
        "robot2": "oracle:1", "robot3": "oracle:2"}
    assert parse_device_teachers([], ["robot1"]) == {}
    with pytest.raises(ValueError, match="not DEVICE_ID=SPEC"):
        parse_device_teachers(["oracle:1"], ["robot1"])
    with pytest.raises(ValueError, match=r"does not serve \(device_ids: \['robot1'\]\)"):
        parse_device_teachers(["robot9=oracle:1"], ["robot1"])
    with pytest.raises(ValueError, match="twice"):
        parse_device_teachers(["robot1=oracle:1", "robot1=oracle:2"], ["robot1"])
