#!/usr/bin/env bash
# The long-stream results of docs/results.md (issue #11), reproducibly: the six schemes of the
# paper and Just-In-Time's lr 0.001 variant on the 12-minute static-camera playlist and on the
# moving-camera playlist, every frame scored (preset cpu-paper-timing), then the warm-up skip and
# the per-frame analysis. Usage (from the repository root, after `make setup`):
#
#   tools/eval_long_streams.sh [--preset cpu-paper-timing] [static] [moving]
#
# static: intel_one, cvtraffic, ahmetozlu, the three mirrored, cvtraffic, intel_one (713 s); the
#   student is pretrained on the four development clips (out/eval/pretrained_devset.pt).
# moving: camvid-0016E5, camvid-0006R0, udacity, the three mirrored (771 s); the student is
#   pretrained on the five static-camera clips (out/eval/pretrained_static.pt).
# Each stream's schemes run as three processes side by side (one torch thread each) and are joined
# with `ams-eval merge` into out/eval/<stream>-<preset>/ (results.json, results.md, plots,
# analysis.json). About 45 min of wall time per stream on 2 cores after the teacher labels (13 min
# for the static playlist). DRY_RUN=1 prints the commands without running them. Assets come from
# $AMS_ASSETS (default ../shared/assets).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${AMS_ASSETS:-../shared/assets}
V=$A/video
PRESET=cpu-paper-timing
streams=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET=$2; shift 2 ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    static|moving) streams+=("$1"); shift ;;
    *) echo "eval_long_streams: unknown argument '$1' (streams: static, moving; --preset NAME)" >&2; exit 2 ;;
  esac
done
[ ${#streams[@]} -gt 0 ] || streams=(static moving)

T=tflite:$A/models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite
S=tflite:$A/models/student/deeplabv3_mnv2_pascal_quant.tflite
STATIC="playlist:$V/intel_one-by-one-person-detection.mp4,$V/cvtrafficcam_traffic.mp4,$V/ahmetozlu_roadside.mp4,mirror:$V/intel_one-by-one-person-detection.mp4,mirror:$V/cvtrafficcam_traffic.mp4,mirror:$V/ahmetozlu_roadside.mp4,$V/cvtrafficcam_traffic.mp4,$V/intel_one-by-one-person-detection.mp4"
MOVING="playlist:$V/camvid-0016E5,$V/camvid-0006R0,$V/udacity_solidWhiteRight.mp4,mirror:$V/camvid-0016E5,mirror:$V/camvid-0006R0,mirror:$V/udacity_solidWhiteRight.mp4"
DEVSET=("$V/camvid-0016E5" "$V/camvid-0006R0" "$V/intel_car-detection.mp4" "$V/udacity_solidWhiteRight.mp4")
STATIC_CLIPS=("$V/intel_one-by-one-person-detection.mp4" "$V/cvtrafficcam_traffic.mp4" "$V/ahmetozlu_roadside.mp4"
              "$V/bgslibrary_highway.avi" "$V/intel_car-detection.mp4")
if [ -z "${DRY_RUN:-}" ]; then
  for f in "${T#tflite:}" "${S#tflite:}"; do
    [ -f "$f" ] || { echo "eval_long_streams: $f is missing: set AMS_ASSETS to the shared assets folder" >&2; exit 2; }
  done
  set +u; source .env.sh || exit 1; set -u   # picks the distribution as make does
fi
EVAL=(python -m ams_ros.eval.cli)
run() { echo "+ $(printf '%q ' "$@")"; [ -n "${DRY_RUN:-}" ] || "$@"; }
parallel() {  # each argument is one command line; they run side by side, and any failure fails the whole
  local pids=() cmd rc=0
  for cmd in "$@"; do
    echo "+ $cmd &"
    [ -n "${DRY_RUN:-}" ] || { bash -c "$cmd" & pids+=($!); }
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

for stream in "${streams[@]}"; do
  if [ "$stream" = static ]; then
    src=$STATIC ckpt=out/eval/pretrained_devset.pt pretrain=("${DEVSET[@]}")
  else
    src=$MOVING ckpt=out/eval/pretrained_static.pt pretrain=("${STATIC_CLIPS[@]}")
  fi
  out=out/eval/$stream-$PRESET
  if [ ! -f "$ckpt" ]; then
    run "${EVAL[@]}" pretrain --sources "${pretrain[@]}" --teacher "$T" --student-weights "$S" --steps 300 --quiet --out "$ckpt"
  fi
  common=(--source "$src" --teacher "$T" --student-weights "$ckpt" --preset "$PRESET" --threads 1 --cache out/eval/cache)
  # the teacher labels first, once (the three processes then read them from the cache)
  run "${EVAL[@]}" run "${common[@]}" --schemes none --quiet --no-plots --out "$out-a"
  q=$(printf '%q ' "${EVAL[@]}" run "${common[@]}" --quiet --no-plots)
  parallel "$q --schemes remote_tracking,ams,one_time --out $out-a" \
           "$q --schemes jit,shadowtutor --out $out-b" \
           "$q --schemes jit:lr=0.001 --out $out-c"
  run "${EVAL[@]}" merge "$out-a" "$out-b" "$out-c" --out "$out"
  run "${EVAL[@]}" summarize "$out"
  run "${EVAL[@]}" summarize --skip-s 250 "$out"
  run "${EVAL[@]}" analyze "$out"
  run "${EVAL[@]}" analyze "$out" --skip-s 250
done
