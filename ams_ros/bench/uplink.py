"""``ams-bench --only uplink`` (issue #10): the video codecs' bytes on the uplink against the teacher's agreement with what it would see uncompressed."""

from __future__ import annotations

import time

import numpy as np

from ams_ros.core.common.assets import asset_path
from ams_ros.core.models.teachers import build_teacher
from ams_ros.core.wire.frame_codec import decode_frames, encode_frames

from ams_ros.bench.common import log


UPLINK_CODECS = ("h264", "h265", "av1")


UPLINK_KBPS = (50, 100, 150, 200, 300)


UPLINK_REFERENCE = ("h264", 200)  # the paper's uplink: H.264 at 200 Kbps


def uplink_codecs(codecs=UPLINK_CODECS, kbps_list=UPLINK_KBPS) -> dict | None:
    """Issue #10: each video codec at each target bitrate on 10 CamVid frames (512x256, one batch of
    a 10 s period, one encoder thread): bytes, encode seconds and the teacher's label agreement on
    the decoded vs the original frames. Each codec's bytes at the agreement H.264 reaches at
    200 Kbps are interpolated on its (bytes, agreement) curve."""

    teacher_path = asset_path("models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite")
    frames_dir = asset_path("video/camvid-0016E5/frames")
    if teacher_path is None or frames_dir is None:
        log("shared assets absent: skipping the uplink codecs' teacher agreement on decoded frames")
        return None
    import cv2

    files = sorted(frames_dir.glob("*.jpg"))[:10]
    frames = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (512, 256)) for f in files]
    stamps = [int(f.stem) / 30.0 for f in files]
    teacher = build_teacher(f"tflite:{teacher_path}")
    original = teacher.label(frames)
    curves: dict[str, list[dict]] = {}
    for codec in codecs:
        for kbps in kbps_list:
            t0 = time.perf_counter()
            enc = encode_frames(frames, stamps, bitrate_bps=kbps * 1000, period_s=10.0, codec=codec, threads=1)
            encode_s = time.perf_counter() - t0
            decoded = decode_frames(enc.data, enc.codec, enc.width, enc.height)
            agree = float(np.mean([np.mean(x == y) for x, y in zip(original, teacher.label(decoded))]))
            curves.setdefault(codec, []).append({"kbps": kbps, "bytes": len(enc.data), "encode_s": round(encode_s, 3),
                                                 "pixel_agreement": round(agree, 4)})
            log(f"uplink {codec} at {kbps} Kbps: {len(enc.data):,} bytes, encoded in {encode_s:.2f} s, teacher "
                f"label agreement {agree:.4f}")
    ref_codec, ref_kbps = UPLINK_REFERENCE
    ref = next(r for r in curves[ref_codec] if r["kbps"] == ref_kbps)
    equal = {}
    for codec, rows in curves.items():
        at = bytes_at_agreement(rows, ref["pixel_agreement"])
        equal[codec] = None if at is None else {
            "bytes": round(at), "ratio_to_h264_200kbps": round(at / ref["bytes"], 3),
            "encode_s_max": max(r["encode_s"] for r in rows)}
    return {"frames": len(files), "teacher": teacher_path.name, "source": "camvid-0016E5", "size": [512, 256],
            "reference": {"codec": ref_codec, "kbps": ref_kbps, **ref}, "curves": curves,
            "bytes_at_reference_agreement": equal}


def uplink_choices(codecs: str, kbps: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The --uplink-codecs and --uplink-kbps lists, checked. The reference (H.264 at 200 Kbps) is what
    every codec is compared with, so it is always measured."""
    ref_codec, ref_kbps = UPLINK_REFERENCE
    names = tuple(dict.fromkeys([ref_codec, *(c.strip() for c in codecs.split(",") if c.strip())]))
    bad = [c for c in names if c not in UPLINK_CODECS]
    if bad:
        raise ValueError(f"--uplink-codecs {','.join(bad)}: choose from {', '.join(UPLINK_CODECS)}")
    try:
        rates = sorted({ref_kbps, *(int(k) for k in kbps.split(",") if k.strip())})
    except ValueError:
        raise ValueError(f"--uplink-kbps {kbps!r}: give whole Kbps, comma separated (e.g. 100,200,300)") from None
    if rates[0] <= 0:
        raise ValueError(f"--uplink-kbps {kbps!r}: bitrates must be positive")
    return names, tuple(rates)


def bytes_at_agreement(rows: list[dict], target: float) -> float | None:
    """The bytes at which a codec's (bytes, agreement) points first reach ``target`` agreement,
    linearly between the two points around it (None if no point reaches it)."""
    pts = sorted((r["bytes"], r["pixel_agreement"]) for r in rows)
    prev = None
    for b, a in pts:
        if a >= target:
            if prev is None:
                return float(b)
            b0, a0 = prev  # a0 < target <= a
            return b0 + (b - b0) * (target - a0) / (a - a0)
        prev = (b, a)
    return None


def uplink_targets(uplink: dict | None) -> dict:
    """Issue #10: a codec other than H.264 becomes the default where it halves the bytes at equal
    agreement and encodes a 10-frame batch within 1 s on one thread."""
    if uplink is None:
        return {}
    ok = [c for c, e in uplink["bytes_at_reference_agreement"].items()
          if c != "h264" and e is not None and e["ratio_to_h264_200kbps"] <= 0.5 and e["encode_s_max"] <= 1.0]
    return {"an_uplink_codec_halves_h264_bytes_at_equal_agreement_within_1s": bool(ok)}
