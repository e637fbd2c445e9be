"""ams_ros: Adaptive Model Streaming for ROS 2 segmentation on robots."""

__version__ = "0.1.0"
