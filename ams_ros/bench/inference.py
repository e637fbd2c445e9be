"""``ams-bench --only inference``: the robot's student in each inference runtime (issue #30).

Per runtime installed for the device (eager PyTorch, ONNX Runtime, OpenVINO on a CPU; PyTorch and
TensorRT on CUDA) and per thread count:

- ``bare_ms``: the runner alone (median after warm-up): PyTorch and TensorRT on a 1 x 3 x H x W
  float tensor (logits); ONNX Runtime and OpenVINO on the uint8 frame, whose graph gives the label
  map (the conversion and the argmax are part of their graph);
- ``in_node_ms``: the student_segmenter node's own image callback on a ``sensor_msgs/Image``
  (conversion, inference, label map, publish of the labels to a subscriber; lazily no mask or
  overlay, as in a robot where nothing subscribes to them), called directly on a node built from
  parameters exactly as ``ros2 launch`` builds it; ``in_node_fps`` is its inverse;
- ``update_to_running_ms``: from a ``ModelUpdate`` message handed to the model_patcher node's
  callback until the new weights run in that runtime (verify, write, rebuild or refit, swap), for
  updates of 5 % of the parameters (AMS's gamma); and while those updates run, inference in a second
  thread, its longest gap between two label maps (``max_gap_during_updates_ms``) against its median
  frame time;
- ``labels_equal``: the share of pixels whose label equals PyTorch's over frames of ``--inference-source``
  (the start-up probe's check, here on real frames).

ROS is imported only when these figures run (rclpy in this process, DDS on loopback, a private
domain); where it is not installed (tools/gpu_check.sh's machine), the same work is timed through the
core alone (``pipeline_without_ros_ms``: the segmenter's pipeline and the double buffer's updates, no
message conversion or publish). Figures depend on the machine and its load; targets (issue #30) are reported, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import statistics
import threading
import time
from typing import Any

import numpy as np
import torch

from ams_ros.bench.common import log, median_ms
from ams_ros.core.common.devices import resolve_device
from ams_ros.core.common.threads import usable_cores
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.inference import EdgeInference, place_model
from ams_ros.core.edge.runtimes import (ONNXRUNTIME, OPENVINO, TENSORRT, TORCH, FrameRunner, agreement_needed,
                                        build_runtime, check_agreement, installed, probe_frame, resolve_runtime,
                                        runs_in)
from ams_ros.core.models.weights import StudentSpec
from ams_ros.core.models.params import flatten_params
from ams_ros.core.sources.frame_sources import open_source
from ams_ros.core.wire.encodings import encode_update
from ams_ros.nodes.common.local_dds import private_domain_id, use_loopback


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inference-backends", default="",
                   help="runtimes of the 'inference' figures (comma list; default: every one installed for --device)")
    p.add_argument("--inference-threads", default="",
                   help="thread counts of the 'inference' figures on a CPU (comma list; default 1,2 capped at the cores)")
    p.add_argument("--inference-width", type=int, default=512, help="student input width of the 'inference' figures")
    p.add_argument("--inference-height", type=int, default=256, help="student input height of the 'inference' figures")
    p.add_argument("--inference-student-weights", default="",
                   help="student weights (checkpoint or tflite:PATH; default random: timing does not depend on them)")
    p.add_argument("--inference-label-space", default="voc", help="label space of the student (voc: 21 classes)")
    p.add_argument("--inference-source", default="synthetic:0",
                   help="frames for the agreement with PyTorch (synthetic:N, a video or an image folder)")
    p.add_argument("--inference-updates", type=int, default=5, help="updates timed per runtime")
    p.add_argument("--inference-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the robot's inference_dtype in the 'inference' figures (bfloat16: OpenVINO's, PyTorch's "
                        "autocast; the other runtimes are skipped)")


def backends_for(device: torch.device, asked: str, dtype: str = "float32") -> list[str]:
    if asked:
        return [b.strip() for b in asked.split(",") if b.strip()]
    order = (TORCH, TENSORRT) if device.type == "cuda" else (TORCH, ONNXRUNTIME, OPENVINO)
    return [b for b in order if installed(b) and runs_in(b, dtype)]


def thread_counts(device: torch.device, asked: str) -> list[int]:
    if device.type == "cuda":
        return [0]
    if asked:
        return [int(t) for t in asked.split(",") if t.strip()]
    return sorted({1, min(2, usable_cores())})


def encoded_updates(model: torch.nn.Module, count: int, first_version: int) -> list:
    """``count`` chained updates of 5 % of the parameters (small changes, as a training phase makes)."""
    rng = np.random.default_rng(0)
    twin = copy.deepcopy(model).cpu()  # the layout and the base values (``model`` stays where it is)
    flat = flatten_params(twin).numpy().copy()
    out = []
    for i in range(count):
        idx = np.sort(rng.choice(flat.size, flat.size // 20, replace=False))
        flat[idx] += rng.normal(0, 1e-3, idx.size).astype(np.float32)
        out.append(encode_update(twin, idx, flat[idx].copy(), first_version + i, first_version + i + 1,
                                 "paper_gzip_fp16"))
    return out


class NodeEdge:
    """The segmenter and patcher nodes of one robot process, built from parameters in this process as
    ``ros2 launch`` builds them; frames and updates go through their callbacks as ROS messages."""

    in_node = True

    def __init__(self, context: Any, backend: str, threads: int, args: argparse.Namespace, device: torch.device,
                 frames: list[np.ndarray]) -> None:
        import rclpy
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import Image

        from ams_ros.nodes.common.conversions import numpy_to_imgmsg, update_to_msg
        from ams_ros.nodes.common.qos import qos
        from ams_ros.nodes.edge.model_patcher import ModelPatcher
        from ams_ros.nodes.edge.state import EdgeState
        from ams_ros.nodes.edge.student_segmenter import StudentSegmenter

        params = {"device_id": "bench", "student_weights": args.inference_student_weights,
                  "label_space": args.inference_label_space, "input_width": args.inference_width,
                  "input_height": args.inference_height, "inference_backend": backend, "torch_threads": threads,
                  "device": str(device), "status_period_s": 3600.0, "inference_dtype": args.inference_dtype}
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.state = EdgeState()
        self.segmenter = StudentSegmenter(self.state, context=context, parameter_overrides=overrides)
        self.patcher = ModelPatcher(self.state, context=context, parameter_overrides=[
            o for o in overrides if o.name in ("device_id", "device")])
        self.listener = rclpy.create_node("bench_listener", context=context)
        self.listener.create_subscription(Image, "labels_bench", lambda _m: None, qos("reliable", 10))
        self.segmenter.labels_pub = self.segmenter.create_publisher(Image, "labels_bench", qos("reliable", 10))
        self.backend = self.segmenter.model.backend
        self.inference = self.segmenter.inference
        self.frames = []
        for i, f in enumerate(frames):
            msg = numpy_to_imgmsg(f, "rgb8")
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(i * 33_000_000, 1_000_000_000)
            self.frames.append(msg)
        self.updates = [update_to_msg(u, "bench") for u in encoded_updates(self.holder.active, args.inference_updates,
                                                                         self.holder.version)]

    @property
    def holder(self):
        return self.state.require_model("bench").holder

    def segment(self, i: int) -> None:
        self.segmenter._on_image(self.frames[i % len(self.frames)])

    def apply(self, i: int) -> None:
        self.patcher._on_update(self.updates[i])

    def rejection(self) -> str:
        return self.state.patch_stats.last_rejection

    def destroy(self) -> None:
        for node in (self.listener, self.patcher, self.segmenter):
            node.destroy_node()


class CoreEdge:
    """The same work without ROS (a machine without it, e.g. tools/gpu_check.sh's): the double buffer
    with the runtime, and the segmenter's pipeline (:class:`~ams_ros.core.edge.inference.EdgeInference`)."""

    in_node = False

    def __init__(self, backend: str, threads: int, args: argparse.Namespace, device: torch.device,
                 frames: list[np.ndarray]) -> None:
        size = (args.inference_width, args.inference_height)
        dtype = args.inference_dtype
        self.backend = resolve_runtime(backend, device, dtype)
        spec = StudentSpec(weights=args.inference_student_weights, label_space=args.inference_label_space)
        model = place_model(spec.load(), device)
        self.holder = DoubleBufferedModel(model, runtime=build_runtime(self.backend, size, threads, device, dtype=dtype))
        if self.backend != TORCH:
            check_agreement(self.holder.active, self.holder.runner, probe_frame(size), self.backend,
                            agreement_needed(self.backend, dtype))
        self.inference = EdgeInference(spec.space(), size, device, dtype=dtype)
        self.frames = frames
        self.updates = encoded_updates(self.holder.active, args.inference_updates, self.holder.version)
        self._error = ""

    def segment(self, i: int) -> None:
        with self.holder.use() as runner:
            self.inference.run(runner, self.frames[i % len(self.frames)])

    def apply(self, i: int) -> None:
        try:
            self.holder.apply_update(self.updates[i])
        except ValueError as exc:
            self._error = str(exc)

    def rejection(self) -> str:
        return self._error

    def destroy(self) -> None:
        pass


def timed_updates(edge, count: int) -> dict:
    """Updates applied while a second thread segments frames nonstop: arrival to running, and the
    longest gap between two label maps while they happen."""
    holder = edge.holder
    done: list[float] = []
    stop = threading.Event()

    def infer() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            edge.segment(i)
            if holder.device.type == "cuda":
                torch.cuda.synchronize(holder.device)
            done.append(time.perf_counter())

    def frames_after(n: int) -> None:  # let inference run n more frames (a steady rate around each update)
        goal = len(done) + n
        deadline = time.monotonic() + 30.0
        while len(done) < goal and time.monotonic() < deadline:
            time.sleep(0.002)

    worker = threading.Thread(target=infer, daemon=True)
    worker.start()
    frames_after(5)
    times, windows = [], []
    for i in range(count):
        before = holder.version
        t0 = time.perf_counter()
        edge.apply(i)
        t1 = time.perf_counter()
        if holder.version != before + 1:
            raise RuntimeError(f"update {i} was not applied: {edge.rejection()}")
        times.append((t1 - t0) * 1000.0)
        windows.append((t0, t1))
        frames_after(5)
    stop.set()
    worker.join(30.0)
    gaps = np.diff(np.asarray(done)) * 1000.0
    ends = np.asarray(done[1:])
    during = [g for g, e in zip(gaps, ends) if any(a <= e <= b + g / 1000.0 for a, b in windows)]
    return {"update_to_running_ms": round(statistics.median(times), 1), "update_to_running_max_ms": round(max(times), 1),
            "frame_ms_median_while_updating": round(float(np.median(gaps)), 1) if gaps.size else None,
            "max_gap_during_updates_ms": round(float(max(during)), 1) if during else None,
            "updates": len(times)}


def agreement_on_frames(edge, frames: list[np.ndarray]) -> float:
    """Share of pixels whose label the runtime gives as eager PyTorch gives it from the same weights."""
    inf = edge.inference
    equal = total = 0
    with edge.holder.use() as runner:
        eager = edge.holder.active
        for f in frames:
            got, ref = inf.to_host(inf.labels(runner, f)), inf.to_host(inf.labels(eager, f))
            equal += int((got == ref).sum())
            total += got.size
    return equal / total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(context: Any, backend: str, threads: int, args: argparse.Namespace, device: torch.device,
            frames: list[np.ndarray]) -> dict:
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    edge = NodeEdge(context, backend, threads, args, device, frames) if context is not None else \
        CoreEdge(backend, threads, args, device, frames)
    start_s = time.perf_counter() - t0
    try:
        x = torch.rand(1, 3, args.inference_height, args.inference_width, device=device)
        with edge.holder.use() as runner, torch.no_grad():
            if isinstance(runner, FrameRunner):  # its graph takes the frame and gives the labels
                bare = median_ms(lambda: runner.labels(frames[0]), repeat=args.repeat)
            else:
                bare = median_ms(lambda: (runner(x), _sync(device)), repeat=args.repeat)
        frame_ids = itertools.count()
        pipeline = median_ms(lambda: (edge.segment(next(frame_ids)), _sync(device)), repeat=args.repeat)
        agree = agreement_on_frames(edge, frames)
        updates = timed_updates(edge, args.inference_updates)
        where = "in_node" if edge.in_node else "pipeline_without_ros"
        out = {"backend": edge.backend, "dtype": args.inference_dtype, "threads": threads or None,
               "start_s": round(start_s, 2),
               "bare_ms": round(bare, 2), f"{where}_ms": round(pipeline, 2), f"{where}_fps": round(1000.0 / pipeline, 1),
               f"{where}_over_bare": round(pipeline / bare, 3), "labels_equal_to_torch": round(agree, 6), **updates}
        if hasattr(edge.holder.runtime, "build_s"):
            out["engine_build_s"] = round(edge.holder.runtime.build_s, 1)
    finally:
        edge.destroy()
    log(f"inference {backend}, {threads or 'device'} thread(s): bare {out['bare_ms']} ms, {where.replace('_', ' ')} "
        f"{pipeline:.2f} ms ({1000.0 / pipeline:.1f} fps, {pipeline / bare:.3f}x), update to running "
        f"{out['update_to_running_ms']} ms, longest frame gap during updates {out['max_gap_during_updates_ms']} ms "
        f"(median frame {out['frame_ms_median_while_updating']} ms), labels equal to PyTorch's {agree:.4%}, "
        f"start {out['start_s']} s")
    return out


def _ros_context() -> Any:
    """An initialised rclpy context with DDS on loopback, or None where ROS is not installed."""
    if importlib.util.find_spec("rclpy") is None:
        log("rclpy is not installed: the pipeline is timed without ROS (no message conversion or publish)")
        return None
    use_loopback(private_domain_id())
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    return context


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    size = (args.inference_width, args.inference_height)
    frames = [f for _, f, _ in itertools.islice(iter(open_source(args.inference_source, size)), 12)]
    context = _ros_context()
    old_threads = torch.get_num_threads()
    runs = []
    try:
        for backend, threads in itertools.product(backends_for(device, args.inference_backends, args.inference_dtype),
                                                  thread_counts(device, args.inference_threads)):
            runs.append(measure(context, backend, threads, args, device, frames))
    finally:
        torch.set_num_threads(old_threads)
        if context is not None:
            import rclpy

            rclpy.shutdown(context=context)
    where = "in_node" if context is not None else "pipeline_without_ros"
    fastest: dict = {}
    for r in runs:
        best = fastest.get(r["threads"])
        if best is None or r[f"{where}_ms"] < best[f"{where}_ms"]:
            fastest[r["threads"]] = r
    one, two = fastest.get(1), fastest.get(2)
    targets = {
        "one_core_at_least_30_fps": bool(one and one[f"{where}_fps"] >= 30.0),
        "two_cores_at_least_60_fps": bool(two and two[f"{where}_fps"] >= 60.0),
        "within_1.10x_of_bare": all(r[f"{where}_over_bare"] <= 1.10 for r in fastest.values()),
        "update_running_within_1_s": all(r["update_to_running_max_ms"] <= 1000.0 for r in runs),
        "no_gap_over_one_frame_beyond_the_median_during_updates": all(
            r["max_gap_during_updates_ms"] is not None
            and r["max_gap_during_updates_ms"] <= 2.0 * r["frame_ms_median_while_updating"] for r in runs),
        "labels_equal_to_torch_at_least_99.9%": all(r["labels_equal_to_torch"] >= 0.999 for r in runs),
    }
    return {"size": f"{args.inference_width}x{args.inference_height}", "device": str(device), "timed": where,
            "fastest": {str(k): v["backend"] for k, v in fastest.items()},
            "source": args.inference_source, "runs": runs, "targets": targets}
