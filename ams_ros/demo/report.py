"""The demo's outputs: summary.json and plots (mIoU over time, sampling rate, bandwidth).

The summary's top-level figures are the first robot's (with one robot, the demo's); ``robots``
(issue #16) holds each robot's mIoU, updates, GPU share and Kbps, and the plots draw one line per
robot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ams_ros.core.fleet.phase_cadence import phase_overhead_s
from ams_ros.core.fleet.stagger import StaggerConfig
from ams_ros.core.edge.source_timing import missing_label_maps, source_holes, source_period


def _kbps(events: list[tuple[float, int]], duration: float) -> float:
    return float(sum(b for _, b in events) * 8 / max(duration, 1e-9) / 1000.0)


def max_gap_ms(arrivals: list[float], skip_s: float = 0.0) -> float:
    """Largest gap between consecutive label maps (ms), ignoring the first ``skip_s`` seconds."""
    if len(arrivals) < 2:
        return float("nan")
    a = np.asarray(arrivals)
    a = a[a >= a[0] + skip_s]
    return float(np.max(np.diff(a)) * 1000.0) if a.size >= 2 else float("nan")


def write_report(obs, out: Path, args: argparse.Namespace, extra: dict,
                 exit_codes: dict[str, int | None] | None = None) -> dict:
    """``obs``: the :class:`~ams_ros.demo.observer.Observer` (or one robot's watch, with the same
    measurements); ``exit_codes``: each robot's edge process exit code, by device id."""
    robots = getattr(obs, "robots", None) or {getattr(args, "device_id", "robot1"): obs}
    first = next(iter(robots.values()))
    summary = {**_robot_summary(first, args), **extra, "settings": demo_settings(args)}
    # (issue #31) the base station's time per phase outside training (one lane: every robot's phases)
    summary["phase_overhead_s"] = phase_overhead_s(
        (t, float(s.train_seconds)) for w in robots.values() for t, s in zip(w.server_status_at, w.server_status))
    summary["robots"] = {dev: _robot_brief(w, summary if w is first else _robot_summary(w, args),
                                           (exit_codes or {}).get(dev))
                         for dev, w in robots.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "scores.json").write_text(json.dumps(first.scores))
    (out / "label_arrivals.json").write_text(json.dumps({"wall": first.label_arrivals, "stamp": first.label_stamps}))
    if len(robots) > 1:
        (out / "scores_by_robot.json").write_text(json.dumps({dev: w.scores for dev, w in robots.items()}))
    _plots(robots, out, max(min(w.latest_stream_t for w in robots.values()), 1e-9))
    return summary


def demo_settings(args: argparse.Namespace) -> dict:
    """The settings a run was made with that a model of it needs (issue #31, ``ams-eval fleet-check``)."""
    keys = ("duration", "fps", "width", "height", "update_period", "horizon", "iterations", "batch_size", "gamma",
            "lr", "encoding", "bitrate", "robots", "source", "teacher", "student", "selected_classes", "label_space")
    settings = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    # whether the base station staggered the robots' batches (its default unless --server-param says otherwise)
    from ams_ros.demo.runner import parse_param_overrides  # the runner imports this module

    server = parse_param_overrides(getattr(args, "server_param", None) or [], "--server-param")
    settings["stagger_batches"] = bool(server.get("asr_controller", {}).get("stagger_batches", StaggerConfig.enabled))
    return settings


def _robot_brief(w, full: dict, exit_code: int | None) -> dict:
    """One robot's line of ``summary["robots"]``."""
    shares = [float(s.gpu_share) for s in w.server_status]
    trained = float(sum(s.train_seconds for s in w.server_status))
    return {
        "source": full["source"],
        "miou_streamed": full["miou_streamed"],
        "miou_frozen": full["miou_frozen"],
        "updates_applied": full["updates_applied"],
        "updates_rejected": full["updates_rejected"],
        "final_version": full["model_version"],
        # the scheduler's sliding-window share, as the server published it after each phase
        "gpu_share": round(float(np.mean(shares)), 4) if shares else None,
        "gpu_share_last": round(shares[-1], 4) if shares else None,
        "training_phases_seen": len(w.server_status),
        # (issue #31) the base station's time spent on this robot's phases, and its share of the stream
        # (what `ams-eval fleet-check` compares with the fleet model's GPU share)
        "train_seconds_total": round(trained, 3),
        "phase_time_share": round(trained / max(full["stream_seconds"], 1e-9), 4),
        "uplink_kbps": full["uplink_kbps"],
        "downlink_kbps": full["downlink_kbps"],
        "frames_scored": full["frames_scored"],
        "edge_exit_code": exit_code,
    }


