"""Every launch argument takes effect (issue #27): each launch file is started with `ros2 launch`
and a non-default value for every argument, and each running node's parameters are read back
through its parameter services. Before the fix, launch_ros handed the arguments to the nodes as a
``/**`` section that the YAML's node sections overrode: ``source``, ``inference_dtype``,
``teacher``, ``backend``, ``state_dir``, ``update_encoding``, ... kept the YAML's values."""

from __future__ import annotations

import re

import pytest

from launch_helpers import RosLaunch, RosClient, require_launch
from ros_helpers import NO_SWAP_WATCH, require_ros

require_ros()
require_launch()

from ams_msgs.msg import EdgeStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ams_ros.core.security.signing import SigningKey  # noqa: E402
from ams_ros.nodes.config_files import process_nodes  # noqa: E402
from ams_ros.nodes.common.launch_params import typed  # noqa: E402
from ams_ros.nodes.common.parameter_files import merge_parameter_files, write_parameter_file  # noqa: E402
from ams_ros.nodes.common.qos import qos  # noqa: E402
from ams_ros.core.common.paths import SOURCE_ROOT  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
CONFIG = SOURCE_ROOT / "config"
NODE_INFO = re.compile(r"\[INFO\] \[\d+\.\d+\]")  # an INFO line of a node (launch's own have no stamp)


def declared_by(stem: str) -> dict[str, list[str]]:
    """{parameter: [the nodes of the ``stem`` process that declare it]}."""
    out: dict[str, list[str]] = {}
    for node, specs in process_nodes()[stem].items():
        for p in specs:
            out.setdefault(p.name, []).append(node)
    out.setdefault("use_sim_time", list(process_nodes()[stem]))  # every node has rclpy's own
    return out


def config_with(tmp_path, base: str, name: str, changes: dict[str, dict]) -> str:
    """``config/base`` with ``changes`` ({section: {name: value}}) merged in, as ``tmp_path/name``."""
    sections = merge_parameter_files([CONFIG / base])
    for section, values in changes.items():
        sections.setdefault(section, {}).update(values)
    return str(write_parameter_file(tmp_path / name, sections))


def check_parameters(client: RosClient, stem: str, namespace: str, args: dict[str, str], file_values: dict):
    """Each argument's value (typed like the declared default) in every node that declares it, and
    ``file_values`` ({node: {name: value}}) from the config file where no argument was given."""
    declared = declared_by(stem)
    defaults = {p.name: p.default for specs in process_nodes()[stem].values() for p in specs}
    wrong = []
    for node in process_nodes()[stem]:
        names = [n for n in args if node in declared.get(n, [])]
        names += [n for n in file_values.get(node, {}) if n not in names]
        got = client.parameters(f"{namespace}/{node}", names)
        for n in names:
            want = (typed(n, args[n], defaults.get(n, None)) if n in args else file_values[node][n])
            if got[n] != want:
                wrong.append(f"{namespace}/{node}.{n} = {got[n]!r}, want {want!r}")
    assert not wrong, "\n".join(wrong)
    for n in args:
        assert n in declared, f"launch argument {n} is no parameter of the {stem} nodes"


