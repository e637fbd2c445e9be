"""With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST the rmw of this distribution sends to loopback only.

Jazzy (Fast DDS 2.14) and Kilted (Fast DDS 3.2) both implement the discovery range in
rmw_fastrtps; this checks what the process actually does: a publisher and a subscription talk
for a few seconds under strace, and every IP destination of sendto/sendmsg/sendmmsg/connect must
be a loopback address. (The test never runs DDS without the loopback setting.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from ros_helpers import REPO_ROOT, loopback_env, require_ros

require_ros()

CHILD = r"""
import time, rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String
rclpy.init()
a, b = rclpy.create_node("ams_lb_pub"), rclpy.create_node("ams_lb_sub")
got = []
b.create_subscription(String, "ams_lb_topic", got.append, 10)
pub = a.create_publisher(String, "ams_lb_topic", 10)
ex = SingleThreadedExecutor(); ex.add_node(a); ex.add_node(b)
end = time.monotonic() + 4.0
while time.monotonic() < end:
    pub.publish(String(data="x")); ex.spin_once(timeout_sec=0.05)
print("received", len(got), flush=True)
ex.remove_node(a); ex.remove_node(b); a.destroy_node(); b.destroy_node(); rclpy.shutdown()
"""

ADDR = re.compile(r'inet_addr\("([0-9.]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


pytestmark = pytest.mark.ros


def test_dds_sends_to_loopback_only(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    env = loopback_env()
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    trace = tmp_path / "net.strace"
    proc = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=sendto,sendmsg,sendmmsg,connect", "-o", str(trace),
         sys.executable, "-c", CHILD],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    received = int(re.search(r"received (\d+)", proc.stdout).group(1))
    assert received > 0, "publisher and subscription never matched"
    destinations = set()
    for line in trace.read_text().splitlines():
        if re.search(r"\b(sendto|sendmsg|sendmmsg|connect)\(", line):
            for v4, v6 in ADDR.findall(line):
                destinations.add(v4 or v6)
    assert destinations, "no IP traffic seen at all (strace output format changed?)"
    foreign = {d for d in destinations if not (d.startswith("127.") or d in ("::1", "::ffff:127.0.0.1"))}
    assert not foreign, f"DDS sent to non-loopback addresses: {sorted(foreign)}"
