"""asr_controller: turns each robot's phi-score into sampling commands (paper Eq. 1).

Every second it asks each session whether a rate period has passed; when one has, it publishes
the new sampling rate and update period (appendix D: longer on static scenes) to the robot,
with the server's current model version and chain tag (a lost update is noticed from it).
When the version or chain changes between two rate periods (a phase shipped an update), the last
command goes out again at once with the new version, so a robot that lost that update notices
within about a second instead of a rate period (``make faults``: 9.8 s before).
(issue #31) With ``stagger_batches`` (the default) a robot whose batches arrive together with
another's is told once, in its next command's ``period_shift``, to move its batch into its slot of
the period (:mod:`ams_ros.core.fleet.stagger`): robots started together otherwise send their
batches together, and each waits behind the others' on the shared GPU.
Its settings are the core's :class:`~ams_ros.core.server.rate_control.RateControlConfig` and
:class:`~ams_ros.core.server.rate_control.AdaptivePeriodConfig`; they can change at run time, and the
controllers keep their current rate when they do.
"""

from __future__ import annotations

from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import SamplingCommand
from ams_ros.core.fleet.stagger import BatchStagger, StaggerConfig
from ams_ros.core.server.rate_control import AdaptivePeriodConfig, RateControlConfig
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import sec_to_stamp
from ams_ros.nodes.common.parameters import NodeParameters, from_field
from ams_ros.nodes.common.qos import qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.server.state import ServerState
from ams_ros.nodes.common.shared_params import DEVICE_IDS, device_ids

RATE_FIELDS = ("r_min", "r_max", "r_init", "phi_form", "eta_r", "phi_target", "period_s")
# parameter name -> AdaptivePeriodConfig field
PERIOD_FIELDS = {"adaptive_update_period": "enabled", "atp_low": "low", "atp_high": "high",
                 "atp_step_s": "step_s", "atp_max_factor": "max_factor"}

PARAMS = (
    DEVICE_IDS,
    *(from_field(RateControlConfig, name, dynamic=True) for name in RATE_FIELDS),
    *(from_field(AdaptivePeriodConfig, field, name=name, dynamic=True) for name, field in PERIOD_FIELDS.items()),
    from_field(StaggerConfig, "enabled", name="stagger_batches", dynamic=True),
    from_field(StaggerConfig, "tolerance", name="stagger_tolerance", dynamic=True),
)


def rate_configs(values) -> tuple[RateControlConfig, AdaptivePeriodConfig]:
    """The two configs the parameter values describe (ValueError names an invalid combination)."""
    return (RateControlConfig(**{k: values[k] for k in RATE_FIELDS}),
            AdaptivePeriodConfig(**{f: values[n] for n, f in PERIOD_FIELDS.items()}))


class ASRController(Node):
    """Turns each device's phi-score into sampling commands (Eq. 1) every ``period_s``."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__("asr_controller", **kwargs)
        self.p = NodeParameters(self, PARAMS, on_change=self._apply_change)
        self.state = state
        state.bind(device_ids(self.p), self.get_name())  # (RuntimeError below when no session is built yet)
        rate, period = rate_configs(self.p)
        for session in state.sessions.values():
            session.configure_rate_control(rate, period, reset=True)
        self.pubs = {d: self.create_publisher(SamplingCommand, topics.for_device(d, topics.SAMPLING_COMMAND),
                                              qos("reliable", 10))
                     for d in state.robots}
        self._reject = RejectLog(self, counter=state.rejections)
        self._last: dict[str, tuple[float, float, float, int, str]] = {}  # per robot: rate, period, phi, version, tag
        self._stagger = BatchStagger()
        self.create_timer(1.0, self._reject.guard("rate tick", self._tick), callback_group=MutuallyExclusiveCallbackGroup())

    def _apply_change(self, changes: dict[str, Any]) -> None:
        values = {**self.p, **changes}
        StaggerConfig(enabled=bool(values["stagger_batches"]), tolerance=float(values["stagger_tolerance"]))
        rate, period = rate_configs(values)
        for session in self.state.sessions.values():
            session.configure_rate_control(rate, period)

    def _tick(self) -> None:
        for dev, session in self.state.sessions.items():
            if session.latest_t is None:
                continue
            cmd = session.sampling_command(session.latest_t)
            version, tag = int(session.version), session.chain_tag
            if cmd is not None:
                rate, period, phi = cmd
                self.get_logger().info(f"{dev}: phi {phi:.3f} -> sampling {rate:.2f} frames/s, T_update {period:.1f} s")
            elif dev in self._last and self._last[dev][3:] != (version, tag):
                rate, period, phi = self._last[dev][:3]  # the same command, the new version: a heartbeat
            else:
                continue
            msg = SamplingCommand()
            msg.header.stamp = sec_to_stamp(session.latest_t)
            msg.device_id = dev
            msg.sampling_rate = float(rate)
            msg.update_period = float(period)
            msg.phi = float(phi)
            # (issue #13) so the robot notices a lost update, or a new chain, within one command
            msg.server_version = version
            msg.chain_tag = tag
            msg.period_shift = float(self._period_shift(dev) if cmd is not None else 0.0)
            self.pubs[dev].publish(msg)
            self._last[dev] = (float(rate), float(period), float(phi), version, tag)

    def _period_shift(self, dev: str) -> float:
        """(issue #31) The shift that moves ``dev``'s batches into their slot
        (:class:`~ams_ros.core.fleet.stagger.BatchStagger`); 0 when staggering is off."""
        if not self.p["stagger_batches"]:
            return 0.0
        with self.state.cv:
            arrivals = dict(self.state.arrivals)
        shift, ref = self._stagger.shift(dev, self.state.robots, arrivals, float(self.p["stagger_tolerance"]))
        if shift:
            self.get_logger().info(f"{dev}: batches arrive {arrivals[dev].at - arrivals[ref].at:+.1f} s after {ref}'s: "
                                   f"shifting the next one {shift:+.1f} s into its slot (stagger_batches)")
        return shift
