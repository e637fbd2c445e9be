"""Base-station side of AMS: teacher labeler, AMS trainer and ASR controller in one process.

    ros2 launch ams_ros server.launch.py device_ids:="[robot1, robot2]" teacher:=tflite:/path/teacher.tflite
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    args = [
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "server.yaml"),
                              description="YAML parameter file for teacher_labeler, ams_trainer, asr_controller"),
        DeclareLaunchArgument("device_ids", default_value="[robot1]",
                              description="Robots this base station serves, as a YAML list; each has its own buffer, trainer and rate"),
        DeclareLaunchArgument("teacher", default_value="oracle",
                              description="Teacher spec: tflite:PATH | torchvision:NAME | checkpoint:PATH | oracle[:seed] (synthetic world)"),
        DeclareLaunchArgument("student", default_value="deeplabv3_mobilenet_v2",
                              description="Student model name; must match the robots' student"),
        DeclareLaunchArgument("student_weights", default_value="",
                              description="Initial student weights (the robots' w0): checkpoint path or tflite:PATH"),
        DeclareLaunchArgument("label_space", default_value="synthetic",
                              description="Label space of the teacher (synthetic | cityscapes | voc | camvid)"),
    ]
    # No `name=`: a node-name remap would rename all three nodes the process hosts.
    server = Node(
        package="ams_ros",
        executable="server",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("config_file"),
            {"device_ids": LaunchConfiguration("device_ids"), "teacher": LaunchConfiguration("teacher"),
             "student": LaunchConfiguration("student"),
             "student_weights": LaunchConfiguration("student_weights"),
             "label_space": LaunchConfiguration("label_space")},
        ],
    )
    return LaunchDescription(args + [server])
