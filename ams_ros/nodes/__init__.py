"""Thin ROS 2 nodes around ams_ros.core: parameters, QoS, topics, conversions."""
