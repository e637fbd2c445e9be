"""The launch files' process supervision: restart after a failure, never after a configuration error.

``respawn`` restarts a process whatever its exit code, so a robot started with ``device:=cuda``
where there is none, or a video file that is not there, died and came back every 2 s for ever,
burying the one line that named the problem. :func:`supervised_node` keeps ``respawn`` for
failures a restart may cure (exit code 1, a kill -9) and stops it for ``CONFIG_ERROR`` (78, see
:mod:`ams_ros.nodes.common.exit_codes`): on that exit code it emits ``ShutdownProcess`` for the node, which
cancels the pending respawn (launch waits ``respawn_delay`` on the same shutdown future), and logs
why. The rest of the launch keeps running. Torch-free: the launch files import it.
"""

from __future__ import annotations

from typing import Any

from launch import LaunchContext
from launch.actions import EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import matches_action
from launch.events.process import ProcessExited, ShutdownProcess
from launch.logging import get_logger
from launch_ros.actions import Node

from ams_ros.nodes.common.exit_codes import CONFIG_ERROR

RESPAWN_DELAY_S = 2.0


def supervised_node(**node_kwargs: Any) -> list:
    """``Node(**node_kwargs)`` restarted ``RESPAWN_DELAY_S`` after it dies, except after a
    configuration error (exit code ``CONFIG_ERROR``); returns the node and its exit handler."""
    node = Node(respawn=True, respawn_delay=RESPAWN_DELAY_S, **node_kwargs)

    def on_exit(event: ProcessExited, context: LaunchContext) -> list | None:
        if event.returncode != CONFIG_ERROR:
            return None  # respawn decides: restarted unless launch is shutting down

        def say(context: LaunchContext) -> None:
            get_logger("launch").error(
                f"process[{event.process_name}] stopped on a configuration error (exit code {CONFIG_ERROR}); not "
                f"restarting it: fix the value named in its last message and launch again")

        return [OpaqueFunction(function=say),
                EmitEvent(event=ShutdownProcess(process_matcher=matches_action(event.action)))]

    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]
