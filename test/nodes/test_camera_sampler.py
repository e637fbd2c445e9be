"""The camera sampler's player (a file, device or synthetic source when no camera driver runs)
keeps real time: when its process was starved it publishes the newest due frame, never a backlog,
and counts the frames it skipped so EdgeStatus can tell them apart from frames inference dropped."""

from __future__ import annotations

import time

import pytest
from rclpy.parameter import Parameter

from ros_helpers import require_ros

require_ros()

import rclpy  # noqa: E402

from ams_ros.nodes.edge.camera_sampler import CameraSampler  # noqa: E402
from ams_ros.nodes.edge.state import EdgeState  # noqa: E402

FPS = 5.0


pytestmark = pytest.mark.ros


@pytest.fixture()
def player():
    rclpy.init()
    state = EdgeState()
    counters = state.counters
    node = CameraSampler(state, parameter_overrides=[
        Parameter("source", value="synthetic:0"), Parameter("publish_rate", value=FPS),
        Parameter("source_width", value=32), Parameter("source_height", value=16),
        Parameter("stamp_origin", value="stream"), Parameter("duration_s", value=0.0),
    ])
    published: list[float] = []
    real_publish = node.image_pub.publish
    node.image_pub.publish = lambda msg: (published.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9),
                                          real_publish(msg))
    try:
        yield node, counters, published
    finally:
        node.destroy_node()
        rclpy.shutdown()


def test_a_late_player_publishes_the_newest_due_frame_and_counts_the_skipped(player):
    node, counters, published = player
    wall = [100.0]  # the player's wall clock, stepped by the test (a loaded machine cannot move it)
    node._wall_clock = lambda: wall[0]
    time.sleep(0.5)                           # the rest of the robot loads before spinning starts:
    before = time.monotonic()
    node._tick_source()                       # playback starts at the first tick, frame 0 is due at once
    assert published == [pytest.approx(0.0)]
    assert counters.source_frames_skipped == 0
    # and the ticks restart with it: frame k is due at tick k, not at a phase left from construction
    # (on that old schedule frames fell due just after ticks, and ordinary jitter skipped frames).
    # Reset at some moment after `before`, the next tick is at least a period after it; left on the
    # construction-time schedule (0.5 s ago, period 0.2 s) it would be overdue.
    until = node._play_timer.time_until_next_call()
    assert until >= (1.0 / FPS - (time.monotonic() - before)) * 1e9 - 1e6 and until > 0

    wall[0] += 2.0 + 0.5 / FPS                # the process stalled ~2 s: frames 0.2 .. 2.0 s are due
    node._tick_source()
    assert published[-1] == pytest.approx(2.0)
    assert counters.source_frames_skipped == 9   # 0.2 .. 1.8 s were never published
    assert counters.frames_received == 2

    node._tick_source()                       # nothing new is due yet: nothing published, nothing skipped
    assert len(published) == 2 and counters.source_frames_skipped == 9
    wall[0] += 1.0 / FPS                      # frame 2.2 s falls due: published, nothing skipped
    node._tick_source()
    assert published[-1] == pytest.approx(2.2) and counters.source_frames_skipped == 9


def test_the_test_only_learning_faults_black_out_or_replace_the_played_frames_while_set(player):
    """(issue #29, ``make faults``) ``fault_black_frames`` and ``fault_foreign_source`` are set and
    reset at run time as ``ros2 param set`` does; the robot's own stream (image and batch) carries them."""
    import itertools

    import numpy as np

    from ams_ros.nodes.common.conversions import to_rgb

    node, counters, published = player
    frames: list = []
    real_publish = node.image_pub.publish
    node.image_pub.publish = lambda msg: (frames.append(to_rgb(msg)), real_publish(msg))
    node._tick_source()
    assert frames[-1].std() > 3.0  # the synthetic world
    assert node.set_parameters([Parameter("fault_black_frames", value=True)])[0].successful
    node._t_wall0 -= 1.0 / FPS
    node._tick_source()
    assert not frames[-1].any()  # a covered lens: black
    node.set_parameters([Parameter("fault_black_frames", value=False),
                         Parameter("fault_foreign_source", value="synthetic:7")])
    node._t_wall0 -= 1.0 / FPS
    node._tick_source()
    own = node._open("synthetic:0", loop=False)
    foreign = node._open("synthetic:7", loop=False)
    first_foreign = next(iter(foreign))[1]
    assert frames[-1].std() > 3.0 and np.array_equal(frames[-1], first_foreign)  # another robot's scene
    assert not any(np.array_equal(frames[-1], f[1]) for f in itertools.islice(iter(own), 20))
    node.set_parameters([Parameter("fault_foreign_source", value="")])
    node._t_wall0 -= 1.0 / FPS
    node._tick_source()
    assert not np.array_equal(frames[-1], first_foreign)
