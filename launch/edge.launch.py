"""Robot side of AMS: camera sampler, student segmenter and model patcher in one process.

    ros2 launch ams_ros edge.launch.py device_id:=robot1 image_topic:=/camera/image_raw
    ros2 launch ams_ros edge.launch.py source:=/data/run1_bag use_sim_time:=true   # a rosbag as the camera
    ros2 launch ams_ros edge.launch.py device:=cuda inference_dtype:=float16        # a Jetson's GPU
    ros2 launch ams_ros edge.launch.py inference_backend:=onnxruntime               # a chosen runtime

Every argument but ``namespace``, ``config_file`` and ``log_level`` is a parameter of
``config_file``: given, it wins over the file's value in every node section that sets it; not
given, the file's value stands (``ams_ros/nodes/common/launch_params.py``). A process that fails is
restarted after 2 s, one stopped by a configuration error is not (``launch_actions.py``).
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
INFERENCE_BACKENDS = ["auto", "torch", "onnxruntime", "openvino", "tensorrt"]
BOOLS = ["true", "false"]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    params = [
        config_argument("device_id", "Name of this robot; the server addresses it by this id"),
        config_argument("source", "'topic' (camera driver publishes image_topic), a video file, an image folder, "
                                  "a rosbag, device:N or synthetic[:seed]"),
        config_argument("image_topic", "Camera image topic (sensor_msgs/Image), relative to the namespace unless "
                                       "absolute"),
        config_argument("student", "Student model name; must match the server's", STUDENTS),
        config_argument("student_weights", "Student initial weights: checkpoint path or tflite:PATH (empty = random)"),
        config_argument("label_space", "Label space of the teacher/student classes (synthetic | cityscapes | voc | "
                                       "camvid)"),
        config_argument("device", "Torch device of the student (inference and patching): auto (first CUDA device, "
                                  "else the CPU) | cpu | cuda | cuda:N; CUDA where there is none fails at start-up"),
        config_argument("inference_dtype", "Student inference precision (float16/bfloat16 via autocast; bfloat16 "
                                           "on a CPU in OpenVINO; updates stay float32)", DTYPES),
        config_argument("inference_backend", "Where the student runs each frame: auto (the fastest installed: "
                                             "onnxruntime, else openvino, else torch on a CPU; tensorrt, else torch, "
                                             "on CUDA) | torch | onnxruntime | openvino | tensorrt", INFERENCE_BACKENDS),
        config_argument("robot_key_file", "This robot's private key (PEM, mode 0600, `ams-keys generate`): signs "
                                          "its frame batches and snapshot requests (empty = unsigned)"),
        config_argument("server_public_keys", "The base station's public keys, as a list of base64 lines (`ams-keys "
                                              "public server.key`) or files; when set, unsigned or wrongly signed "
                                              "updates and snapshots are rejected (empty = accept unsigned)"),
        config_argument("use_sim_time", "Use /clock (e.g. from `ros2 bag play --clock`) instead of the system "
                                        "clock", BOOLS, fallback="false"),
    ]
    args = [
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "edge.yaml"),
                              description="YAML parameter file for camera_sampler, student_segmenter, model_patcher"),
        *params,
        DeclareLaunchArgument("namespace", default_value=LaunchConfiguration("device_id"),
                              description="Namespace of all edge topics (default: the device id)"),
        DeclareLaunchArgument("log_level", default_value="info", choices=LOG_LEVELS,
                              description="Log level of the edge nodes"),
    ]
    # No `name=`: a node-name remap would rename all three nodes the process hosts.
    edge = supervised_node(
        package="ams_ros",
        executable="edge",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[LaunchConfiguration("config_file"), ParameterOverrides(a.name for a in params)],
    )
    return LaunchDescription(args + edge)
