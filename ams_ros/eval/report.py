"""``results.json``, a Table-1-style ``results.md`` and the plots of an evaluation run.

mIoU follows the paper's protocol as the authors' code computes it: per frame, a confusion
matrix over the selected classes against the teacher's labels; the matrices of the last
``window_s`` seconds are summed and their mIoU (classes with a zero union left out) is the
value at that frame; the reported figure is the mean of those values over the frames after
``skip_s``. The same is done against human labels on the frames that have them. The global
confusion-matrix mIoU is reported beside it (``*_global``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from ams_ros.eval.simulator import SchemeResult, UpdateRecord

PAPER_NAMES = {"none": "No Customization", "one_time": "One-Time", "remote_tracking": "Remote+Tracking",
               "jit": "Just-In-Time", "shadowtutor": "ShadowTutor", "ams": "AMS"}


def _r(x, nd: int = 4):
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else round(x, nd)


def _nanmean(v) -> float:
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _span(times: list[float], step: float) -> float:
    if not times:
        return 0.0
    return float(times[-1] - times[0] + step)


def frac_better(r: SchemeResult, none: SchemeResult | None) -> float | None:
    """Fraction of the frames both scored where ``r`` beats ``none`` against the teacher (Figure 5)."""
    if none is None or r is none:
        return None
    n = min(r.frames_done, none.frames_done)
    if n == 0:
        return None
    a, b = np.asarray(r.frame_miou[:n], float), np.asarray(none.frame_miou[:n], float)
    ok = np.isfinite(a) | np.isfinite(b)
    if not ok.any():
        return None
    better = np.nan_to_num(a, nan=0.0) > np.nan_to_num(b, nan=0.0)
    return float(better[ok].mean())


def summarize(r: SchemeResult, none: SchemeResult | None, clip_times: np.ndarray, skip_s: float, step: float) -> dict:
    t0 = float(clip_times[0]) if len(clip_times) else 0.0
    times = np.asarray(r.times, float)
    keep = times >= t0 + skip_s
    gt_times = np.asarray(r.gt_times, float)
    keep_gt = gt_times >= t0 + skip_s
    duration = _span(r.times, step)
    delays = [u.t_arrive - u.t_data for u in r.updates if u.t_arrive <= (r.times[-1] if r.times else -np.inf)]
    up = sum(b for _, b in r.uplink)
    down = sum(b for _, b in r.downlink)
    return {
        "scheme": r.scheme,
        "miou_teacher": _r(_nanmean(np.asarray(r.window_miou, float)[keep])) if r.times else None,
        "miou_gt": _r(_nanmean(np.asarray(r.gt_window_miou, float)[keep_gt])) if r.gt_times else None,
        "uplink_kbps": _r(up * 8 / max(duration, 1e-9) / 1000.0, 2) if duration else 0.0,
        "downlink_kbps": _r(down * 8 / max(duration, 1e-9) / 1000.0, 2) if duration else 0.0,
        "updates": int(len(r.updates)),
        "frac_frames_better_than_none": _r(frac_better(r, none)),
        "miou_teacher_global": _r(r.cm_teacher.miou()) if r.cm_teacher is not None and r.times else None,
        "miou_gt_global": _r(r.cm_gt.miou()) if r.cm_gt is not None and r.gt_times else None,
        "mean_update_delay_s": _r(float(np.mean(delays)), 3) if delays else None,
        "frames_sent_up": len(r.sent_times),
        "frames": r.frames_done,
        "frames_total": r.frames_total,
        "partial": bool(r.interrupted or r.frames_done < r.frames_total),
        "uplink_bytes": int(up),
        "downlink_bytes": int(down),
        "train_wall_s": _r(r.train_wall_s, 1),
        "wall_s": _r(r.wall_s, 1),
        "params": r.params,
        "notes": r.notes,
    }


def write_results(out: Path, meta: Mapping, clip, results: Mapping[str, SchemeResult], preset, partial: bool,
                  plots: bool = True) -> dict:
    """Write results.json, results.md and the plots; returns the JSON object."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    none = results.get("none")
    step = float(np.median(np.diff(clip.times))) if len(clip) > 1 else 1.0
    schemes = {name: summarize(r, none, clip.times, preset.skip_s, step) for name, r in results.items()}
    summary = {"preset": preset.name, "source": meta.get("source"), **{k: v for k, v in meta.items() if k != "source"},
               "classes": list(clip.class_names), "frames_evaluated": len(clip),
               "stream_seconds": _r(clip.duration, 2), "partial": bool(partial or any(s["partial"] for s in schemes.values())),
               "preset_params": preset.to_dict(), "schemes": schemes}
    write_run_folder(out, summary, clip.times, results, plots)
    return summary


