"""ROS-free AMS algorithms: models, training, codecs, rate control, metrics, synthetic world.

Nothing in this package imports rclpy; the ROS nodes, the evaluation harness and the
benchmarks all use these implementations unchanged.
"""
