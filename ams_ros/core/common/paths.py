"""Where the package's source is: the checkout this module was imported from.

The installed share folder (``config/``, ``launch/``, ``rviz/``) is found through the ament index,
which is ROS: :mod:`ams_ros.nodes.common.package_share`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "ams_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[3]
"""The checkout this module was imported from (the repository root), when run from source."""