def write_run_folder(out: Path, summary: Mapping, clip_times, results: Mapping[str, SchemeResult],
                     plots: bool = True) -> None:
    """A run folder's files: results.json (atomically), results.md, series.json and the plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown(summary))
    write_series(out, clip_times, results)
    if plots:
        plot_all(out, clip_times, results)


# ----------------------------------------------------------------------------- per-frame series

#: The per-frame and per-event series of a SchemeResult that ``series.json`` keeps (enough to
#: redraw every figure or compute any other statistic without running the schemes again).
SERIES_FIELDS = ("times", "frame_miou", "window_miou", "gt_times", "gt_window_miou", "uplink", "downlink",
                 "rates", "sent_times")


def _finite_or_none(v):
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_series(out: Path, clip_times, results: Mapping[str, SchemeResult]) -> None:
    """``series.json``: the clip's scored times and every scheme's series (NaN as null)."""
    data = {"clip_times": [float(t) for t in clip_times], "schemes": {}}
    for name, r in results.items():
        d = {f: _finite_or_none([list(x) if isinstance(x, tuple) else x for x in getattr(r, f)]) for f in SERIES_FIELDS}
        d.update(name=r.name, scheme=r.scheme, frames_total=r.frames_total, interrupted=r.interrupted,
                 updates=[dataclasses.asdict(u) for u in r.updates])
        data["schemes"][name] = d
    tmp = Path(out) / "series.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(Path(out) / "series.json")


def read_series(out: Path) -> tuple[np.ndarray, dict[str, SchemeResult]]:
    """(clip times, scheme results) back from ``series.json`` (without confusion matrices)."""
    data = json.loads((Path(out) / "series.json").read_text())
    results = {}
    for name, d in data["schemes"].items():
        nan = lambda v: [float("nan") if x is None else x for x in v]  # noqa: E731
        r = SchemeResult(d["name"], d["scheme"], frames_total=d["frames_total"], interrupted=d["interrupted"])
        r.times, r.gt_times, r.sent_times = d["times"], d["gt_times"], d["sent_times"]
        r.frame_miou, r.window_miou, r.gt_window_miou = nan(d["frame_miou"]), nan(d["window_miou"]), nan(d["gt_window_miou"])
        r.uplink, r.downlink = [tuple(e) for e in d["uplink"]], [tuple(e) for e in d["downlink"]]
        r.rates = [tuple(e) for e in d["rates"]]
        r.updates = [UpdateRecord(**u) for u in d["updates"]]
        results[name] = r
    return np.asarray(data["clip_times"], float), results


def replot(out: Path) -> None:
    """Redraw a run's figures from its ``series.json``."""
    times, results = read_series(out)
    plot_all(Path(out), times, results)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _uplink_form(x: Mapping) -> str:
    """How a scheme's uplink is counted: key-frame JPEGs at their upload resolution, or video."""
    res = x.get("params", {}).get("upload_resolution")
    if res:
        return f"JPEG {res}"
    return "-" if x.get("scheme") == "none" else "video batches"


