"""Both sides on one machine over the synthetic world (what `make demo` runs, plus RViz).

    ros2 launch ams_ros demo.launch.py
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ams_ros")
    launch_dir = os.path.join(share, "launch")
    args = [
        DeclareLaunchArgument("device_id", default_value="robot1", description="Name of the simulated robot"),
        DeclareLaunchArgument("source", default_value="synthetic:0",
                              description="Frame source of the robot (synthetic:SEED, a video, an image folder, a rosbag)"),
        DeclareLaunchArgument("teacher", default_value="oracle",
                              description="Teacher spec (oracle = synthetic ground truth with noise)"),
        DeclareLaunchArgument("student_weights", default_value="",
                              description="Initial student weights shared by robot and server"),
        DeclareLaunchArgument("rviz", default_value="true", choices=["true", "false"],
                              description="Start RViz with the overlay view"),
        DeclareLaunchArgument("log_level", default_value="info", choices=["debug", "info", "warn", "error", "fatal"],
                              description="Log level of the edge and server nodes"),
    ]
    edge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, "edge.launch.py")),
        launch_arguments={"device_id": LaunchConfiguration("device_id"), "source": LaunchConfiguration("source"),
                          "student_weights": LaunchConfiguration("student_weights"),
                          "log_level": LaunchConfiguration("log_level")}.items(),
    )
    server = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, "server.launch.py")),
        launch_arguments={"device_ids": ["[", LaunchConfiguration("device_id"), "]"],
                          "teacher": LaunchConfiguration("teacher"),
                          "student_weights": LaunchConfiguration("student_weights"),
                          "log_level": LaunchConfiguration("log_level")}.items(),
    )
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="screen",
        arguments=["-d", os.path.join(share, "rviz", "ams.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription(args + [edge, server, rviz])
