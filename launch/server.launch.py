"""Base-station side of AMS: teacher labeler, AMS trainer and ASR controller in one process.

    ros2 launch ams_ros server.launch.py device_ids:="[robot1, robot2]" teacher:=tflite:/path/teacher.tflite \
        label_space:=cityscapes
    ros2 launch ams_ros server.launch.py device:=cuda:0 train_precision:=bfloat16 \
        teacher:=torchvision:deeplabv3_mobilenet_v3_large@/models/deeplabv3_mnv3.pth label_space:=voc
    # issue 12: the sessions and the teacher in a pool of Ray actors, one GPU each, on the cluster
    # `ray start` runs (README: "A base station on a Ray cluster")
    ros2 launch ams_ros server.launch.py backend:=ray ray_address:=auto pool_actors:=4 pool_actor_gpus:=1

Every argument but ``config_file`` and ``log_level`` is a parameter of ``config_file``: given, it
wins over the file's value in every node section that sets it (``device`` in the teacher
labeler's and the trainer's); not given, the file's values stand (``ams_ros/nodes/common/launch_params.py``).
A process that fails is restarted after 2 s, one stopped by a configuration error is not.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from ams_ros.nodes.common.launch_actions import supervised_node
from ams_ros.nodes.common.launch_params import ParameterOverrides, config_argument

LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]
STUDENTS = ["deeplabv3_mobilenet_v2", "lraspp_mobilenet_v3_large"]
DTYPES = ["float32", "float16", "bfloat16"]
BACKENDS = ["local", "ray"]
ENCODINGS = ["paper_gzip_fp16", "delta_lzma_fp16", "delta_lzma_q8", "residual_lzma_q8", "residual_lzma_q6",
             "residual_zlib_q6", "residual_zstd_q4", "residual_zstd_q3", "residual_zstd_q2", "residual_zstd_ternary"]
POLICIES = ["round_robin", "utility", "utility_aging"]
PLACEMENTS = ["utility", "load"]
BOOLS = ["true", "false"]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    params = [
        config_argument("device_ids", "Robots this base station serves, as a YAML list ([robot1, robot2]); each has "
                                      "its own buffer, trainer and rate"),
        config_argument("teacher", "Teacher spec: tflite:PATH | torchvision:NAME | checkpoint:PATH | espnetv2:PATH | "
                                   "oracle[:seed] (synthetic world)"),
        config_argument("student", "Student model name; must match the robots' student", STUDENTS),
        config_argument("student_weights", "Initial student weights (the robots' w0): checkpoint path or tflite:PATH"),
        config_argument("label_space", "Label space of the teacher and the student (synthetic | cityscapes | voc | "
                                       "camvid)"),
        config_argument("update_encoding", "Encoding of the sparse model updates (docs/results.md: sizes and decode "
                                           "times)", ENCODINGS),
        config_argument("state_dir", "Folder where each robot's session is saved after every phase and resumed from "
                                     "at start-up (empty = no persistence)"),
        config_argument("device", "Torch device of the trainer and the teacher: auto (first CUDA device, else the "
                                  "CPU) | cpu | cuda | cuda:N; CUDA where there is none fails at start-up"),
        config_argument("train_precision", "Training forward/backward precision (autocast; Adam state and selection "
                                           "stay float32)", DTYPES),
        config_argument("scheduler_policy", "How robots share the GPU: round_robin (in turn), utility (predicted "
                                            "mIoU gain per GPU-second), utility_aging (utility rising with the "
                                            "wait); all bound the wait", POLICIES),
        config_argument("backend", "Where the robots' sessions and the teacher run: local (in the server process) | "
                                   "ray (in a pool of Ray actors, e.g. one per GPU)", BACKENDS),
        config_argument("ray_address", "With backend ray: local (a Ray instance in this process, on 127.0.0.1) | "
                                       "auto (the cluster `ray start` runs on this machine) | HOST:PORT (its head)"),
        config_argument("pool_actors", "With backend ray: actors in the pool (each serves several robots)"),
        config_argument("pool_actor_gpus", "With backend ray: GPUs each actor reserves (1 = one GPU per actor, "
                                           "0 = CPU)"),
        config_argument("pool_fuse", "With backend ray: train the ready robots of one actor in one fused step "
                                     "(pays on a GPU; slower on a CPU)", BOOLS),
        config_argument("pool_placement", "With backend ray: the robot an overloaded actor hands over: utility (the "
                                          "lowest predicted gain per GPU-second) | load (the move leaving the "
                                          "lowest peak)", PLACEMENTS),
        config_argument("pool_spread", "With backend ray: start the actors on different Ray nodes where the cluster "
                                       "has several (losing a node loses the fewest actors)", BOOLS),
        config_argument("signing_key_file", "Base station's private key (PEM, mode 0600, `ams-keys generate`): signs "
                                            "every update, catch-up and snapshot (empty = unsigned)"),
        config_argument("robot_public_keys", "The robots' public keys as a list of DEVICE_ID=BASE64 (`ams-keys "
                                             "public robot1.key`) or DEVICE_ID=FILE entries; when set, unsigned or "
                                             "forged frame batches and snapshot requests are refused"),
        config_argument("use_sim_time", "Use /clock (e.g. from `ros2 bag play --clock`) instead of the system "
                                        "clock", BOOLS, fallback="false"),
    ]
    args = [
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "server.yaml"),
                              description="YAML parameter file for teacher_labeler, ams_trainer, asr_controller"),
        *params,
        DeclareLaunchArgument("log_level", default_value="info", choices=LOG_LEVELS,
                              description="Log level of the server nodes"),
    ]
    # No `name=`: a node-name remap would rename all three nodes the process hosts.
    server = supervised_node(
        package="ams_ros",
        executable="server",
        output="screen",
        emulate_tty=True,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[LaunchConfiguration("config_file"), ParameterOverrides(a.name for a in params)],
    )
    return LaunchDescription(args + server)