def markdown(s: Mapping) -> str:
    """A Table-1-style table (schemes as columns) and, when AMS variants ran, a Table-3-style one."""
    sch = s["schemes"]
    names = list(sch)
    head = "| Metric | " + " | ".join(PAPER_NAMES.get(n, f"`{n}`") for n in names) + " |"
    rows = [head, "|---" * (len(names) + 1) + "|"]

    def row(label, f):
        rows.append(f"| {label} | " + " | ".join(f(sch[n]) for n in names) + " |")

    row("mIoU vs teacher (%)", lambda x: _pct(x["miou_teacher"]))
    row("mIoU vs human labels (%)", lambda x: _pct(x["miou_gt"]))
    row("Up/Down BW (Kbps)", lambda x: f"{x['uplink_kbps']:.1f}/{x['downlink_kbps']:.1f}")
    if any("upload_resolution" in sch[n].get("params", {}) for n in names):  # issue #11: what the uplink counts
        row("frames sent up as", _uplink_form)
    row("updates sent", lambda x: str(x["updates"]))
    row("frames better than none (%)", lambda x: _pct(x["frac_frames_better_than_none"]))
    row("mean update delay (s)", lambda x: _num(x["mean_update_delay_s"], "{:.2f}"))
    row("frames scored", lambda x: f"{x['frames']}/{x['frames_total']}" + (" (partial)" if x["partial"] else ""))
    lines = [f"# ams-eval: `{s['source']}`", "",
             f"Preset `{s['preset']}`" + (f" with overrides `{s.get('overrides')}`" if s.get("overrides") else "")
             + f"; {s['frames_evaluated']} frames scored over {s['stream_seconds']} s of stream; classes "
             + ", ".join(s["classes"]) + "." + (" **PARTIAL: interrupted.**" if s.get("partial") else ""), ""]
    if s.get("command"):
        lines += ["Command: `" + s["command"] + "`", ""]
    lines += rows
    notes = [f"- `{n}`: {note}" for n in names for note in sch[n].get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""] + notes
    t3 = table3(sch)
    if t3:
        lines += ["", "Selection strategies (Table 3 style): mIoU vs teacher relative to full-model training "
                  "(percentage points), downlink Kbps in brackets.", ""] + t3
    return "\n".join(lines) + "\n"


def table3(sch: Mapping) -> list[str]:
    variants = {}
    full = None
    for name, x in sch.items():
        p = x.get("params", {})
        if not name.startswith("ams") or "strategy" not in p:
            continue
        if p["strategy"] == "full":
            full = x
        else:
            variants[(p["strategy"], float(p["gamma"]))] = x
    if full is None or len(variants) < 2 or full["miou_teacher"] is None:
        return []
    strategies = list(dict.fromkeys(k[0] for k in variants))
    fractions = sorted({k[1] for k in variants}, reverse=True)
    out = ["| Strategy | " + " | ".join(f"{100 * g:g}%" for g in fractions) + " |", "|---" * (len(fractions) + 1) + "|"]
    for st in strategies:
        cells = []
        for g in fractions:
            x = variants.get((st, g))
            if x is None or x["miou_teacher"] is None:
                cells.append("-")
            else:
                cells.append(f"{100 * (x['miou_teacher'] - full['miou_teacher']):+.2f} ({x['downlink_kbps']:.0f})")
        out.append(f"| {st} | " + " | ".join(cells) + " |")
    out.append(f"| full model | mIoU {100 * full['miou_teacher']:.2f}, {full['downlink_kbps']:.0f} Kbps |"
               + " |" * (len(fractions) - 1))
    return out


# ----------------------------------------------------------------------------- plots


def _bin_edges(t0: float, end: float, bin_s: float) -> np.ndarray:
    """Bins of about ``bin_s`` from ``t0`` to the end of the clip: the last bin ends with the clip
    (rates use each bin's own width, so they are not diluted by time after it)."""
    n = max(1, int(round((end - t0) / bin_s)))
    edges = t0 + bin_s * np.arange(n + 1, dtype=float)
    if end > edges[-2]:
        edges[-1] = end
    return edges


