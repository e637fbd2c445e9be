"""results.json, a Table-1-style results.md, and the plots of an evaluation run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _kbps(events, duration: float) -> float:
    return float(sum(b for _, b in events) * 8 / max(duration, 1e-9) / 1000.0)


def _r(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def write_results(out: Path, args, preset, clip, results: dict, space, partial: bool) -> dict:
    duration = float(clip.times[-1] - clip.times[0]) + 1.0 / max(preset.eval_fps or 30.0, 1e-9)
    none = results.get("none")
    schemes = {}
    for name, r in results.items():
        better = None
        if none is not None and len(none.per_frame) == len(r.per_frame) and name != "none":
            better = float(np.mean(np.asarray(r.per_frame) > np.asarray(none.per_frame)))
        schemes[name] = {
            "miou_teacher": _r(r.cm_teacher.miou()),
            "miou_gt": _r(r.cm_gt.miou()) if r.cm_gt.matrix.sum() else None,
            "uplink_kbps": round(_kbps(r.uplink, duration), 2),
            "downlink_kbps": round(_kbps(r.downlink, duration), 2),
            "updates": int(r.updates),
            "frac_frames_better_than_none": _r(better) if better is not None else None,
        }
    summary = {"preset": preset.name, "preset_params": preset.to_dict(), "source": args.source,
               "teacher": args.teacher, "student": args.student, "student_weights": args.student_weights,
               "classes": list(space.class_names), "frames_evaluated": len(clip.frames),
               "stream_seconds": round(duration, 1), "partial": partial, "schemes": schemes}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    lines = [f"Source `{args.source}`, preset `{preset.name}`, {len(clip.frames)} frames over {duration:.0f} s"
             + (" (partial: not every scheme finished)" if partial else ""), "",
             "| scheme | mIoU vs teacher | mIoU vs human labels | uplink Kbps | downlink Kbps | updates | frames better than none |",
             "|---|---|---|---|---|---|---|"]
    for name, s in schemes.items():
        f = lambda v, pct=True: "-" if v is None else (f"{100 * v:.1f}" if pct else f"{v:g}")  # noqa: E731
        lines.append(f"| {name} | {f(s['miou_teacher'])} | {f(s['miou_gt'])} | {s['uplink_kbps']:.1f} | "
                     f"{s['downlink_kbps']:.1f} | {s['updates']} | {f(s['frac_frames_better_than_none'])} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(out, clip, results, duration)
    return summary


def _plots(out: Path, clip, results: dict, duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = clip.times
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, r in results.items():
        v = np.asarray(r.per_frame, dtype=float)
        k = min(9, max(1, v.size // 10))
        ax.plot(t[: v.size], np.convolve(np.nan_to_num(v), np.ones(k) / k, mode="same"), label=name)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("mIoU vs teacher")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(out / "miou_over_time.png", dpi=110)
    plt.close(fig)
    none = results.get("none")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        if name == "none" or none is None or len(r.per_frame) != len(none.per_frame):
            continue
        gain = np.sort(np.asarray(r.per_frame) - np.asarray(none.per_frame))
        ax.plot(gain * 100, np.linspace(0, 1, gain.size), label=name)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("per-frame mIoU gain over none (%)")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gain_cdf.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3))
    for name, r in results.items():
        if r.rates:
            ax.step([x[0] for x in r.rates], [x[1] for x in r.rates], where="post", label=name)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("sampling rate (frames/s)")
    fig.tight_layout()
    fig.savefig(out / "sampling_rate.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3))
    bins = np.arange(0, duration + 10, 10)
    for name, r in results.items():
        if r.downlink:
            h, _ = np.histogram([e[0] for e in r.downlink], bins=bins, weights=[e[1] for e in r.downlink])
            ax.step(bins[:-1], h * 8 / 10 / 1000, where="post", label=f"{name} down")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("Kbps (10 s bins)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(out / "bandwidth.png", dpi=110)
    plt.close(fig)
