"""Where AMS beats Remote+Tracking and where it loses (issue #11): per-frame analysis of a run.

From a run's ``series.json`` (``ams-eval run``), for every scored frame:

- the gain of one scheme over another (default AMS over Remote+Tracking): the difference of their
  per-frame mIoU against the teacher;
- how many source frames ago the teacher label Remote+Tracking is tracking from was captured
  (the label in use at time t is the newest one that had arrived by t; before the first arrives
  it counts from the start): the longer a label is carried by optical flow, the more it drifts;
- the motion at that frame: the mean Farneback optical-flow magnitude (pixels per frame at the
  evaluation size) between the previous scored frame and this one, from the source itself.

On a playlist, each item's span of stream time and every scheme's mean windowed mIoU over it
(``per_item``): whether a scheme climbs when a scene comes back, and on which scenes it wins.

``ams-eval analyze OUT --source SPEC`` writes ``analysis.json`` (the per-frame values and the gain
binned by each) and two plots (``analysis_gain_vs_label_age.png``, ``analysis_gain_vs_motion.png``).
Nothing here changes a scheme; it explains the numbers ``ams-eval run`` reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ams_ros.eval.report import read_series
from ams_ros.eval.simulator import SchemeResult
from ams_ros.core.sources.frame_sources import PlaylistSource
from ams_ros.eval.clips import _to_size, open_scored_source


def per_frame_gain(a: SchemeResult, b: SchemeResult) -> tuple[np.ndarray, np.ndarray]:
    """(times, mIoU of ``a`` minus ``b``) on the frames both scored (NaN where either is).

    Frames are matched on their times rounded to 1 us, but the times returned are ``a``'s own:
    a rounded time can fall just before the frame it names (1/30 s -> 0.033333), and counting
    frames up to it would leave that frame out."""
    fa = {k: (t, m) for k, t, m in zip(np.round(a.times, 6).tolist(), a.times, a.frame_miou)}
    fb = dict(zip(np.round(b.times, 6).tolist(), b.frame_miou))
    keys = sorted(set(fa) & set(fb))
    times = np.array([fa[k][0] for k in keys], dtype=float)
    gain = np.array([fa[k][1] - fb[k] for k in keys], dtype=float)
    return times, gain


def label_age_frames(times: np.ndarray, rt: SchemeResult, clip_times: np.ndarray) -> np.ndarray:
    """Per time: source frames between the capture of the teacher label in use and that time
    (``clip_times`` counts the frames; a frame before any label arrived counts from the start)."""
    updates = sorted(rt.updates, key=lambda u: u.t_arrive)  # one FIFO link: the newest arrived is tracked
    arrive = np.array([u.t_arrive for u in updates], dtype=float)
    data = np.array([u.t_data for u in updates], dtype=float)
    clip_times = np.asarray(clip_times, float)
    ages = np.empty(len(times))
    for k, t in enumerate(times):
        i = int(np.searchsorted(arrive, t, side="right")) - 1
        since = data[i] if i >= 0 else clip_times[0] - 1.0
        ages[k] = np.count_nonzero((clip_times > since + 1e-9) & (clip_times <= t + 1e-9))
    return ages


def motion_per_frame(frames: Iterable[tuple[float, np.ndarray]]) -> dict[float, float]:
    """Mean optical-flow magnitude (Farneback, pixels) from each frame's predecessor to it; the
    first frame gets NaN."""
    out, prev = {}, None
    for t, rgb in frames:
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if prev is None:
            out[round(float(t), 6)] = float("nan")
        else:
            flow = cv2.calcOpticalFlowFarneback(prev, g, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            out[round(float(t), 6)] = float(np.mean(np.linalg.norm(flow, axis=2)))
        prev = g
    return out


def scored_frames(src: Iterable, clip_times: np.ndarray, size: tuple[int, int]) -> Iterable[tuple[float, np.ndarray]]:
    """The frames of ``src`` (:func:`~ams_ros.eval.clips.open_scored_source`) at the scored times,
    at the evaluation size (as the clip replays them)."""

    want = {round(float(t), 6) for t in clip_times}
    last = max(want) if want else 0.0
    for t, rgb, _ in src:
        key = round(float(t), 6)
        if key in want:
            yield key, _to_size(rgb, size)
        if key >= last:
            return


def playlist_spans(src: object, end: float) -> list[dict]:
    """``{"item", "from", "to"}`` in stream time for each item of a playlist that has been played
    up to its last scored frame (``to``: the next item's start, ``end`` for the last); ``[]`` for
    any other source. Item start times are known only as a playlist plays, so this reads them from
    the motion pass's source rather than playing the stream a second time."""

    if not isinstance(src, PlaylistSource):
        return []
    names = [("mirror:" if mirrored else "") + Path(item).name for item, mirrored in src.items]
    ends = list(src.starts[1:]) + [float(end)]
    return [{"item": n, "from": float(a), "to": float(b)} for n, a, b in zip(names, src.starts, ends)]


def per_item(spans: list[dict], results: dict[str, SchemeResult], gain_times: np.ndarray,
             gain: np.ndarray) -> list[dict]:
    """For each span: the scored frames in it, each scheme's mean windowed mIoU over them (the
    figure the results tables report, here per item) and the mean per-frame gain."""
    rows = []
    last = len(spans) - 1
    for k, sp in enumerate(spans):
        def inside(t: np.ndarray) -> np.ndarray:
            return (t >= sp["from"] - 1e-9) & ((t < sp["to"] - 1e-9) if k < last else (t <= sp["to"] + 1e-9))

        miou = {}
        for name, r in results.items():
            w = np.asarray(r.window_miou, float)[inside(np.asarray(r.times, float))]
            w = w[np.isfinite(w)]
            miou[name] = float(w.mean()) if w.size else None
        g = gain[inside(gain_times)]
        g = g[np.isfinite(g)]
        rows.append({**sp, "frames": int(inside(gain_times).sum()), "miou": miou,
                     "gain_mean": float(g.mean()) if g.size else None})
    return rows


def binned(x: np.ndarray, y: np.ndarray, edges: list[float]) -> list[dict]:
    """Mean, median and count of ``y`` in each bin ``[edges[i], edges[i+1])`` of ``x`` (NaN-free)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & (x < hi)
        rows.append({"from": lo, "to": hi, "frames": int(sel.sum()),
                     "gain_mean": float(np.mean(y[sel])) if sel.any() else None,
                     "gain_median": float(np.median(y[sel])) if sel.any() else None})
    return rows


def analyze(out: Path, source: str | None, size: tuple[int, int], a: str = "ams", b: str = "remote_tracking",
            plots: bool = True, skip_s: float = 0.0) -> dict:
    """The analysis of the run in ``out`` (see the module doc); ``skip_s``: only frames from that
    many seconds after the stream's start (the paper's warm-up, 250 s on its long videos)."""
    clip_times, results = read_series(out)
    for name in (a, b):
        if name not in results:
            raise ValueError(f"scheme '{name}' is not in {out}/series.json (it has {', '.join(results)}); "
                             f"run it with --schemes ...,{name}")
    if skip_s < 0:
        raise ValueError(f"skip_s must be >= 0 seconds, got {skip_s}")
    times, gain = per_frame_gain(results[a], results[b])
    motion: dict[float, float] | None = None
    spans: list[dict] = []
    if source:  # one pass over the source: the motion, and a playlist's item starts as it plays

        src = open_scored_source(source, size)
        motion = motion_per_frame(scored_frames(src, clip_times, size))
        spans = playlist_spans(src, float(clip_times[-1])) if len(clip_times) else []
    items = per_item(spans, results, times, gain)  # whole items, whatever the warm-up skip
    start = float(clip_times[0]) if len(clip_times) else 0.0
    keep = times >= start + skip_s - 1e-9
    if skip_s > 0 and not keep.any():
        raise ValueError(f"skip_s={skip_s:g} s leaves no frame of {out} (its stream is "
                         f"{float(clip_times[-1] - clip_times[0]):.0f} s): lower it")
    times, gain = times[keep], gain[keep]
    ages = label_age_frames(times, results[b], clip_times)
    age_edges = [0, 1, 3, 10, 30, 100, 300, 1e9]
    res = {"a": a, "b": b, "skip_s": float(skip_s), "frames": int(times.size),
           "gain_mean": float(np.nanmean(gain)) if gain.size else None,
           "gain_vs_label_age_frames": binned(ages, gain, age_edges),
           "per_item": items,
           "per_frame": {"t": times.tolist(), "gain": gain.tolist(), "label_age_frames": ages.tolist()}}
    if motion is not None:
        mot = np.array([motion.get(round(float(t), 6), np.nan) for t in times])
        finite = mot[np.isfinite(mot)]
        edges = sorted(set(np.quantile(finite, [0, 0.25, 0.5, 0.75]).round(3).tolist())) + [1e9] if finite.size else []
        res["gain_vs_motion_px"] = binned(mot, gain, edges) if edges else []
        res["per_frame"]["motion_px"] = mot.tolist()
    (Path(out) / "analysis.json").write_text(json.dumps(res, indent=2, allow_nan=True))
    if plots:
        _plot(Path(out), res)
    return res


def _plot(out: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pf = res["per_frame"]
    for key, label, fname, logx in (("label_age_frames", "source frames since the tracked teacher label was captured",
                                     "analysis_gain_vs_label_age.png", True),
                                    ("motion_px", "mean optical-flow magnitude (px/frame)",
                                     "analysis_gain_vs_motion.png", False)):
        if key not in pf:
            continue
        x, y = np.asarray(pf[key], float), np.asarray(pf["gain"], float)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(x + (1 if logx else 0), 100 * y, s=6, alpha=0.3, label="frames")
        mx, my = bin_means(x, y)
        if mx.size:
            ax.plot(mx + (1 if logx else 0), 100 * my, "o-", color="C3", lw=1.5, ms=4, label="mean per bin")
            ax.legend(loc="lower right", fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        if logx:
            ax.set_xscale("log")
            label += " (+1, log)"
        ax.set_xlabel(label)
        ax.set_ylabel(f"mIoU {res['a']} - {res['b']} (points)")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def bin_means(x: np.ndarray, y: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(x, mean y) per bin of about equal counts (one bin per value when x takes few values, as
    label ages do), for the plots' trend line."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not x.size:
        return x, y
    values = np.unique(x)
    if values.size <= 2 * bins:
        return values, np.array([y[x == v].mean() for v in values])
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    used = np.unique(idx)
    return (np.array([x[idx == i].mean() for i in used]), np.array([y[idx == i].mean() for i in used]))
