"""camera_sampler: samples camera frames at the server's rate and uplinks one batch per period.

Input is a ``sensor_msgs/Image`` topic (sensor-data QoS, any common encoding) or, when no
camera driver runs, a source this node plays itself (video file, image folder, rosbag,
``device:N``, ``synthetic[:seed]``), which it then also publishes for the segmenter.

Test-only (fault benchmarks, ``make faults``): ``fault_drop_batches`` loses that fraction of the
encoded batches before they are published (a seeded draw, :mod:`ams_ros.core.sources.fault_injection`),
as a bad uplink would; 0 (the default) is off. Faults of what the robot sees (issue #29), both
dynamic and applied to a source this node plays: ``fault_black_frames`` publishes black frames (a
covered lens) and ``fault_foreign_source`` another source's frames (another robot's scene) while
set. ``start_s`` resumes a finite source part-way
(a robot that restarts does not replay the stream from its beginning).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image

from ams_msgs.msg import FrameBatch, SamplingCommand
from ams_ros.core.sources.fault_injection import DROP, FaultConfig, FaultyLink
from ams_ros.core.wire.frame_codec import BatchEncoderConfig, encode_frames
from ams_ros.core.common.stream_defaults import StreamDefaults
from ams_ros.core.edge.frame_sampler import FrameSampler, SampledBatch
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import (
    ImageConversionError,
    frame_batch_checksum,
    frame_batch_signing_input,
    numpy_to_imgmsg,
    sec_to_stamp,
    stamp_to_sec,
    to_rgb,
)
from ams_ros.nodes.edge.state import EdgeCounters, EdgeState
from ams_ros.nodes.common.parameters import NodeParameters, Param, from_field
from ams_ros.nodes.common.qos import RELIABILITIES, qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.core.security.signing import SigningKey
from ams_ros.nodes.common.shared_params import DEVICE_ID, FAULT_SEED, IMAGE_TOPIC, ROBOT_KEY_FILE, fault_param
from ams_ros.nodes.common.spinning import ProcessNodes, exit_process, run_process, watch_future
from ams_ros.core.sources.frame_sources import open_source

PARAMS = (
    DEVICE_ID, ROBOT_KEY_FILE,
    Param("source", "topic", "'topic' to subscribe to image_topic, else a video file, image folder, rosbag, "
                             "device:N or synthetic[:seed] played by this node"),
    IMAGE_TOPIC,
    Param("frame_id", "camera", "frame_id of images this node publishes as the source"),
    Param("publish_rate", 10.0, "Frames/s published when this node is the source (0 = the source's own rate)"),
    Param("loop", False, "Replay a finite source from the start when it ends"),
    Param("duration_s", 0.0, "Stop the source after this much stream time (0 = unlimited)"),
    Param("start_s", 0.0, "Start a source this node plays this many seconds in (frames before are skipped, "
                          "stamps keep the source's time): resume a stream after a restart"),
    Param("stamp_origin", "now", "'now': stamps on the node clock; 'stream': seconds since the source started",
          choices=("now", "stream")),
    Param("source_width", 512, "Width of synthetic frames / resize of file sources (0 = native)"),
    Param("source_height", 256, "Height of synthetic frames / resize of file sources (0 = native)"),
    from_field(StreamDefaults, "sampling_rate",
               description="Initial training-sample rate in frames/s (the server commands it later)"),
    from_field(StreamDefaults, "update_period_s", name="update_period",
               description="Initial seconds of samples per frame batch (the server commands it later)"),
    from_field(StreamDefaults, "input_size", name="train_width", index=0,
               description="Width of uplinked frames (the training resolution)"),
    from_field(StreamDefaults, "input_size", name="train_height", index=1,
               description="Height of uplinked frames (the training resolution)"),
    from_field(BatchEncoderConfig, "codec", name="batch_codec", dynamic=True),
    from_field(BatchEncoderConfig, "bitrate_bps", dynamic=True),
    from_field(BatchEncoderConfig, "preset", name="x264_preset", dynamic=True),
    from_field(BatchEncoderConfig, "threads", name="encoder_threads", dynamic=True),
    Param("image_qos_reliability", "best_effort", "Camera image QoS reliability: best_effort (sensor data) | reliable",
          choices=RELIABILITIES),
    Param("image_qos_depth", 5, "Camera image QoS queue depth"),
    Param("batch_qos_depth", 10, "Frame batch / sampling command QoS depth (always reliable)"),
    fault_param("drop", "batches"), FAULT_SEED,
    Param("fault_black_frames", False, "Test-only (fault benchmarks, issue #29): the played source's frames are "
                                       "black while true (a covered lens)", dynamic=True),
    Param("fault_foreign_source", "", "Test-only (fault benchmarks, issue #29): while set, the played source's "
                                      "frames are replaced by this source's (another robot's scene, e.g. "
                                      "synthetic:1); empty = off", dynamic=True),
)
_ENCODER_PARAMS = {"batch_codec": "codec", "bitrate_bps": "bitrate_bps", "x264_preset": "preset",
                   "encoder_threads": "threads"}


class CameraSampler(Node):
    """Samples frames by stamp at the commanded rate, buffers a period, publishes a FrameBatch."""

    def __init__(self, state: EdgeState | None = None, **kwargs: Any) -> None:
        super().__init__("camera_sampler", **kwargs)
        self.p = NodeParameters(self, PARAMS, on_change=self._check_change)
        # (issue #13) the robot's own key signs every batch it sends
        self._key = SigningKey.load(self.p["robot_key_file"]) if self.p["robot_key_file"] else None
        self.counters: EdgeCounters = (state or EdgeState()).counters
        self._reject = RejectLog(self, counter=self.counters.rejections, hardware_id=self.p["device_id"])
        self.encoder_config = self._encoder_config(self.p)
        self.sampler = FrameSampler(
            sampling_rate=float(self.p["sampling_rate"]),
            update_period=float(self.p["update_period"]),
            size=(int(self.p["train_width"]), int(self.p["train_height"])),
        )
        self._sampler_lock = threading.Lock()
        self.counters.sampling_rate = self.sampler.sampling_rate
        self.counters.update_period = self.sampler.update_period
        fault = FaultConfig(drop=float(self.p["fault_drop_batches"]), seed=int(self.p["fault_seed"]))
        self._link: FaultyLink[int] | None = FaultyLink(fault) if fault.active else None
        if self._link is not None:
            self.get_logger().warning(f"TEST-ONLY fault injection: dropping {fault.drop:g} of the frame batches "
                                      f"(seed {fault.seed})")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch_encoder")
        self._input_group = MutuallyExclusiveCallbackGroup()
        reliable = qos("reliable", int(self.p["batch_qos_depth"]))
        self.batch_pub = self.create_publisher(FrameBatch, topics.FRAME_BATCH, reliable)
        self.create_subscription(SamplingCommand, topics.SAMPLING_COMMAND,
                                 self._reject.guard("sampling command", self._on_command), reliable,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        image_qos = qos(self.p["image_qos_reliability"], int(self.p["image_qos_depth"]))
        self._source = None
        self.finished = False
        if self.p["source"] == "topic":
            self.create_subscription(Image, self.p["image_topic"], self._reject.guard("image", self._on_image), image_qos,
                                     callback_group=self._input_group)
            self.get_logger().info(f"sampling frames from topic '{self.resolve_topic_name(self.p['image_topic'])}'")
        else:
            self._open_source()
            self.image_pub = self.create_publisher(Image, self.p["image_topic"], image_qos)
            rate = float(self.p["publish_rate"]) or float(getattr(self._source, "fps", 10.0) or 10.0)
            self._t_wall0: float | None = None  # set by the first tick: playback starts when spinning does
            self._wall_clock: Callable[[], float] = time.monotonic  # the player's pace (a test steps its own)
            self._clock0 = 0.0
            self._pending = None
            self._play_timer = self.create_timer(1.0 / rate, self._reject.guard("source frame", self._tick_source),
                                                 callback_group=self._input_group)
            self.get_logger().info(f"playing source '{self.p['source']}' at {rate:g} frames/s")

    @staticmethod
    def _encoder_config(values) -> BatchEncoderConfig:
        return BatchEncoderConfig(**{field: values[name] for name, field in _ENCODER_PARAMS.items()})

    def _check_change(self, changes: dict[str, Any]) -> None:
        """Encoder settings apply from the next batch; an invalid combination is refused whole."""
        self.encoder_config = self._encoder_config({**self.p, **changes})
        if changes.get("fault_foreign_source"):
            self._foreign = iter(self._open(changes["fault_foreign_source"], loop=True))
        for name in ("fault_black_frames", "fault_foreign_source"):
            if name in changes:
                self.get_logger().warning(f"TEST-ONLY fault injection: {name} {changes[name]!r}")

    def _seen(self, rgb):
        """The frame as the robot's camera sees it under the test-only faults of issue #29."""
        if self.p["fault_foreign_source"] and self._foreign is not None:
            rgb = next(self._foreign)[1]
        if self.p["fault_black_frames"]:
            rgb = rgb * 0
        return rgb

    # ------------------------------------------------------------------ sources
    def _open(self, spec: str, loop: bool):
        w, h = int(self.p["source_width"]), int(self.p["source_height"])
        size = (w, h) if w > 0 and h > 0 else None
        try:
            return open_source(spec, size=size, loop=loop, fps=float(self.p["publish_rate"]) or None)
        except Exception as exc:
            # a source that is not there or not valid is the parameter's fault (a configuration
            # error: not restarted); anything else (a camera that failed to open) may pass
            kind = ValueError if isinstance(exc, (ValueError, OSError)) else RuntimeError
            raise kind(
                f"cannot open source '{spec}': {exc}. Use 'topic', a video file, an image "
                f"folder, a rosbag, device:N or synthetic[:seed]"
            ) from exc

    def _open_source(self) -> None:
        self._source = self._open(self.p["source"], loop=bool(self.p["loop"]))
        self._foreign = iter(self._open(self.p["fault_foreign_source"], loop=True)) \
            if self.p["fault_foreign_source"] else None
        self._frames = iter(self._source)
        start = float(self.p["start_s"])
        if start > 0:
            self._frames = itertools.dropwhile(lambda f: f[0] < start, self._frames)

    def _tick_source(self) -> None:
        """Publish the source frame for the current wall time (skipping frames to keep pace)."""
        if self.finished:
            return
        if self._t_wall0 is None:  # not at construction: the other nodes may take seconds to load
            self._t_wall0 = self._wall_clock()
            self._clock0 = self.get_clock().now().nanoseconds * 1e-9
            # ticks from now on: frame k is due at tick k, so only a tick a whole period late skips
            # a frame (ticks left on the construction-time schedule made any jitter skip one)
            self._play_timer.reset()
        start = float(self.p["start_s"])
        elapsed = self._wall_clock() - self._t_wall0 + start
        duration = float(self.p["duration_s"])
        frame, self._pending = self._pending, None
        exhausted = False
        skipped = 0
        try:
            if frame is None:
                frame = next(self._frames)
            if frame[0] > elapsed:  # not due yet
                self._pending = frame
                return
            while True:  # publish the newest due frame, skip older ones (keeps pace in real time)
                nxt = next(self._frames)
                if nxt[0] > elapsed:
                    self._pending = nxt
                    break
                frame, skipped = nxt, skipped + 1
        except StopIteration:
            exhausted = True
        if skipped:
            with self.counters.lock:
                self.counters.source_frames_skipped += skipped
            self.get_logger().warning(
                f"source player ran late: skipped {skipped} frame(s) to keep real time "
                f"({self.counters.source_frames_skipped} so far)", throttle_duration_sec=5.0)
        if frame is None or (duration > 0 and frame[0] > duration):
            self._finish()
            return
        t, rgb = float(frame[0]), self._seen(frame[1])
        stamp_t = t if self.p["stamp_origin"] == "stream" else self._clock0 + t - start
        msg = numpy_to_imgmsg(rgb, "rgb8")
        msg.header.stamp = sec_to_stamp(stamp_t)
        msg.header.frame_id = self.p["frame_id"]
        self.image_pub.publish(msg)
        self._offer(stamp_t, rgb, msg.header.frame_id)
        if exhausted:
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        self._flush()
        self.get_logger().info("source finished")

    # ------------------------------------------------------------------ sampling
    def _on_image(self, msg: Image) -> None:
        try:
            rgb = to_rgb(msg)
        except ImageConversionError as exc:
            self._reject("image", str(exc))
            return
        self._offer(stamp_to_sec(msg.header.stamp), rgb, msg.header.frame_id)

    def _offer(self, t: float, rgb, frame_id: str) -> None:
        with self.counters.lock:
            self.counters.frames_received += 1
        with self._sampler_lock:
            before = self.sampler.sampled
            batch = self.sampler.offer(t, rgb)
            sampled = self.sampler.sampled - before
        if sampled:
            with self.counters.lock:
                self.counters.frames_sampled += sampled
        if batch is not None:
            self._submit(batch, frame_id)

    def _submit(self, batch: SampledBatch, frame_id: str) -> None:
        """Encode on the encoder thread; an exception escaping it ends the process (exit 1)."""
        watch_future(self._encoder.submit(self._encode_and_publish, batch, frame_id), "batch encoder thread",
                     self.get_logger())

    def _flush(self) -> None:
        with self._sampler_lock:
            batch = self.sampler.flush()
        if batch is not None:
            self._submit(batch, self.p["frame_id"])

    def _encode_and_publish(self, batch: SampledBatch, frame_id: str) -> None:
        """Runs on the encoder thread so image callbacks never wait for H.264."""
        try:
            ec = self.encoder_config
            enc = encode_frames(batch.frames, batch.timestamps, bitrate_bps=ec.bitrate_bps, codec=ec.codec,
                                preset=ec.preset, period_s=batch.update_period, threads=ec.threads)
        except Exception as exc:
            self.get_logger().error(f"could not encode frame batch {batch.seq}: {exc}")
            return
        msg = FrameBatch()
        msg.header.stamp = sec_to_stamp(batch.timestamps[-1])
        msg.header.frame_id = frame_id
        msg.device_id = self.p["device_id"]
        msg.batch_seq = batch.seq
        msg.codec = enc.codec
        msg.width, msg.height = int(enc.width), int(enc.height)
        msg.frame_stamps = [sec_to_stamp(t) for t in batch.timestamps]
        msg.sampling_rate = float(batch.sampling_rate)
        msg.update_period = float(batch.update_period)
        msg.target_bitrate = int(ec.bitrate_bps) if enc.codec == "h264" else 0
        msg.data = enc.data
        msg.checksum = frame_batch_checksum(msg)
        if self._key is not None:
            msg.signature = self._key.sign(frame_batch_signing_input(msg))
            msg.signer_key_id = self._key.key_id
        if not rclpy.ok():
            return
        if self._link is not None and self._link.push(batch.seq)[0] == DROP:
            self.get_logger().info(f"fault injection: drop batch {batch.seq} ({len(enc.data)} bytes)")
            return
        self.batch_pub.publish(msg)
        with self.counters.lock:
            self.counters.bytes_sent += len(enc.data)
        self.get_logger().info(
            f"batch {batch.seq}: {len(batch.frames)} frames, {len(enc.data)} bytes "
            f"({len(enc.data) * 8 / max(batch.update_period, 1e-6) / 1000:.0f} kbps)"
        )

    def _on_command(self, msg: SamplingCommand) -> None:
        if msg.device_id and msg.device_id != self.p["device_id"]:
            return
        try:
            with self._sampler_lock:
                self.sampler.command(msg.sampling_rate, msg.update_period)
                if msg.period_shift:  # (issue #31) once: into this robot's slot of the period
                    self.sampler.shift_period(msg.period_shift)
        except ValueError as exc:
            self._reject("sampling command", str(exc))
            return
        if msg.period_shift:
            self.get_logger().info(f"the base station staggers the batches: this one closes "
                                   f"{msg.period_shift:+.1f} s {'later' if msg.period_shift > 0 else 'earlier'}")
        with self.counters.lock:
            self.counters.sampling_rate = self.sampler.sampling_rate
            self.counters.update_period = self.sampler.update_period
        self.get_logger().info(
            f"sampling command: {msg.sampling_rate:.2f} frames/s, period {msg.update_period:.1f} s (phi {msg.phi:.3f})"
        )

    def destroy_node(self) -> None:
        """Finish the batch being encoded (queued ones are dropped), close the source, then the node."""
        if hasattr(self, "_encoder"):  # not when start-up failed (rclpy destroys it with its context)
            self._encoder.shutdown(wait=True, cancel_futures=True)
        if getattr(self, "_source", None) is not None and hasattr(self._source, "close"):
            self._source.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """The sampler alone, e.g. on a camera computer apart from the one running inference."""
    exit_process(run_process("camera_sampler", lambda: ProcessNodes([CameraSampler()]), args))


if __name__ == "__main__":
    sys.exit(main())