def _save(plt, fig, ax, path: Path, legend: bool, ncol: int = 1) -> None:
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8, ncol=ncol)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(out: Path, clip_times, results: Mapping[str, SchemeResult]) -> None:
    """The four figures of a run: mIoU over time, CDF of the per-frame gain over ``none``,
    frames sent up (and AMS's commanded rate), uplink and downlink over time."""
    import matplotlib  # lazy: plotting only when a run's figures are written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    colors = {name: f"C{k % 10}" for k, name in enumerate(results)}  # one colour per scheme in every figure
    end = float(clip_times[-1]) if len(clip_times) else 1.0
    t0 = float(clip_times[0]) if len(clip_times) else 0.0
    _plot_miou(plt, out, results, colors)
    _plot_gain_cdf(plt, out, results, colors)
    _plot_sampling(plt, out, results, colors, t0, end)
    _plot_bandwidth(plt, out, results, colors, t0, end)


def _plot_miou(plt, out: Path, results: Mapping[str, SchemeResult], colors: dict[str, str]) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, r in results.items():
        if r.times:
            ax.plot(r.times, np.asarray(r.window_miou, float) * 100, label=name, lw=1.2, color=colors[name])
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("mIoU vs teacher (%), last 10 s")
    ax.set_ylim(0, 100)
    _save(plt, fig, ax, out / "miou_over_time.png", legend=bool(results), ncol=3)


def _plot_gain_cdf(plt, out: Path, results: Mapping[str, SchemeResult], colors: dict[str, str]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    none = results.get("none")
    drawn = False
    for name, r in results.items():
        if none is None or r is none:
            continue
        n = min(r.frames_done, none.frames_done)
        if n == 0:
            continue
        gain = np.nan_to_num(np.asarray(r.frame_miou[:n], float)) - np.nan_to_num(np.asarray(none.frame_miou[:n], float))
        gain = np.sort(gain) * 100
        ax.plot(gain, np.arange(1, n + 1) / n, label=name, color=colors[name])
        drawn = True
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("per-frame mIoU gain over none (percentage points)")
    ax.set_ylabel("CDF over frames")
    _save(plt, fig, ax, out / "gain_cdf.png", legend=drawn)


def _plot_sampling(plt, out: Path, results: Mapping[str, SchemeResult], colors: dict[str, str], t0: float,
                   end: float) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.4))
    drawn = False
    rate_bin = 10.0
    redges = _bin_edges(t0, end, rate_bin)
    for name, r in results.items():
        color = colors[name]
        if r.sent_times:
            h, _ = np.histogram(r.sent_times, bins=redges)
            per_s = h / np.diff(redges)
            ax.step(redges, np.append(per_s, per_s[-1]), where="post", color=color, label=name)
            drawn = True
        if name.startswith("ams") and r.rates:  # the rate the server commanded (Eq. 1)
            xs = [x[0] for x in r.rates] + [end]
            ys = [x[1] for x in r.rates] + [r.rates[-1][1]]
            ax.step(xs, ys, where="post", color=color, ls="--", lw=0.9, label=f"{name} commanded")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel(f"frames sent up / s ({rate_bin:g} s bins)")
    _save(plt, fig, ax, out / "sampling_rate.png", legend=drawn, ncol=3)


