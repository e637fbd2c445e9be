#!/usr/bin/env bash
# GPU check of issue #14, for a machine with a CUDA build of PyTorch, Python 3.12, no ROS and no
# network: ams-bench on the GPU, then `ams-eval --preset paper` on camvid-0016E5 with the none,
# one_time and ams schemes (training time as measured on that GPU, no speed-up factor), all inside
# 8 minutes (each step has a timeout), and the robot's inference runtimes (issue #30: CUDA eager,
# TensorRT when importable). Writes JSON under out/gpu_check/:
#   gpu_check.json   what ran, exit codes, seconds, what torch saw, nvidia-smi
#   bench/bench.json ams-bench (devices.<dev>.precisions.{float32,bfloat16,float16})
#   eval/results.json, eval/results.md   ams-eval
#
# Usage, from the repository root:   tools/gpu_check.sh
# The core has no ROS import, so only the Python packages of requirements/ are needed (torch with
# CUDA, torchvision, numpy, opencv-python-headless, tqdm, ...), plus PyAV (H.264 batches) and
# ai-edge-litert (the TFLite teacher and student). Where those two are missing and there is no
# network, carry them as wheels in ./wheels (or $WHEELS). On a networked machine:
#   pip download av==18.1.0 ai-edge-litert==2.3.0 --python-version 3.12 --only-binary=:all: -d wheels/
# (add --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 when that machine is not
# x86-64 Linux). They are installed with --no-index into out/gpu_check/site (nothing system-wide).
#
# Environment: GPU_CHECK_DEVICE (default cuda; cpu runs the same steps on the CPU),
# GPU_CHECK_QUICK=1 (tiny settings: a smoke test of the script itself, e.g. on a laptop),
# AMS_ASSETS (default ../shared/assets), GPU_CHECK_STUDENT (default: out/eval/pretrained_not_camvid-0016E5.pt
# when present, else the TFLite DeepLabV3 student), GPU_CHECK_TEACHER (bench teacher spec; default a
# random-init torchvision deeplabv3_mobilenet_v3_large, timing only), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
A=${AMS_ASSETS:-../shared/assets}
WHEELS=${WHEELS:-wheels}
OUT=${GPU_CHECK_OUT:-out/gpu_check}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-300}
INFERENCE_TIMEOUT=${INFERENCE_TIMEOUT:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }

