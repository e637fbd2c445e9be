"""model_patcher: verifies sparse updates, applies them to the inactive student copy, swaps.

Rejects (with a log line and no change to the running model) updates for another
architecture, corrupted or truncated ones, ones with non-finite values and ones that do not
follow the version chain; after a gap, and at start-up, it asks the server to resync, naming the
version and chain it runs: a robot a few versions behind gets one catch-up update, else a full
snapshot. It follows the chain tag of its weights (:mod:`ams_ros.core.edge.chain_sync`) and reads the
server's version and chain from every sampling command, so a lost update or a new chain (the
server lost its state) is noticed within one command.

Signatures (issue #13, :mod:`ams_ros.core.security.signing`): with ``server_public_keys`` set, an update,
catch-up or snapshot must carry a valid Ed25519 signature of one of those keys, made for this
robot, or it is rejected (counted) and the model stays as it is; with ``robot_key_file`` the
robot signs its snapshot requests (with a timestamp and a nonce, so they cannot be replayed).

Test-only (fault benchmarks, ``make faults``): ``fault_drop_updates``, ``fault_duplicate_updates``
and ``fault_reorder_updates`` pass the updates received on the topic through a seeded lossy link
(:mod:`ams_ros.core.sources.fault_injection`) before they are handled, as a bad radio link would; all
default to 0 (off). Snapshot and catch-up responses of the service are not disturbed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ams_msgs.msg import ModelUpdate, SamplingCommand
from ams_msgs.srv import GetModelSnapshot
from ams_ros.core.edge.chain_sync import ChainFollower
from ams_ros.core.edge.receiver import ALREADY, HELD, REJECTED, UpdateReceiver
from ams_ros.core.common.devices import resolve_device
from ams_ros.core.sources.fault_injection import DELIVER, FaultConfig, FaultyLink
from ams_ros.core.models.params import fingerprint
from ams_ros.core.security.signing import SigningKey, TrustedKeys, new_nonce
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import msg_to_update, snapshot_request_input
from ams_ros.nodes.edge.state import EdgeState
from ams_ros.nodes.common.parameters import NodeParameters, Param, string_list
from ams_ros.nodes.common.qos import qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.common.shared_params import DEVICE_ID, EDGE_DEVICE, FAULT_SEED, ROBOT_KEY_FILE, fault_param

PARAMS = (
    DEVICE_ID, EDGE_DEVICE,
    Param("request_snapshot_on_start", True, "Ask the server for a full model snapshot at start-up"),
    Param("snapshot_timeout_s", 30.0, "Seconds to wait for a snapshot response before asking again", dynamic=True),
    Param("server_public_keys", [""], "Base station public keys (base64 lines from `ams-keys`, or files), several "
          "for rotation; when any is set, unsigned or wrongly signed updates and snapshots are rejected "
          "(empty = accept unsigned)"),
    ROBOT_KEY_FILE,
    Param("update_qos_depth", 10, "Model update QoS depth (always reliable)"),
    Param("lost_update_grace_s", 1.0, "Seconds a sampling command's newer server version may wait for its update "
                                      "before the robot asks for a catch-up", dynamic=True),
    Param("freeze_model", False, "Keep the running model: updates, catch-ups and snapshots are held (logged, "
                                 "counted in EdgeStatus updates_held) until this is false again, when the robot "
                                 "asks the server to catch it up (e.g. during a manoeuvre)", dynamic=True),
    fault_param("drop", "updates"), fault_param("duplicate", "updates"), fault_param("reorder", "updates"),
    FAULT_SEED,
)


class ModelPatcher(Node):
    def __init__(self, state: EdgeState, **kwargs: Any) -> None:
        super().__init__("model_patcher", **kwargs)
        self.p = NodeParameters(self, PARAMS, on_change=self._check_change)
        self.model = state.require_model("model_patcher")
        device = resolve_device(self.p["device"])
        if device != self.model.holder.device:  # one device per edge process: set it in the YAML's /** section
            raise ValueError(f"model_patcher device '{self.p['device']}' ({device}) differs from the student's "
                             f"({self.model.holder.device}): the patcher writes into the segmenter's model; set "
                             f"'device' once, in the '/**' section of the edge parameter file")
        self.counters = state.counters
        self.stats = state.patch_stats
        self._fingerprint = fingerprint(self.model.holder.active)
        self._trusted = TrustedKeys.parse(string_list(self.p["server_public_keys"]))
        self._key = SigningKey.load(self.p["robot_key_file"]) if self.p["robot_key_file"] else None
        self._reject_log = RejectLog(self, counter=self.counters.rejections, hardware_id=self.p["device_id"])
        self._retry_at = 0.0  # after a refused snapshot, the next request waits (no request storm)
        self._link: FaultyLink[ModelUpdate] | None = self._fault_link()
        group = MutuallyExclusiveCallbackGroup()  # patching never shares a thread with inference
        self.create_subscription(ModelUpdate, topics.MODEL_UPDATE, self._reject_log.guard("update", self._on_update),
                                 qos("reliable", int(self.p["update_qos_depth"])), callback_group=group)
        self.create_subscription(SamplingCommand, topics.SAMPLING_COMMAND,
                                 self._reject_log.guard("sampling command", self._on_command), qos("reliable", 10),
                                 callback_group=group)
        self.chain = ChainFollower()
        self.receiver = UpdateReceiver(self.model.holder, self.p["device_id"], self._trusted, self.chain)
        state.receiver = self.receiver
        self._was_frozen = False
        self.snapshot_client = self.create_client(GetModelSnapshot, topics.SNAPSHOT_SERVICE, callback_group=group)
        self._snapshot_lock = threading.Lock()
        self._snapshot_future = None
        self._snapshot_sent_at = 0.0
        self._snapshot_asked_at_version = 0  # the version the robot ran when it sent the pending request
        self._need_snapshot = bool(self.p["request_snapshot_on_start"])
        self.create_timer(0.5, self._reject_log.guard("snapshot", self._maybe_request_snapshot), callback_group=group)

    @staticmethod
    def _check_change(changes: dict[str, Any]) -> None:
        timeout = changes.get("snapshot_timeout_s")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"snapshot_timeout_s must be > 0, got {timeout}")
        grace = changes.get("lost_update_grace_s")
        if grace is not None and grace < 0:
            raise ValueError(f"lost_update_grace_s must be >= 0, got {grace}")

    def _fault_link(self) -> FaultyLink[ModelUpdate] | None:
        """The test-only lossy link of the ``fault_*`` parameters, or None (the default: off)."""
        config = FaultConfig(drop=float(self.p["fault_drop_updates"]), duplicate=float(self.p["fault_duplicate_updates"]),
                             reorder=float(self.p["fault_reorder_updates"]), seed=int(self.p["fault_seed"]))
        if not config.active:
            return None
        self.get_logger().warning(f"TEST-ONLY fault injection on received updates: drop {config.drop:g}, duplicate "
                                  f"{config.duplicate:g}, reorder {config.reorder:g} (seed {config.seed})")
        return FaultyLink(config)

    # ------------------------------------------------------------------ updates
    def _on_update(self, msg: ModelUpdate) -> None:
        if msg.device_id and msg.device_id != self.p["device_id"]:
            return
        if self._link is None:
            self._handle_update(msg)
            return
        fate, deliver = self._link.push(msg)
        if fate != DELIVER:
            self.get_logger().info(f"fault injection: {fate} update v{msg.base_version}->v{msg.new_version}")
        for m in deliver:
            self._handle_update(m)

    def _handle_update(self, msg: ModelUpdate) -> None:
        with self.counters.lock:
            self.counters.bytes_received += len(msg.indices) + len(msg.values)
        self._apply(msg, source="update")

    def _apply(self, msg: ModelUpdate, source: str) -> bool:
        """Through the robot's one receiver (:mod:`ams_ros.core.edge.receiver`): True when the model
        now has it (applied, or already there), False when it was rejected (counted, logged)."""
        try:
            update = msg_to_update(msg)
        except Exception as exc:  # a message that does not even convert: rejected like any malformed update
            self._reject(f"{source} v{msg.base_version}->v{msg.new_version}: malformed ({type(exc).__name__}: {exc})")
            return False
        self.receiver.frozen = "freeze_model is true" if self.p["freeze_model"] else ""
        verdict = self.receiver.receive(update, source)
        if verdict.kind == HELD:
            self.stats.held += 1
            self.get_logger().info(verdict.reason, throttle_duration_sec=5.0)
            return False
        if verdict.kind == REJECTED:
            self._reject(verdict.reason, warn=verdict.loud)
            if verdict.resync:
                self._need_snapshot = True
            return False
        if verdict.kind == ALREADY:
            return True
        self.stats.applied += 1
        if verdict.warning:
            self.get_logger().warning(verdict.warning)
        kind = "catch-up" if update.catch_up else source
        self.get_logger().info(
            f"applied {kind} v{verdict.before}->v{verdict.version} of chain {self.chain.tag or '(untagged)'} "
            f"({msg.num_selected} of {msg.num_params} parameters, {len(msg.indices) + len(msg.values)} bytes, "
            f"{msg.encoding})"
        )
        return True

    def _reject(self, reason: str, warn: bool = False) -> None:
        self.stats.rejected += 1
        self.stats.last_rejection = reason
        self._reject_log("update", f"{reason}; the running model is unchanged (v{self.model.holder.version})")

    def _on_command(self, msg: SamplingCommand) -> None:
        """The server's version and chain, from each sampling command (issue #13)."""
        if msg.device_id and msg.device_id != self.p["device_id"]:
            return
        now = self.get_clock().now().nanoseconds * 1e-9
        reason = self.chain.on_command(int(msg.server_version), msg.chain_tag, int(self.model.holder.version), now)
        if reason and not self._need_snapshot:
            self.get_logger().warning(f"{reason}: asking the server to resync")
            self._need_snapshot = True

    # ------------------------------------------------------------------ snapshots
    def _maybe_request_snapshot(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        frozen = bool(self.p["freeze_model"])
        if frozen != self._was_frozen:
            self._was_frozen = frozen
            self.get_logger().info(f"model {'frozen' if frozen else 'unfrozen'} (freeze_model) at "
                                   f"v{self.model.holder.version}" + ("" if frozen else ": asking the server to catch up"))
            self._need_snapshot = self._need_snapshot or not frozen
        if frozen:  # a frozen robot asks for nothing; it catches up when unfrozen
            return
        lost = self.chain.due(int(self.model.holder.version), now, float(self.p["lost_update_grace_s"]))
        if lost and not self._need_snapshot:
            self.get_logger().warning(f"{lost}: asking for a catch-up")
            self._need_snapshot = True
        fut = self._snapshot_future
        if fut is not None:
            if fut.done():
                self._snapshot_future = None
                self._on_snapshot(fut)
            elif now - self._snapshot_sent_at > float(self.p["snapshot_timeout_s"]):
                self.get_logger().warning("snapshot request timed out; asking again")
                self._snapshot_future = None
            return
        if not self._need_snapshot or now < self._retry_at or not self.snapshot_client.service_is_ready():
            return
        req = GetModelSnapshot.Request(
            device_id=self.p["device_id"], model_fingerprint=self._fingerprint,
            have_version=int(self.model.holder.version), encoding="", have_chain_tag=self.chain.tag,
            request_time_ns=time.time_ns(), nonce=new_nonce(),
        )
        if self._key is not None:
            req.signature = self._key.sign(snapshot_request_input(req))
            req.signer_key_id = self._key.key_id
        self._snapshot_sent_at = now
        self._snapshot_asked_at_version = int(self.model.holder.version)
        self._snapshot_future = self.snapshot_client.call_async(req)
        self.get_logger().info(f"asked the server to resync (have v{self.model.holder.version} of chain "
                               f"{self.chain.tag or '(none)'})")

    def _on_snapshot(self, fut) -> None:
        try:
            resp = fut.result()
        except Exception as exc:  # service gone mid-call
            self.get_logger().warning(f"snapshot request failed: {exc}")
            return
        if not resp.success:
            self.get_logger().warning(f"server refused the snapshot: {resp.message}")
            return
        with self.counters.lock:
            self.counters.bytes_received += len(resp.snapshot.indices) + len(resp.snapshot.values)
        source = "resync" if resp.snapshot.catch_up else "snapshot"
        answer, running = resp.snapshot, int(self.model.holder.version)
        if (answer.chain_tag and answer.chain_tag == self.chain.tag and running > self._snapshot_asked_at_version
                and answer.new_version <= running):
            # answered for the version the robot ran when it asked; updates of the same chain took it past
            # that meanwhile (a slow answer at start-up): it is on the chain, nothing to apply or resync
            self.get_logger().info(f"{source} v{answer.new_version} answered the request sent at "
                                   f"v{self._snapshot_asked_at_version}; the robot runs v{running} of that chain "
                                   f"since: not needed")
            self._need_snapshot = False
            return
        if self._apply(resp.snapshot, source=source):
            self._need_snapshot = False
        else:
            self._retry_at = self.get_clock().now().nanoseconds * 1e-9 + float(self.p["snapshot_timeout_s"])
