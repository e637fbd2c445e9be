"""Where the package's files are: the installed share folder (config/, launch/, rviz/), the
source checkout, the shared assets beside it.

A robot's workspace installs ``share/ams_ros`` with colcon (plain or ``--symlink-install``), and
``ament_index_python`` finds it; running straight from a checkout (the tests, ``make demo``
before a build) falls back to the source tree, which has the same folders at its root.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "ams_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this module was imported from (the repository root), when run from source."""


def share_dir() -> Path:
    """``share/ams_ros`` of the installed package, else the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            share = Path(get_package_share_directory(PACKAGE))
            if (share / "config").is_dir():
                return share
        except PackageNotFoundError:
            pass
    except ImportError:  # no ROS environment at all: a plain checkout
        pass
    return SOURCE_ROOT


def config_dir() -> Path:
    """The parameter files (``edge.yaml``, ``server.yaml``)."""
    return share_dir() / "config"
