"""ament_python package ams_ros: AMS edge and server nodes, core library, eval harness."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ams_ros"

CONSOLE_SCRIPTS = [
    # edge (robot)
    # edge (robot): camera_sampler + student_segmenter + model_patcher in one process (shared model)
    "edge = ams_ros.nodes.edge.main:main",
    # the sampler alone, e.g. on a camera computer separate from the inference computer
    "camera_sampler = ams_ros.nodes.edge.camera_sampler:main",
    # server (base station): teacher_labeler + ams_trainer + asr_controller in one process
    "server = ams_ros.nodes.server.main:main",
    # tools
    "ams_demo = ams_ros.demo.cli:main",
    "ams_bench = ams_ros.bench.cli:main",
    "ams-bench = ams_ros.bench.cli:main",
    "ams_eval = ams_ros.eval.cli:main",
    "ams-eval = ams_ros.eval.cli:main",
    # (issue #13) Ed25519 keys for signed updates, batches and snapshot requests
    "ams-keys = ams_ros.keys.cli:main",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ams_ros maintainers",
    maintainer_email="ams-ros@example.com",
    description="Adaptive Model Streaming for ROS 2 semantic segmentation",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