# ---- 1. PyAV and ai-edge-litert from carried wheels, when they are not importable
if ! "$PY" -c "import av, ai_edge_litert" 2>/dev/null; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    log "installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS into $OUT/site (no network)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/site" \
      "$WHEELS"/*.whl || { log "pip could not install the wheels in $WHEELS"; exit 2; }
    export PYTHONPATH="$PWD/$OUT/site:$PYTHONPATH"
  fi
  "$PY" -c "import av, ai_edge_litert" || {
    log "PyAV and ai-edge-litert are needed; on a networked machine run: pip download av==18.1.0" \
        "ai-edge-litert==2.3.0 --python-version 3.12 --only-binary=:all: -d wheels/ and carry wheels/ here"; exit 2; }
fi

# ---- 2. what torch sees (a CUDA device must be there when one is asked for)
"$PY" - "$DEVICE" > "$OUT/torch.json" <<'EOF' || { cat "$OUT/torch.json"; log "device check failed"; exit 2; }
import json, sys
import torch
from ams_ros.core.common.devices import describe, resolve_device, torch_sees
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "torch_sees": torch_sees(), "asked": sys.argv[1]}
try:
    info["device"] = describe(resolve_device(sys.argv[1]))
except ValueError as exc:
    info["error"] = str(exc)
print(json.dumps(info, indent=2))
sys.exit(1 if "error" in info else 0)
EOF
cat "$OUT/torch.json"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  > "$OUT/nvidia_smi.txt" 2>&1

# ---- 3. ams-bench on the device (the CPU part at K=5; the device phase at the paper's K=20)
if [ "$QUICK" = 1 ]; then
  BENCH_ARGS=(--repeat 1 --iterations 1 --phase-steps 1 --update-width 64 --update-height 32
              --teacher-width 64 --teacher-height 64 --precisions float32,bfloat16)
else
  BENCH_ARGS=(--repeat 20 --iterations 5 --phase-steps 20 --channels-last --cudnn-benchmark)
fi
[ -n "${GPU_CHECK_TEACHER:-}" ] && BENCH_ARGS+=(--teacher "$GPU_CHECK_TEACHER")
log "ams-bench --device $DEVICE ${BENCH_ARGS[*]} (timeout ${BENCH_TIMEOUT}s)"
t=$(date +%s)
timeout "$BENCH_TIMEOUT" "$PY" -m ams_ros.bench.cli --device "$DEVICE" --out "$OUT/bench" "${BENCH_ARGS[@]}" \
  > "$OUT/bench.log" 2>&1
BENCH_RC=$?; BENCH_S=$(( $(date +%s) - t ))
grep '^\[bench\]' "$OUT/bench.log" || tail -20 "$OUT/bench.log"
log "bench exit $BENCH_RC after ${BENCH_S}s"

# ---- 3b. the robot's inference runtimes (issue #30): CUDA eager against TensorRT (built refittable,
# refitted per update) when tensorrt is importable; bare and pipeline time at 512x256, engine build
# time, update arrival to running, labels against PyTorch's. Without ROS here: the core pipeline.
INF_ARGS=(--only inference --device "$DEVICE" --out "$OUT/inference" --repeat 20 --inference-updates 5)
[ "$QUICK" = 1 ] && INF_ARGS=(--only inference --device "$DEVICE" --out "$OUT/inference" --repeat 2
                              --inference-updates 1 --inference-width 64 --inference-height 32)
"$PY" -c "import tensorrt" 2>/dev/null || log "tensorrt is not importable here: only $DEVICE eager is timed" \
  "(pip install tensorrt where CUDA is; on a Jetson it comes with JetPack)"
log "ams-bench ${INF_ARGS[*]} (timeout ${INFERENCE_TIMEOUT}s)"
t=$(date +%s)
AMS_ROS_CACHE="$OUT/cache" timeout "$INFERENCE_TIMEOUT" "$PY" -m ams_ros.bench.cli "${INF_ARGS[@]}" > "$OUT/inference.log" 2>&1
INF_RC=$?; INF_S=$(( $(date +%s) - t ))
grep '^\[bench\]' "$OUT/inference.log" || tail -20 "$OUT/inference.log"
log "inference bench exit $INF_RC after ${INF_S}s"

# ---- 4. ams-eval --preset paper on camvid-0016E5: none, one_time, ams
SRC=$A/video/camvid-0016E5
TEACHER=tflite:$A/models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite
STUDENT=${GPU_CHECK_STUDENT:-}
if [ -z "$STUDENT" ]; then
  if [ -f out/eval/pretrained_not_camvid-0016E5.pt ]; then STUDENT=out/eval/pretrained_not_camvid-0016E5.pt
  else STUDENT=tflite:$A/models/student/deeplabv3_mnv2_pascal_quant.tflite; fi
fi
EVAL_ARGS=(--source "$SRC" --teacher "$TEACHER" --student-weights "$STUDENT" --preset paper
           --schemes none,one_time,ams --device "$DEVICE" --threads 0 --quiet --no-plots
           --cache "$OUT/cache" --out "$OUT/eval")
[ "$QUICK" = 1 ] && EVAL_ARGS+=(--max-seconds 24 --set width=128 --set height=64 --set iterations=2 --set batch_size=2 --set update_period_s=4)
EVAL_RC=2; EVAL_S=0
if [ -d "$SRC" ] && [ -f "${TEACHER#tflite:}" ]; then
  log "ams-eval run ${EVAL_ARGS[*]} (timeout ${EVAL_TIMEOUT}s)"
  t=$(date +%s)
  timeout "$EVAL_TIMEOUT" "$PY" -m ams_ros.eval.cli run "${EVAL_ARGS[@]}" > "$OUT/eval.log" 2>&1
  EVAL_RC=$?; EVAL_S=$(( $(date +%s) - t ))
  tail -25 "$OUT/eval.log"
  log "eval exit $EVAL_RC after ${EVAL_S}s"
else
  log "assets missing ($SRC, ${TEACHER#tflite:}): set AMS_ASSETS; eval skipped"
fi

# ---- 5. summary
"$PY" - "$OUT" "$DEVICE" "$QUICK" "$BENCH_RC" "$BENCH_S" "$EVAL_RC" "$EVAL_S" "$STUDENT" "$INF_RC" "$INF_S" <<'EOF'
import json, sys
from pathlib import Path
out, device, quick, brc, bs, erc, es, student, irc, ins = sys.argv[1:]
out = Path(out)
summary = {"device": device, "quick": quick == "1", "torch": json.loads((out / "torch.json").read_text()),
           "nvidia_smi": (out / "nvidia_smi.txt").read_text().strip() if (out / "nvidia_smi.txt").exists() else None,
           "bench": {"exit_code": int(brc), "seconds": int(bs)}, "eval": {"exit_code": int(erc), "seconds": int(es),
           "student_weights": student}}
bench = out / "bench" / "bench.json"
if bench.exists():
    b = json.loads(bench.read_text())
    summary["bench"]["devices"] = b.get("devices")
    summary["bench"]["segmenter_pipeline_256x128"] = b.get("segmenter_pipeline_256x128")
inference = out / "inference" / "bench.json"
summary["inference"] = {"exit_code": int(irc), "seconds": int(ins),
                        **(json.loads(inference.read_text()).get("inference", {}) if inference.exists() else {})}
res = out / "eval" / "results.json"
if res.exists():
    r = json.loads(res.read_text())
    summary["eval"].update({k: r.get(k) for k in ("wall_seconds", "stream_seconds", "frames_evaluated", "partial")})
    summary["eval"]["machine"] = r.get("machine")
    keys = ("miou_teacher", "miou_gt", "updates", "uplink_kbps", "downlink_kbps", "mean_update_delay_s",
            "train_wall_s", "wall_s", "frames", "frames_total", "partial")
    summary["eval"]["schemes"] = {k: {m: v.get(m) for m in keys} for k, v in (r.get("schemes") or {}).items()}
    stream = r.get("stream_seconds") or 0.0
    summary["eval"]["faster_than_real_time"] = {k: (v.get("wall_s") or 1e9) < stream for k, v in (r.get("schemes") or {}).items()}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
log "wrote $OUT/gpu_check.json"
[ "$BENCH_RC" = 0 ] && [ "$EVAL_RC" = 0 ]
