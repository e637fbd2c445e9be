"""OpenVINO's float32 against its bfloat16 on this CPU (issue #30): bare labels time and label agreement.

The robot runs OpenVINO in float32 (``INFERENCE_PRECISION_HINT f32``, ams_ros/core/edge/runtimes.py);
on a CPU with AVX512_BF16 or AMX, bfloat16 is OpenVINO's default and far faster. This measures what
offering it would buy and cost, on real frames and on the start-up probe (docs/results.md, issue #30):

    python tools/openvino_precision.py --threads 1 \\
      --student-weights tflite:../shared/assets/models/student/deeplabv3_mnv2_pascal_quant.tflite \\
      --classes 21 --source ../shared/assets/video/camvid-0016E5
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="frames to time and compare on (ams-eval's source specs)")
    p.add_argument("--student", default="deeplabv3_mobilenet_v2")
    p.add_argument("--student-weights", required=True)
    p.add_argument("--classes", type=int, required=True, help="the student's class count (21 for VOC)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=12)
    args = p.parse_args()

    import openvino as ov

    from ams_ros.core.edge.runtimes import OpenVinoRunner, OpenVinoRuntime, check_agreement, probe_frame
    from ams_ros.core.models.weights import load_student
    from ams_ros.core.sources.frame_sources import open_source

    size = (args.width, args.height)
    model = load_student(args.student, args.classes, args.student_weights).eval()
    graph = OpenVinoRuntime(size, args.threads, None).graph(model)
    core = ov.Core()
    runners = {hint: OpenVinoRunner(core, core.read_model(graph), {
        "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
        for hint in ("f32", "bf16")}
    frames = []
    for item in open_source(args.source, size=size):
        frames.append(np.ascontiguousarray(item[1] if isinstance(item, tuple) else item.frame))
        if len(frames) >= args.frames:
            break
    print(f"CPU capabilities (OpenVINO): {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    for hint, runner in runners.items():
        for f in frames[:3]:
            runner.labels(f)
        times = []
        for _ in range(2):
            for f in frames:
                t0 = time.perf_counter()
                runner.labels(f)
                times.append(time.perf_counter() - t0)
        print(f"{hint}: median {1000 * np.median(times):.1f} ms per frame at {size[0]}x{size[1]}, {args.threads} thread(s)")
    equal = np.mean([np.mean(runners["f32"].labels(f) == runners["bf16"].labels(f)) for f in frames])
    print(f"bf16 labels equal to f32's on {len(frames)} frames: {100 * equal:.2f} %")
    try:
        a = check_agreement(model, runners["bf16"], probe_frame(size), "openvino bf16")
        print(f"start-up probe: {100 * a.labels_equal:.2f} % of labels equal to PyTorch's")
    except Exception as exc:  # the probe's refusal, with its figures
        print(f"start-up probe: {exc}")


if __name__ == "__main__":
    main()