def _plot_bandwidth(plt, out: Path, results: Mapping[str, SchemeResult], colors: dict[str, str], t0: float,
                    end: float) -> None:
    bin_s = 10.0
    edges = _bin_edges(t0, end, bin_s)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for ax, attr, label in ((axes[0], "uplink", "uplink"), (axes[1], "downlink", "downlink")):
        for name, r in results.items():
            ev = getattr(r, attr)
            if not ev:
                continue
            h, _ = np.histogram([e[0] for e in ev], bins=edges, weights=[e[1] for e in ev])
            kbps = h * 8 / np.diff(edges) / 1000
            ax.step(edges, np.append(kbps, kbps[-1]), where="post", label=name, color=colors[name])
        ax.set_ylabel(f"{label} Kbps ({bin_s:g} s bins)")
        ax.set_yscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("stream time (s)")
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[1].get_legend_handles_labels()
    merged = dict(zip(labels + l2, handles + h2))
    if merged:
        axes[0].legend(merged.values(), merged.keys(), fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(out / "bandwidth.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- many runs


def _source_name(source: str) -> str:
    """A table row's name for a run's source: a file's or folder's name, a playlist's item count."""
    if source.startswith("playlist:"):
        items = [i for i in source[len("playlist:"):].split(",") if i]
        return f"playlist of {len(items)} items" if len(items) > 1 else f"playlist {Path(items[0]).name}"
    return Path(source).name


def miou_after(run: str | Path, skip_s: float) -> dict[str, dict[str, float | None]]:
    """Each scheme's mIoU vs the teacher and vs human labels over the frames after the first
    ``skip_s`` seconds of a finished run, recomputed from its ``series.json`` as ``summarize``
    computes it (the mean of the windowed mIoU): the paper's warm-up skip applied afterwards,
    without running the schemes again. Raises ValueError when ``skip_s`` leaves no frame."""
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    if not (folder / "series.json").exists():
        raise FileNotFoundError(f"{folder}/series.json not found: --skip-s recomputes mIoU from a run folder "
                                f"written by 'ams-eval run'")
    clip_times, results = read_series(folder)
    t0 = float(clip_times[0]) if len(clip_times) else 0.0
    span = float(clip_times[-1]) - t0 if len(clip_times) else 0.0
    if skip_s >= span:
        raise ValueError(f"skip_s={skip_s:g} leaves no scored frame of {folder} (its stream is {span:.1f} s): "
                         f"use a skip shorter than the stream")
    out = {}
    for name, r in results.items():
        keep = np.asarray(r.times, float) >= t0 + skip_s
        keep_gt = np.asarray(r.gt_times, float) >= t0 + skip_s
        out[name] = {"miou_teacher": _r(_nanmean(np.asarray(r.window_miou, float)[keep])) if keep.any() else None,
                     "miou_gt": _r(_nanmean(np.asarray(r.gt_window_miou, float)[keep_gt])) if keep_gt.any() else None}
    return out


def combine(dirs: list[str | Path], skip_s: float = 0.0) -> str:
    """One markdown table per metric over several runs' results.json (clips as rows), plus the mean
    (of the schemes that ran to the end: an interrupted one is marked and left out of it).
    ``skip_s`` > 0: the mIoU rows count only the frames after the first ``skip_s`` seconds of each
    run (:func:`miou_after`), as the paper reports its long videos."""
    runs = []
    for d in dirs:
        p = Path(d) / "results.json" if Path(d).is_dir() else Path(d)
        r = json.loads(p.read_text())
        if skip_s > 0:
            for name, m in miou_after(p.parent, skip_s).items():
                r["schemes"].setdefault(name, {}).update(m)
            r["preset"] = f"{r['preset']}, mIoU after {skip_s:g} s"
        runs.append((p, r))
    if not runs:
        return ""
    names = list(dict.fromkeys(n for _, r in runs for n in r["schemes"]))
    lines = []
    for key, label, fmt in (("miou_teacher", "mIoU vs teacher (%)", _pct), ("miou_gt", "mIoU vs human labels (%)", _pct),
                            ("uplink_kbps", "uplink Kbps", lambda v: _num(v)),
                            ("downlink_kbps", "downlink Kbps", lambda v: _num(v)),
                            ("updates", "updates sent", lambda v: "-" if v is None else f"{v:.0f}"),
                            ("frac_frames_better_than_none", "frames better than none (%)", _pct)):
        lines += [f"**{label}**", "", "| clip (preset) | " + " | ".join(PAPER_NAMES.get(n, f"`{n}`") for n in names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        per = {n: [] for n in names}
        for p, r in runs:
            cells = []
            for n in names:
                entry = r["schemes"].get(n, {})
                v = entry.get(key)
                if v is not None and not entry.get("partial"):  # an interrupted scheme stays out of the mean
                    per[n].append(v)
                cells.append(fmt(v) + (" (partial)" if entry.get("partial") and v is not None else ""))
            partial = " PARTIAL" if r.get("partial") else ""
            lines.append(f"| {_source_name(str(r['source']))} ({r['preset']}{partial}) | " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(fmt(float(np.mean(per[n]))) if per[n] else "-" for n in names) + " |")
        lines.append("")
    return "\n".join(lines)
