"""`make demo`: a robot and a base station as two processes over loopback DDS, scored live.

- :mod:`~ams_ros.demo.cli`: the entry point (``python -m ams_ros.demo``, ``ams_demo``) and its options;
- :mod:`~ams_ros.demo.runner`: the run itself: initial weights, the two processes, the observer;
- :mod:`~ams_ros.nodes.common.processes`: starting the ``edge`` and ``server`` executables as the launch
  files would (``ros2 launch`` cannot be installed here), with parameter overrides;
- :mod:`~ams_ros.demo.observer`: an rclpy node that scores the streamed and a frozen student;
- :mod:`~ams_ros.demo.report`: ``summary.json`` and the plots;
- :mod:`~ams_ros.demo.synthetic_student`: the cached "no customization" student of the synthetic world.
"""