def _robot_summary(obs, args: argparse.Namespace) -> dict:
    """The summary figures of one robot (``obs``: its watch)."""
    duration = max(obs.latest_stream_t, 1e-9)
    st = obs.edge_status
    # judged against the source's own timing (its stamps), not the demo's nominal --fps: a
    # folder playing 1 frame/s with a 65 s hole is not 679 missing maps and a 65 s stall
    period = source_period(obs.image_stamps) or 1.0 / args.fps
    over_source = obs.edge_source_gap_windows
    swapped = obs.edge_swap_windows
    return {
        "source": getattr(obs, "source", None) or args.source,
        "teacher": args.teacher,
        "student": args.student,
        "resolution": [args.width, args.height],
        "stream_seconds": round(duration, 2),
        # the update period the robot ran with at the end (the server commands it)
        "update_period_s": round(float(st.update_period), 3) if st else None,
        "updates_applied": int(st.updates_applied) if st else 0,
        "updates_rejected": int(st.updates_rejected) if st else 0,
        # (issue #29) swaps the robot undid after checking the new model, and updates it held
        "steps_back": int(st.steps_back) if st else 0,
        "last_step_back": st.last_step_back if st else "",
        "updates_held": int(st.updates_held) if st else 0,
        "model_version": int(st.model_version) if st else 0,
        # inputs a callback rejected (malformed or forged images, updates, commands: issue #13)
        "inputs_rejected": int(st.inputs_rejected) if st else 0,
        "last_input_rejection": st.last_input_rejection if st else "",
        "server_inputs_rejected": int(obs.server_status[-1].inputs_rejected) if obs.server_status else None,
        "server_batches_received": int(obs.server_status[-1].batches_received) if obs.server_status else None,
        "server_batches_dropped": int(obs.server_status[-1].batches_dropped) if obs.server_status else None,
        # (issue #29) phases the base station's gate kept from shipping, and operator rollbacks
        "server_phases_discarded": int(obs.server_status[-1].phases_discarded) if obs.server_status else None,
        "server_last_discard": obs.server_status[-1].last_discard if obs.server_status else "",
        "server_batches_refused": int(obs.server_status[-1].batches_refused) if obs.server_status else None,
        "server_frames_refused": int(obs.server_status[-1].frames_refused) if obs.server_status else None,
        "server_last_refusal": obs.server_status[-1].last_refusal if obs.server_status else "",
        "server_rollbacks": int(obs.server_status[-1].rollbacks) if obs.server_status else None,
        "miou_streamed": _nan_none(obs.cm_streamed.miou()),
        "miou_frozen": _nan_none(obs.cm_frozen.miou()),
        "miou_scored_from_s": obs.reference.score_from,
        "miou_reference": "ground truth" if not obs.reference.needs_images else f"teacher {args.teacher}",
        "frames_scored": len(obs.scores),
        "uplink_kbps": round(_kbps(obs.uplink, duration), 2),
        "downlink_kbps": round(_kbps(obs.downlink, duration), 2),
        # measured on the robot between consecutive label maps (the observer's arrival times also
        # carry DDS and this process's own scheduling delays: reported beside it)
        "max_inference_gap_ms": round(max(obs.edge_gap_windows, default=0.0), 1),
        # one value per status period (1 s): a swap that stalls inference would mark every
        # period with a swap; a rare stall of the whole machine marks one
        "inference_gap_windows": len(obs.edge_gap_windows),
        # windows where the robot waited a frame period or more beyond the source's own stamps
        # (a wall gap of two periods on a regular source; a hole in the source does not count)
        "inference_gap_windows_over_2_periods": sum(1 for g in over_source if g >= 1000.0 * period),
        # the same among the periods in which a swap happened: a swap that stalled inference marks
        # (nearly) all of them, a stall of the whole machine only its share of them
        "swap_windows": sum(swapped),
        "swap_windows_over_2_periods": sum(1 for g, w in zip(over_source, swapped) if w and g >= 1000.0 * period),
        "max_inference_gap_over_source_ms": round(max(over_source, default=0.0), 1),
        "median_window_inference_gap_ms": round(float(np.median(obs.edge_gap_windows)), 1) if obs.edge_gap_windows else None,
        "max_inference_wait_ms": round(obs.edge_wait_max_ms, 2),
        "max_label_arrival_gap_ms": _nan_none(max_gap_ms(obs.label_arrivals, skip_s=2.0)),
        # where frames went missing: the robot's counters (the last EdgeStatus) say whether the
        # player skipped them or inference dropped them; the observer's stamp gaps count both
        # plus the label maps this process itself did not receive in time
        "frames_received": int(st.frames_received) if st else None,
        "frames_segmented": int(st.frames_segmented) if st else None,
        "frames_dropped": int(st.frames_dropped) if st else None,
        "source_frames_skipped": int(st.source_frames_skipped) if st else None,
        "label_maps_received": len(obs.label_stamps),
        # delivered frames (as the observer saw them) without a label map
        "label_maps_missing": (missing_label_maps(obs.image_stamps, obs.label_stamps) if obs.image_stamps
                               else _missing(obs.label_stamps, period)),
        "frame_period_ms": round(1000.0 * period, 3),
        "frames_delivered_seen": len(obs.image_stamps),
        "source_holes": source_holes(obs.image_stamps),
        "inference_backend": st.inference_backend if st else None,
        "inference_probe_agreement": round(float(st.inference_probe_agreement), 6) if st else None,
        "inference_latency_ms": float(st.inference_latency_ms) if st else None,
        "inference_rate": float(st.inference_rate) if st else None,
        "sampling_commands": [{"t": t, "rate": r, "period": p} for t, r, p in obs.commands],
        "period_stretched_phases": sum(1 for s in obs.server_status if s.period_stretched),
        "train_seconds_mean": float(np.mean([s.train_seconds for s in obs.server_status])) if obs.server_status else None,
    }


