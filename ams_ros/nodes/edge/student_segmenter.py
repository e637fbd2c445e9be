"""student_segmenter: runs the student on every frame; publishes labels, colour mask, overlay.

Inference reads the active model of a double buffer, so a model swap by the patcher never
blocks it; frames that arrive while inference is busy are dropped (depth-1 queue), never queued.
The model runs on the ``device`` parameter's device; the colour mask and the overlay are computed
there too, and only for topics that have a subscriber (:mod:`ams_ros.core.edge.inference`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image

from ams_msgs.msg import EdgeStatus, LabelInfo
from ams_ros.core.common.devices import configure_cudnn, describe, resolve_device
from ams_ros.core.common.devices import DeviceConfig
from ams_ros.core.common.stream_defaults import StreamDefaults
from ams_ros.core.edge.inference import EdgeInference
from ams_ros.core.edge.runtimes import RuntimeConfig
from ams_ros.core.edge.swap_watch import SwapWatch, SwapWatchConfig
from ams_ros.core.models.params import fingerprint
from ams_ros.core.edge.source_timing import GapTracker
from ams_ros.core.common.threads import set_torch_threads
from ams_ros.nodes.common import topics
from ams_ros.nodes.common.conversions import ImageConversionError, numpy_to_imgmsg, stamp_to_sec, to_rgb
from ams_ros.nodes.edge.state import EdgeModel, EdgeState
from ams_ros.nodes.common.parameters import NodeParameters, Param, from_field
from ams_ros.nodes.common.qos import RELIABILITIES, qos
from ams_ros.nodes.common.reject_log import RejectLog
from ams_ros.nodes.common.shared_params import DEVICE_ID, EDGE_DEVICE, IMAGE_TOPIC, STUDENT_PARAMS, student_spec

SWAP_WATCH_KNOBS = ("swap_watch_frames", "collapse_share", "collapse_frames", "latency_jump")
PARAMS = (
    DEVICE_ID, IMAGE_TOPIC, *STUDENT_PARAMS, EDGE_DEVICE,
    from_field(DeviceConfig, "inference_dtype"),
    from_field(RuntimeConfig, "inference_backend"),
    *(from_field(SwapWatchConfig, name) for name in SWAP_WATCH_KNOBS),
    from_field(DeviceConfig, "channels_last"),
    from_field(DeviceConfig, "cudnn_benchmark"),
    from_field(StreamDefaults, "input_size", name="input_width", index=0, description="Student input width"),
    from_field(StreamDefaults, "input_size", name="input_height", index=1, description="Student input height"),
    Param("overlay_alpha", 0.5, "Opacity of the colour mask in the overlay image (0..1)", dynamic=True),
    Param("publish_mask_color", True, "Publish the colourised mask (rgb8)"),
    Param("publish_overlay", True, "Publish the image blended with the mask (rgb8)"),
    Param("annotate_overlay", True, "Draw model version, inference rate and latency into the overlay (status in RViz)",
          dynamic=True),
    Param("image_qos_reliability", "best_effort", "Camera image QoS reliability (sensor data: best_effort)",
          choices=RELIABILITIES),
    Param("image_qos_depth", 1, "Camera image queue depth (1 = always the newest frame: inference never queues up)"),
    Param("output_qos_reliability", "reliable", "QoS reliability of labels/mask/overlay (RViz defaults to reliable)",
          choices=RELIABILITIES),
    Param("output_qos_depth", 2, "Queue depth of labels/mask/overlay (a reliable subscriber that falls further "
                                 "behind than this loses the oldest maps)"),
    Param("status_period_s", 1.0, "Seconds between EdgeStatus and diagnostics messages"),
    Param("torch_threads", 0, "Torch intra-op threads for inference (0 = every core but one, which is left to "
                              "the batch encoder, the patcher and DDS; OMP_NUM_THREADS, when set, decides instead)"),
)


class StudentSegmenter(Node):
    """Builds the student from its parameters (into ``state.model``) and segments every frame."""

    def __init__(self, state: EdgeState, **kwargs: Any) -> None:
        super().__init__("student_segmenter", **kwargs)
        self.p = NodeParameters(self, PARAMS, on_change=self._check_change)
        self._reject = RejectLog(self, counter=state.counters.rejections, hardware_id=self.p["device_id"])
        device = resolve_device(self.p["device"])  # DeviceError (start-up failure) naming what torch sees
        configure_cudnn(device, bool(self.p["cudnn_benchmark"]))
        threads = set_torch_threads(int(self.p["torch_threads"]), reserve=1)
        model = EdgeModel.build(student_spec(self.p), (int(self.p["input_width"]), int(self.p["input_height"])),
                                device, channels_last=bool(self.p["channels_last"]),
                                backend=self.p["inference_backend"], dtype=self.p["inference_dtype"], threads=threads)
        agree = model.agreement
        self.get_logger().info(
            f"inference in {model.backend} (inference_backend {self.p['inference_backend']}) on {describe(device)} in "
            f"{self.p['inference_dtype']}" + (f", {threads} thread(s)" if device.type == "cpu" else "")
            + (f"; probe frame: {agree.labels_equal:.4%} of labels as PyTorch's, max |logit difference| "
               f"{agree.max_abs_logit_diff:.2g}" if agree is not None else ""))
        self.inference = EdgeInference(model.label_space, model.input_size, device, self.p["inference_dtype"],
                                       channels_last=bool(self.p["channels_last"]))
        state.model = model
        self.state = state
        self.model = model
        self.watch = SwapWatch(SwapWatchConfig(**{n: self.p[n] for n in SWAP_WATCH_KNOBS}))
        self.counters = state.counters
        self.patch_stats = state.patch_stats
        out_qos = qos(self.p["output_qos_reliability"], int(self.p["output_qos_depth"]))
        self.labels_pub = self.create_publisher(Image, topics.LABELS, out_qos)
        self.mask_pub = self.create_publisher(Image, topics.MASK_COLOR, out_qos) if self.p["publish_mask_color"] else None
        self.overlay_pub = self.create_publisher(Image, topics.OVERLAY, out_qos) if self.p["publish_overlay"] else None
        self.info_pub = self.create_publisher(LabelInfo, topics.LABEL_INFO, qos("reliable", 1, transient_local=True))
        self.status_pub = self.create_publisher(EdgeStatus, topics.EDGE_STATUS, qos("reliable", 10))
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos("reliable", 10))
        self.create_subscription(
            Image, self.p["image_topic"], self._reject.guard("image", self._on_image_counted),
            qos(self.p["image_qos_reliability"], int(self.p["image_qos_depth"])),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_timer(float(self.p["status_period_s"]), self._reject.guard("status tick", self._publish_status),
                          callback_group=MutuallyExclusiveCallbackGroup())
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=200)
        self._window_lat: list[float] = []
        self._window_count = 0
        self._window_t0 = time.monotonic()
        self._window_gap = 0.0
        self._source_gaps = GapTracker()  # the gap beyond the source's own stamps (issue #13)
        self._window_wait = 0.0
        self._last_done: float | None = None
        self.frames_segmented = 0
        self.frames_rejected = 0
        self._info_version = -1
        self._steps_back_reported = 0
        self._last_rate = 0.0
        self._last_latency = 0.0
        self._publish_label_info()
        self.get_logger().info(
            f"segmenting '{self.resolve_topic_name(self.p['image_topic'])}' with {model.student} "
            f"({len(model.label_space.class_names)} classes, input {model.input_size[0]}x{model.input_size[1]}, "
            f"{describe(device)})"
        )

    @staticmethod
    def _check_change(changes: dict[str, Any]) -> None:
        """Run-time changes are read per frame; only their values need checking."""
        alpha = changes.get("overlay_alpha")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay_alpha must lie in [0, 1], got {alpha}")

    def _on_image_counted(self, msg: Image) -> None:
        """Any failure past conversion (a frame inference cannot take) counts as a rejected frame."""
        try:
            self._on_image(msg)
        except Exception:
            self.frames_rejected += 1
            raise

    def _on_image(self, msg: Image) -> None:
        t0 = time.perf_counter()
        try:
            rgb = to_rgb(msg)
        except ImageConversionError as exc:
            self.frames_rejected += 1
            self._reject("image", str(exc))
            return
        except Exception as exc:  # cv_bridge or a driver's odd message: one bad frame never stops inference
            self.frames_rejected += 1
            self._reject("image", f"{type(exc).__name__}: {exc}")
            return
        t_ask = time.perf_counter()
        # lazy outputs (as image_pipeline): a mask or overlay nobody subscribes to is never computed
        want_mask = self.mask_pub is not None and self.mask_pub.get_subscription_count() > 0
        want_overlay = self.overlay_pub is not None and self.overlay_pub.get_subscription_count() > 0
        with self.model.holder.use_versioned() as (net, version):  # a swap never blocks this, nor writes into net
            t_run = time.perf_counter()
            wait = (t_run - t_ask) * 1000.0
            labels, color, blended = self.inference.run(net, rgb, mask=want_mask, overlay=want_overlay,
                                                        alpha=float(self.p["overlay_alpha"]))
            infer_ms = (time.perf_counter() - t_run) * 1000.0
        self._check_new_model(version, labels, infer_ms, rgb)
        header = msg.header
        self.labels_pub.publish(numpy_to_imgmsg(labels, "mono8", header))
        if color is not None:
            self.mask_pub.publish(numpy_to_imgmsg(color, "rgb8", header))
        if blended is not None:
            if self.p["annotate_overlay"]:
                self._annotate(blended)
            self.overlay_pub.publish(numpy_to_imgmsg(blended, "rgb8", header))
        done = time.perf_counter()
        dt = (done - t0) * 1000.0
        with self._lock:
            if self._last_done is not None:
                self._window_gap = max(self._window_gap, (done - self._last_done) * 1000.0)
            self._last_done = done
            self._source_gaps.observe(stamp_to_sec(header.stamp), done)
            self.frames_segmented += 1
            self._window_count += 1
            self._window_lat.append(dt)
            self._window_wait = max(self._window_wait, wait)

    def _check_new_model(self, version: int, labels: np.ndarray, infer_ms: float, rgb: np.ndarray) -> None:
        """(issue #29) After a swap, the new model's first frames are checked (:mod:`ams_ros.core.edge.swap_watch`);
        on a failure the previous weights are swapped back in at once (this frame was published
        with the new model's labels; the next one has the previous model's). A suspected collapse
        is confirmed by the previous weights on the same frame (one more inference, on such frames only)."""
        def previous_labels() -> np.ndarray | None:
            with self.model.holder.use_previous() as prev:
                return None if prev is None else self.inference.run(prev, rgb)[0]

        reason = self.watch.observe(version, labels, infer_ms, previous_labels)
        receiver = self.state.receiver
        if not reason or receiver is None:
            return
        running = receiver.step_back(version, reason)
        if running is None:  # the patcher is writing a newer update, which will be checked in turn
            return
        self.watch.stepped_back(running)
        self.patch_stats.steps_back += 1
        self.patch_stats.last_step_back = f"stepped back from v{version} to v{running}: {reason}"
        self.get_logger().warning(f"{self.patch_stats.last_step_back}; v{version} and older are refused from now on")

    def _annotate(self, image: np.ndarray) -> None:
        text = f"v{self.model.holder.version}  {self._last_rate:.1f} fps  {self._last_latency:.0f} ms"
        scale = max(0.3, image.shape[0] / 600)
        cv2.putText(image, text, (4, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)

    def _publish_label_info(self) -> None:
        space = self.model.label_space
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.label_space = space.name
        msg.class_names = list(space.class_names)
        msg.colors = np.asarray(space.colors, dtype=np.uint8).reshape(-1).tobytes()
        msg.ignore_index = int(space.ignore_index)
        msg.model_version = int(self.model.holder.version)
        self._info_version = msg.model_version
        self.info_pub.publish(msg)

    def _publish_status(self) -> None:
        with self._lock:
            lat, count, gap, wait = self._window_lat, self._window_count, self._window_gap, self._window_wait
            self._window_lat, self._window_count, self._window_gap, self._window_wait = [], 0, 0.0, 0.0
            source_gap = self._source_gaps.take()
            segmented = self.frames_segmented
        now = time.monotonic()
        span, self._window_t0 = now - self._window_t0, now
        c = self.counters
        with c.lock:
            received, sampled, sent, recv = c.frames_received, c.frames_sampled, c.bytes_sent, c.bytes_received
            source_skipped = c.source_frames_skipped
            rate, period = c.sampling_rate, c.update_period
        holder = self.model.holder
        msg = EdgeStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.device_id = self.p["device_id"]
        msg.model_version = int(holder.version)
        msg.model_fingerprint = fingerprint(holder.active)
        msg.inference_backend = self.model.backend
        msg.inference_probe_agreement = float(self.model.agreement.labels_equal) if self.model.agreement else 1.0
        msg.inference_rate = float(count / span) if span > 0 else 0.0
        msg.inference_latency_ms = float(np.mean(lat)) if lat else 0.0
        msg.inference_latency_max_ms = float(np.max(lat)) if lat else 0.0
        msg.inference_gap_max_ms = float(gap)
        msg.inference_gap_over_source_max_ms = float(source_gap)
        msg.inference_wait_max_ms = float(wait)
        msg.frames_received = received
        msg.frames_segmented = segmented
        msg.frames_dropped = max(0, received - segmented - self.frames_rejected)
        msg.frames_sampled = sampled
        msg.source_frames_skipped = source_skipped
        msg.bytes_sent = sent
        msg.bytes_received = recv
        if self.patch_stats is not None:
            msg.updates_applied = self.patch_stats.applied
            msg.updates_rejected = self.patch_stats.rejected
            msg.last_rejection = self.patch_stats.last_rejection
            msg.updates_held = self.patch_stats.held
            msg.steps_back = self.patch_stats.steps_back
            msg.last_step_back = self.patch_stats.last_step_back
        msg.model_frozen = bool(self.state.receiver is not None and self.state.receiver.frozen)
        msg.sampling_rate = float(rate)
        msg.update_period = float(period)
        msg.inputs_rejected, msg.last_input_rejection = c.rejections.read()
        self.status_pub.publish(msg)
        self._last_rate, self._last_latency = msg.inference_rate, msg.inference_latency_ms
        if msg.model_version != self._info_version:
            self._publish_label_info()
        self._publish_diagnostics(msg)

    def _publish_diagnostics(self, s: EdgeStatus) -> None:
        st = DiagnosticStatus()
        st.name = f"ams_ros/{s.device_id}/student_segmenter"
        st.hardware_id = s.device_id
        st.level = DiagnosticStatus.OK if s.inference_rate > 0 else DiagnosticStatus.WARN
        st.message = f"model v{s.model_version}, {s.inference_rate:.1f} frames/s" if s.inference_rate > 0 else "no frames"
        if s.steps_back > self._steps_back_reported:  # (issue #29) a swap undone in this period
            st.level = DiagnosticStatus.WARN
            st.message += f"; {s.last_step_back}"
        self._steps_back_reported = s.steps_back
        if s.model_frozen:
            st.message += "; model frozen (freeze_model)"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("model_version", s.model_version), ("inference_backend", s.inference_backend),
            ("inference_latency_ms", f"{s.inference_latency_ms:.1f}"),
            ("frames_dropped", s.frames_dropped),
            ("source_frames_skipped", s.source_frames_skipped), ("updates_applied", s.updates_applied),
            ("updates_rejected", s.updates_rejected), ("updates_held", s.updates_held),
            ("model_frozen", s.model_frozen), ("steps_back", s.steps_back), ("last_step_back", s.last_step_back), ("sampling_rate", f"{s.sampling_rate:.2f}"),
            ("inputs_rejected", s.inputs_rejected), ("last_input_rejection", s.last_input_rejection),
        )]
        arr = DiagnosticArray()
        arr.header.stamp = s.header.stamp
        arr.status = [st]
        self.diag_pub.publish(arr)
