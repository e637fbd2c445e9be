"""Robot side of AMS: camera sampler, student segmenter and model patcher in one process.

    ros2 launch ams_ros edge.launch.py device_id:=robot1 image_topic:=/camera/image_raw
    ros2 launch ams_ros edge.launch.py source:=/data/run1_bag use_sim_time:=true   # a rosbag as the camera
    ros2 launch ams_ros edge.launch.py device:=cuda inference_dtype:=float16        # a Jetson's GPU
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


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    args = [
        DeclareLaunchArgument("device_id", default_value="robot1",
                              description="Name of this robot; the server addresses it by this id"),
        DeclareLaunchArgument("namespace", default_value=LaunchConfiguration("device_id"),
                              description="Namespace of all edge topics (default: the device id)"),
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "edge.yaml"),
                              description="YAML parameter file for camera_sampler, student_segmenter, model_patcher"),
        DeclareLaunchArgument("source", default_value="topic",
                              description="'topic' (camera driver publishes image_topic), a video file, an image folder, a rosbag, device:N or synthetic[:seed]"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="Camera image topic (sensor_msgs/Image), relative to the namespace unless absolute"),
        DeclareLaunchArgument("student", default_value="deeplabv3_mobilenet_v2", choices=STUDENTS,
                              description="Student model name; must match the server's"),
        DeclareLaunchArgument("student_weights", default_value="",
                              description="Student initial weights: checkpoint path or tflite:PATH"),
        DeclareLaunchArgument("label_space", default_value="synthetic",
                              description="Label space of the teacher/student classes (synthetic | cityscapes | voc | camvid)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device of the student (inference and patching): auto (first CUDA "
                                          "device, else the CPU) | cpu | cuda | cuda:N; CUDA where there is none fails at start-up"),
        DeclareLaunchArgument("inference_dtype", default_value="float32", choices=DTYPES,
                              description="Student inference precision (float16/bfloat16 via autocast; updates stay float32)"),
        DeclareLaunchArgument("robot_key_file", default_value="",
                              description="This robot's private key (PEM, mode 0600, `ams-keys generate`): signs its "
                                          "frame batches and snapshot requests (issue #13; empty = unsigned). The "
                                          "base station's public keys go in config_file (model_patcher: "
                                          "server_public_keys)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock (e.g. from `ros2 bag play --clock`) instead of the system clock"),
        DeclareLaunchArgument("log_level", default_value="info", choices=LOG_LEVELS,
                              description="Log level of the edge nodes"),
    ]
    # No `name=`: a node-name remap would rename all three nodes the process hosts.
    edge = Node(
        package="ams_ros",
        executable="edge",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        # issue #13: a process that exits non-zero (a worker thread or callback failed) is restarted
        respawn=True,
        respawn_delay=2.0,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[
            LaunchConfiguration("config_file"),
            {"device_id": LaunchConfiguration("device_id"), "source": LaunchConfiguration("source"),
             "image_topic": LaunchConfiguration("image_topic"), "student": LaunchConfiguration("student"),
             "student_weights": LaunchConfiguration("student_weights"),
             "label_space": LaunchConfiguration("label_space"),
             "device": LaunchConfiguration("device"), "inference_dtype": LaunchConfiguration("inference_dtype"),
             "robot_key_file": LaunchConfiguration("robot_key_file"),
             "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
    )
    return LaunchDescription(args + [edge])
