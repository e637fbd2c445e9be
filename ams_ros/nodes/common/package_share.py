"""Where the package's installed files are: ``share/ams_ros`` (config/, launch/, rviz/).

A robot's workspace installs ``share/ams_ros`` with colcon (plain or ``--symlink-install``), and
``ament_index_python`` finds it; running straight from a checkout (the tests, ``make demo``
before a build) falls back to the source tree, which has the same folders at its root.
"""

from __future__ import annotations

from pathlib import Path

from ams_ros.core.common.paths import PACKAGE, SOURCE_ROOT


def share_dir() -> Path:
    """``share/ams_ros`` of the installed package, else the source tree."""
    try:  # lazy: a plain checkout without a ROS environment has no ament index
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return SOURCE_ROOT
    try:
        share = Path(get_package_share_directory(PACKAGE))
    except PackageNotFoundError:
        return SOURCE_ROOT
    return share if (share / "config").is_dir() else SOURCE_ROOT


def config_dir() -> Path:
    """The parameter files (``edge.yaml``, ``server.yaml``, ``demo_*.yaml``)."""
    return share_dir() / "config"