@pytest.fixture(scope="module")
def client():
    c = RosClient("launch_arguments_test")
    yield c
    c.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A student checkpoint (lraspp, 19 Cityscapes classes), keys, and their public lines."""
    import torch

    from ams_ros.core.models.weights import load_student, save_student_checkpoint

    d = tmp_path_factory.mktemp("launch_args")
    torch.manual_seed(0)
    ckpt = save_student_checkpoint(load_student("lraspp_mobilenet_v3_large", 19), d / "lraspp_city.pt",
                                   "lraspp_mobilenet_v3_large", 19)
    keys = {}
    for name in ("server", "rover7", "rover8"):
        key = SigningKey.generate()
        key.save(d / f"{name}.key")
        keys[name] = (str(d / f"{name}.key"), key.public_text)
    return d, str(ckpt), keys


def test_every_edge_launch_argument_reaches_its_nodes(client, files, tmp_path):
    d, ckpt, keys = files
    args = {
        "device_id": "rover7", "source": "synthetic:3", "image_topic": "camera/image",
        "student": "lraspp_mobilenet_v3_large", "student_weights": ckpt, "label_space": "cityscapes",
        "device": "cpu", "inference_dtype": "bfloat16", "inference_backend": "torch",  # autocast (auto would take OpenVINO for it)
        "robot_key_file": keys["rover7"][0],
        "server_public_keys": f"[{keys['server'][1]}]", "use_sim_time": "true",
    }
    config = config_with(tmp_path, "edge.yaml", "edge.yaml", {"/**/camera_sampler": {"publish_rate": 7.0},
                                                              "/**/model_patcher": {"snapshot_timeout_s": 12.0}})
    run = RosLaunch("edge.launch.py", {**args, "config_file": config, "namespace": "fleet/rover7",
                                       "log_level": "debug"}, tmp_path / "edge.log")
    try:
        run.wait_for(r"segmenting '/fleet/rover7/camera/image' with lraspp_mobilenet_v3_large", 120)
        check_parameters(client, "edge", "/fleet/rover7", args, {
            "camera_sampler": {"publish_rate": 7.0}, "model_patcher": {"snapshot_timeout_s": 12.0}})
        assert "[DEBUG]" in run.output()  # log_level reached the nodes
        rc, _ = run.stop()
        assert rc == 0 and run.exits() and all(code == 0 for _, code in run.exits()), run.output()[-3000:]
    finally:
        run.close()


def test_every_server_launch_argument_reaches_its_nodes(client, files, assets, tmp_path):
    d, ckpt, keys = files
    teacher = assets / "models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
    args = {
        "device_ids": "[rover7, rover8]", "teacher": f"tflite:{teacher}", "student": "lraspp_mobilenet_v3_large",
        "student_weights": ckpt, "label_space": "cityscapes", "update_encoding": "paper_gzip_fp16",
        "state_dir": str(tmp_path / "state"), "device": "cpu", "train_precision": "bfloat16",
        "scheduler_policy": "utility", "backend": "ray", "ray_address": "local", "pool_actors": "1",
        # 0 GPUs is the default, and all this machine can schedule: an actor asking for a GPU share
        # would wait for one for ever. Given explicitly, it still goes through the argument path.
        "pool_actor_gpus": "0.0", "pool_fuse": "true", "pool_placement": "load",
        "pool_spread": "false",
        "signing_key_file": keys["server"][0],
        "robot_public_keys": f"[rover7={keys['rover7'][1]}, rover8={keys['rover8'][1]}]", "use_sim_time": "true",
    }
    config = config_with(tmp_path, "server.yaml", "server.yaml", {"/**/asr_controller": {"r_max": 0.8}})
    run = RosLaunch("server.launch.py", {**args, "config_file": config, "log_level": "warn"},
                    tmp_path / "server.log")
    try:
        client.parameters("/teacher_labeler", ["teacher"], timeout=180)  # answers once the nodes spin
        check_parameters(client, "server", "", args, {"asr_controller": {"r_max": 0.8}})
        assert not NODE_INFO.search(run.output())  # log_level reached the nodes
        rc, _ = run.stop()
        assert rc == 0 and run.exits() and all(code == 0 for _, code in run.exits()), run.output()[-3000:]
    finally:
        run.close()


def test_demo_launch_arguments_reach_both_sides_and_the_demo_works(client, tmp_path):
    """``demo.launch.py rviz:=false`` with every argument changed: frames flow (labels carry their
    image's stamp), updates are applied, and what the demo does not pass keeps the files' values,
    per node (the server's ``device``: cpu for the teacher, auto for the trainer). The robot infers in
    OpenVINO (from its parameter file), so the updates are applied by recompiling it under ros2 launch."""
    import torch

    from ams_ros.core.models.weights import load_student, save_student_checkpoint

    torch.manual_seed(0)
    ckpt = str(save_student_checkpoint(load_student("deeplabv3_mobilenet_v2", 7), tmp_path / "w0.pt",
                                       "deeplabv3_mobilenet_v2", 7))
    small = {"input_width": 96, "input_height": 48}
    edge_config = config_with(tmp_path, "demo_edge.yaml", "edge.yaml", {
        "/**/camera_sampler": {"source_width": 96, "source_height": 48, "train_width": 96, "train_height": 48,
                               "update_period": 4.0},
        "/**/student_segmenter": {**small, "inference_backend": "openvino", **NO_SWAP_WATCH}})  # swaps by recompiling (issue #30)
    server_config = config_with(tmp_path, "demo_server.yaml", "server.yaml", {
        "/**/teacher_labeler": {"device": "cpu"},
        "/**/ams_trainer": {**small, "device": "auto", "iterations": 5, "batch_size": 4, "update_period_s": 4.0}})
    args = {"device_id": "rover9", "source": "synthetic:2", "teacher": "oracle:2", "student_weights": ckpt,
            "edge_config_file": edge_config, "server_config_file": server_config, "rviz": "false",
            "log_level": "warn"}
    images = client.collect(Image, "/rover9/image_raw", qos("best_effort", 50))
    labels = client.collect(Image, "/rover9/segmentation/labels", qos("reliable", 50))
    status = client.collect(EdgeStatus, "/rover9/ams/edge_status")
    run = RosLaunch("demo.launch.py", args, tmp_path / "demo.log")
    try:
        assert client.spin_until(lambda: any(s.model_version >= 1 for s in status), 240), run.output()[-5000:]
        image_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in images}
        assert labels and {(m.header.stamp.sec, m.header.stamp.nanosec) for m in labels[-5:]} <= image_stamps
        check_parameters(client, "edge", "/rover9", {"device_id": "rover9", "source": "synthetic:2",
                                                      "student_weights": ckpt},
                         {"student_segmenter": {**small, "inference_backend": "openvino"}})
        assert {s.inference_backend for s in status} == {"openvino"}  # updates applied above ran in OpenVINO
        check_parameters(client, "server", "", {"device_ids": "[rover9]", "teacher": "oracle:2",
                                                "student_weights": ckpt},
                         {"teacher_labeler": {"device": "cpu"}, "ams_trainer": {**small, "device": "auto"}})
        assert not NODE_INFO.search(run.output())  # log_level warn reached both nodes
        rc, _ = run.stop()
        assert rc == 0 and len(run.exits()) == 2 and all(c == 0 for _, c in run.exits()), run.output()[-3000:]
    finally:
        run.close()
