"""Base-station side of AMS: teacher labeler, AMS trainer and ASR controller in one process.

    ros2 launch ams_ros server.launch.py device_ids:="[robot1, robot2]" teacher:=tflite:/path/teacher.tflite \
        label_space:=cityscapes
    ros2 launch ams_ros server.launch.py device:=cuda:0 train_precision:=bfloat16 \
        teacher:=torchvision:deeplabv3_mobilenet_v3_large@/models/deeplabv3_mnv3.pth label_space:=voc
    # issue 12: the sessions and the teacher in a pool of Ray actors, one GPU each, on the cluster
    # `ray start` runs (README: "A base station on a Ray cluster")
    ros2 launch ams_ros server.launch.py backend:=ray ray_address:=auto pool_actors:=4 pool_actor_gpus:=1
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]
STUDENTS = ["deeplabv3_mobilenet_v2", "lraspp_mobilenet_v3_large"]
DTYPES = ["float32", "float16", "bfloat16"]
BACKENDS = ["local", "ray"]
ENCODINGS = ["paper_gzip_fp16", "delta_lzma_fp16", "delta_lzma_q8", "residual_lzma_q8", "residual_lzma_q6",
             "residual_zlib_q6", "residual_zstd_q4", "residual_zstd_q3", "residual_zstd_q2", "residual_zstd_ternary"]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    args = [
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "server.yaml"),
                              description="YAML parameter file for teacher_labeler, ams_trainer, asr_controller"),
        DeclareLaunchArgument("device_ids", default_value="[robot1]",
                              description="Robots this base station serves, as a YAML list; each has its own buffer, trainer and rate"),
        DeclareLaunchArgument("teacher", default_value="oracle",
                              description="Teacher spec: tflite:PATH | torchvision:NAME | checkpoint:PATH | espnetv2:PATH | oracle[:seed] (synthetic world)"),
        DeclareLaunchArgument("student", default_value="deeplabv3_mobilenet_v2", choices=STUDENTS,
                              description="Student model name; must match the robots' student"),
        DeclareLaunchArgument("student_weights", default_value="",
                              description="Initial student weights (the robots' w0): checkpoint path or tflite:PATH"),
        DeclareLaunchArgument("label_space", default_value="synthetic",
                              description="Label space of the teacher and the student (synthetic | cityscapes | voc | camvid)"),
        DeclareLaunchArgument("update_encoding", default_value="residual_zstd_q4", choices=ENCODINGS,
                              description="Encoding of the sparse model updates (see docs/results.md for sizes and decode times)"),
        DeclareLaunchArgument("state_dir", default_value="",
                              description="Folder where each robot's session is saved after every phase and resumed "
                                          "from at start-up (empty = no persistence)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device of the trainer and the teacher: auto (first CUDA device, else "
                                          "the CPU) | cpu | cuda | cuda:N; CUDA where there is none fails at start-up"),
        DeclareLaunchArgument("train_precision", default_value="float32", choices=DTYPES,
                              description="Training forward/backward precision (autocast; Adam state and selection stay float32)"),
        DeclareLaunchArgument("scheduler_policy", default_value="round_robin",
                              choices=["round_robin", "utility", "utility_aging"],
                              description="How robots share the GPU: round_robin (in turn), utility (predicted mIoU gain "
                                          "per GPU-second), utility_aging (utility rising with the wait); all bound the wait"),
        DeclareLaunchArgument("backend", default_value="local", choices=BACKENDS,
                              description="Where the robots' sessions and the teacher run: local (in the server "
                                          "process) | ray (in a pool of Ray actors, e.g. one per GPU; issue #12)"),
        DeclareLaunchArgument("ray_address", default_value="local",
                              description="With backend ray: local (a Ray instance in this process, on 127.0.0.1) | "
                                          "auto (the cluster `ray start` runs on this machine) | HOST:PORT (its head)"),
        DeclareLaunchArgument("pool_actors", default_value="2",
                              description="With backend ray: actors in the pool (each serves several robots)"),
        DeclareLaunchArgument("pool_actor_gpus", default_value="0.0",
                              description="With backend ray: GPUs each actor reserves (1 = one GPU per actor, 0 = CPU)"),
        DeclareLaunchArgument("pool_fuse", default_value="false", choices=["true", "false"],
                              description="With backend ray: train the ready robots of one actor in one fused step "
                                          "(pays on a GPU; slower on a CPU)"),
        DeclareLaunchArgument("pool_placement", default_value="utility", choices=["utility", "load"],
                              description="With backend ray: the robot an overloaded actor hands over: utility (the "
                                          "lowest predicted gain per GPU-second; with scheduler_policy utility or "
                                          "utility_aging, else as load) | load (the move leaving the lowest peak)"),
        DeclareLaunchArgument("signing_key_file", default_value="",
                              description="Base station's private key (PEM, mode 0600, `ams-keys generate`): signs "
                                          "every update, catch-up and snapshot (issue #13; empty = unsigned). The "
                                          "robots' public keys go in config_file (robot_public_keys: "
                                          "[\"robot1=BASE64\"])"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock (e.g. from `ros2 bag play --clock`) instead of the system clock"),
        DeclareLaunchArgument("log_level", default_value="info", choices=LOG_LEVELS,
                              description="Log level of the server nodes"),
    ]
    # No `name=`: a node-name remap would rename all three nodes the process hosts.
    server = Node(
        package="ams_ros",
        executable="server",
        output="screen",
        emulate_tty=True,
        # issue #13: a process that exits non-zero (a worker thread or callback failed) is restarted
        respawn=True,
        respawn_delay=2.0,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[
            LaunchConfiguration("config_file"),
            {"device_ids": LaunchConfiguration("device_ids"), "teacher": LaunchConfiguration("teacher"),
             "student": LaunchConfiguration("student"),
             "student_weights": LaunchConfiguration("student_weights"),
             "label_space": LaunchConfiguration("label_space"),
             "update_encoding": LaunchConfiguration("update_encoding"),
             "state_dir": LaunchConfiguration("state_dir"),
             "device": LaunchConfiguration("device"), "train_precision": LaunchConfiguration("train_precision"),
             "scheduler_policy": LaunchConfiguration("scheduler_policy"),
             "signing_key_file": LaunchConfiguration("signing_key_file"),
             "backend": LaunchConfiguration("backend"), "ray_address": LaunchConfiguration("ray_address"),
             "pool_actors": ParameterValue(LaunchConfiguration("pool_actors"), value_type=int),
             "pool_actor_gpus": ParameterValue(LaunchConfiguration("pool_actor_gpus"), value_type=float),
             "pool_fuse": ParameterValue(LaunchConfiguration("pool_fuse"), value_type=bool),
             "pool_placement": LaunchConfiguration("pool_placement"),
             "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
    )
    return LaunchDescription(args + [server])
