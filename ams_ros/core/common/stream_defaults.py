"""What robot and base station start from before the server commands anything (the paper's values).

The robot's sampler batches ``update_period_s`` seconds of frames at ``sampling_rate`` frames/s and
uplinks them at ``input_size``; the base station trains at ``input_size``, asks for an update
every ``update_period_s`` and starts its rate control at ``sampling_rate``. Both sides take their
defaults from here, so neither imports the other's configuration (core/edge and core/server never
import each other).
"""

from __future__ import annotations

from dataclasses import dataclass

from ams_ros.core.common.config import knob

DEFAULT_INPUT_SIZE: tuple[int, int] = (512, 256)


@dataclass(frozen=True)
class StreamDefaults:
    update_period_s: float = knob(10.0, "T_update: requested seconds between updates")
    sampling_rate: float = knob(1.0, "Initial sampling rate (frames/s)")
    input_size: tuple[int, int] = knob(DEFAULT_INPUT_SIZE, "Student input (width, height): the robot infers and "
                                                          "uplinks frames at it, the base station trains at it")
