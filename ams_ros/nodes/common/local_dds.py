"""Keeping DDS on this machine: loopback discovery and a private domain.

DDS discovery multicasts on every network interface by default; on shared machines (CI,
developer boxes) test traffic would leak onto the network and unrelated runs would discover
each other. The tests, the demo and every process they start use this one helper (the Makefile
sets the same two variables for anything its targets start). The launch files deliberately do
not: on a robot, discovery must span the robot's subnet so the base station can reach it.
"""

from __future__ import annotations

import os
from typing import Mapping

DISCOVERY_VARIABLE = "ROS_AUTOMATIC_DISCOVERY_RANGE"


def private_domain_id(base: int = 50, span: int = 50) -> int:
    """A domain id derived from this process's pid, in ``[base, base + span)``."""
    return base + os.getpid() % span


def loopback_env(domain_id: int | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) with loopback discovery and a domain id
    (``domain_id``, else the one already set, else a private one)."""
    out = dict(os.environ if env is None else env)
    out[DISCOVERY_VARIABLE] = "LOCALHOST"
    if domain_id is not None:
        out["ROS_DOMAIN_ID"] = str(int(domain_id))
    else:
        out.setdefault("ROS_DOMAIN_ID", str(private_domain_id()))
    return out


def use_loopback(domain_id: int | None = None) -> int:
    """Put loopback discovery and a domain id into this process's environment (before rclpy is
    initialised); returns the domain id."""
    os.environ.update(loopback_env(domain_id))
    return int(os.environ["ROS_DOMAIN_ID"])
