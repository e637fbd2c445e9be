"""Test-wide settings: DDS on loopback with a private domain, small torch thread pool, and a check
that no test leaves the test process on real-time scheduling (every process it starts would inherit
it; see frame_codec._scheduling_kept)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# the checkout's package first (also without a built workspace)
_CHECKOUT = Path(__file__).resolve().parents[1]
if str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

from ams_ros.nodes.common.dds_shm import remove_dead_segments  # noqa: E402
from ams_ros.nodes.common.local_dds import use_loopback  # noqa: E402

# exported ONNX templates (issue #30) in a folder of this run, never the user's ~/.cache; every
# process the tests start inherits it, so the student is exported once per run, not once per robot
if not os.environ.get("AMS_ROS_CACHE"):
    os.environ["AMS_ROS_CACHE"] = tempfile.mkdtemp(prefix="ams_ros_test_cache_")
    atexit.register(shutil.rmtree, os.environ["AMS_ROS_CACHE"], True)

# DDS must never leave this machine during tests: loopback discovery, private domain.
use_loopback(int(os.environ["ROS_DOMAIN_ID"]) if os.environ.get("ROS_DOMAIN_ID") else None)
# segments of processes killed in an earlier run (kill -9 leaves them) can hang this run's processes
remove_dead_segments()


def pytest_configure(config: pytest.Config) -> None:
    # launch_testing's pytest plugin (installed with ros2 launch, issue #27) imports `launch`, whose
    # logging module makes every logger created afterwards a LaunchLogger that does not propagate:
    # the package's warnings would never reach pytest's log capture. Loggers made from here on are
    # plain ones again (launch's own, made while the plugin loaded, keep their class).
    logging.setLoggerClass(logging.Logger)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("ams_ros") and isinstance(logger, logging.Logger):
            logger.propagate = True
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass


@pytest.fixture
def assets():
    """The shared assets folder; skips the test when it is absent."""
    from ams_ros.core.common.assets import assets_dir

    root = assets_dir()
    if root is None:
        pytest.skip("shared assets not found (set AMS_ASSETS or place ../shared/assets)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (evaluation runs whose figures must not depend on load)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


_SCHEDULING = (os.sched_getscheduler(0), os.sched_getparam(0)) if hasattr(os, "sched_getscheduler") else None


@pytest.fixture(autouse=True)
def scheduling_left_as_it_was():
    """Fail a test that leaves this process's scheduling changed (and put it back): a test process
    switched to SCHED_FIFO 99 by an encoder starved every later test's robot and server processes."""
    yield
    if _SCHEDULING is None:
        return
    now = (os.sched_getscheduler(0), os.sched_getparam(0))
    if now != _SCHEDULING:
        os.sched_setscheduler(0, *_SCHEDULING)
        pytest.fail(f"the test left this process's scheduling at policy {now[0]}, priority {now[1].sched_priority} "
                    f"(was policy {_SCHEDULING[0]}, priority {_SCHEDULING[1].sched_priority})")