def _missing(stamps: list[float], period: float) -> int:
    """Frames between the first and last label map that the observer has no label map for."""
    if len(stamps) < 2:
        return 0
    gaps = np.diff(np.sort(np.asarray(stamps)))
    return int(np.sum(np.maximum(np.rint(gaps / period) - 1, 0)))


def _nan_none(x: float):
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _plots(robots: dict, out: Path, duration: float) -> None:
    """miou.png, sampling_rate.png and bandwidth.png; one line (colour) per robot when several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(robots) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = next(iter(robots.values()))
    if any(w.scores for w in robots.values()):
        fig, ax = plt.subplots(figsize=(9, 3.5 if not many else 4.5))
        for i, (dev, w) in enumerate(robots.items()):
            if not w.scores:
                continue
            t = np.array([s["t"] for s in w.scores])
            for key, label, ls in (("streamed", "AMS streamed student", "-"), ("frozen", "frozen initial student", ":")):
                v = np.array([s[key] for s in w.scores], dtype=float)
                style = {"color": colours[i % len(colours)], "ls": ls} if many else {}
                ax.plot(t, _smooth(v, 5), label=f"{dev}: {label}" if many else label, **style)
        world = getattr(first.reference, "world", None)
        for shift in (world.shifts if world is not None else []):
            ax.axvline(shift.t, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("stream time (s)")
        ax.set_ylabel("mIoU")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small" if many else None, ncol=2 if many else 1)
        ax.set_title("Segmentation accuracy" + (" per robot" if many else "") + " (dashed: domain shifts)")
        fig.tight_layout()
        fig.savefig(out / "miou.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3))
    for i, (dev, w) in enumerate(robots.items()):
        if w.commands:
            ct = [0.0] + [c[0] for c in w.commands] + [duration]
            cr = [w.commands[0][1]] + [c[1] for c in w.commands] + [w.commands[-1][1]]
            ax.step(ct, cr, where="post", **({"label": dev, "color": colours[i % len(colours)]} if many else {}))
    if many:
        ax.legend(fontsize="small")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("sampling rate (frames/s)")
    ax.set_title("Adaptive sampling rate commanded by the server")
    fig.tight_layout()
    fig.savefig(out / "sampling_rate.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3))
    for i, (dev, w) in enumerate(robots.items()):
        for events, label, ls in ((w.uplink, "uplink (frame batches)", "-"), (w.downlink, "downlink (model updates)", "--")):
            if events:
                bins = np.arange(0, duration + 10, 10)
                tt = np.array([e[0] for e in events])
                bb = np.array([e[1] for e in events])
                h, _ = np.histogram(tt, bins=bins, weights=bb)
                style = {"color": colours[i % len(colours)], "ls": ls} if many else {}
                ax.step(bins[:-1], h * 8 / 10 / 1000, where="post", label=f"{dev}: {label}" if many else label, **style)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("Kbps (10 s bins)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small" if many else None)
    ax.set_title("Bandwidth" + (" per robot" if many else ""))
    fig.tight_layout()
    fig.savefig(out / "bandwidth.png", dpi=110)
    plt.close(fig)


def _smooth(v: np.ndarray, k: int) -> np.ndarray:
    if v.size < k:
        return v
    return np.convolve(np.nan_to_num(v, nan=np.nanmean(v)), np.ones(k) / k, mode="same")
