"""``ams-eval merge``: one run folder from several runs of the same experiment made in parallel.

The schemes of a comparison are independent of each other once the clip, the student, the preset
and the seed are fixed, and ``ams-eval run`` runs them one after another in one process (one
torch thread is fastest on a small machine). On a machine with more cores, or to fit a long
stream into a working day, the schemes can run as separate processes (``--schemes jit`` in one,
``--schemes none,remote_tracking,ams`` in another, each with its own ``--out``) and be merged
afterwards into the folder a single run of all of them would have written (schemes in the
paper's order, each variant after its scheme): ``results.json``,
``results.md``, ``series.json`` and the plots, with "frames better than none" recomputed against
the merged ``none``. ``summarize``, ``analyze`` and ``replot`` then read it like any other run.

Runs that are not the same experiment are refused, naming what differs: another source, teacher,
student or student weights, classes, preset values (overrides included) or scored frame times.
A scheme that ran in several of them is kept once when its per-frame series are identical
(``none`` is deterministic) and refused otherwise.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ams_ros.eval.schemes import SCHEMES
from ams_ros.eval.report import _r, frac_better, read_series, write_run_folder
from ams_ros.eval.simulator import SchemeResult

#: results.json fields that must be equal for two runs to be one experiment.
SAME_EXPERIMENT = ("source", "teacher", "student", "student_weights", "classes", "preset", "preset_params",
                   "frames_evaluated")


def _load(folder: Path) -> tuple[dict, np.ndarray, dict[str, SchemeResult]]:
    if not (folder / "results.json").exists() or not (folder / "series.json").exists():
        raise FileNotFoundError(f"{folder}/results.json or series.json not found: merge takes folders written by "
                                f"'ams-eval run'")
    summary = json.loads((folder / "results.json").read_text())
    times, results = read_series(folder)
    return summary, times, results


def _same_series(a: SchemeResult, b: SchemeResult) -> bool:
    return (a.times == b.times and np.array_equal(np.asarray(a.window_miou, float), np.asarray(b.window_miou, float),
                                                  equal_nan=True)
            and a.uplink == b.uplink and a.downlink == b.downlink)


def describe_difference(key: str, there: object, first: object) -> str:
    """What differs, named: for the preset's values only the fields that differ."""
    if isinstance(there, dict) and isinstance(first, dict):
        fields = sorted(k for k in set(there) | set(first) if there.get(k) != first.get(k))
        return f"'{key}' differ in " + ", ".join(f"{k} ({there.get(k)!r} there, {first.get(k)!r} in the first run)"
                                                 for k in fields)
    return f"'{key}' is {there!r} there and {first!r} in the first run"


def merge_runs(runs: Sequence[str | Path], out: str | Path, plots: bool = True) -> dict:
    """Merge finished ``ams-eval run`` folders of one experiment into ``out``; returns its results.json."""
    folders = [Path(r) for r in runs]
    if len(folders) < 2:
        raise ValueError(f"merge takes at least two run folders, got {len(folders)}")
    out = Path(out)
    if any(out.resolve() == f.resolve() for f in folders):
        raise ValueError(f"the output folder {out} is one of the runs: write the merged run to a new folder")
    loaded = [(f, *_load(f)) for f in folders]
    first, s0, times0, _ = loaded[0]
    schemes: dict[str, dict] = {}
    results: dict[str, SchemeResult] = {}
    origin: dict[str, Path] = {}
    for folder, summary, times, res in loaded:
        for key in SAME_EXPERIMENT:
            if summary.get(key) != s0.get(key):
                raise ValueError(f"{folder} is not the same experiment as {first}: "
                                 f"{describe_difference(key, summary.get(key), s0.get(key))}; merge only runs of one source, "
                                 f"teacher, student and preset")
        if not np.array_equal(times, times0):
            raise ValueError(f"{folder} scored other frames than {first} (its series.json clip_times differ): "
                             f"merge only runs of the same clip and --max-seconds")
        for name, r in res.items():
            if name in results:
                if not _same_series(results[name], r):
                    raise ValueError(f"scheme '{name}' ran in both {origin[name]} and {folder} with different "
                                     f"results: keep it in one of them (run the other without it) and merge again")
                continue
            results[name], origin[name] = r, folder
            schemes[name] = dict(summary["schemes"][name])
    # the paper's order, as one run of the default schemes writes it (variants after their scheme)
    order = {name: (SCHEMES.index(r.scheme) if r.scheme in SCHEMES else len(SCHEMES), k)
             for k, (name, r) in enumerate(results.items())}
    results = dict(sorted(results.items(), key=lambda kv: order[kv[0]]))
    schemes = {name: schemes[name] for name in results}
    none = results.get("none")
    for name, r in results.items():  # against the merged run's `none` (a run without it had no figure)
        schemes[name]["frac_frames_better_than_none"] = _r(frac_better(r, none))
    merged = {k: v for k, v in s0.items() if k not in ("schemes", "command", "wall_seconds", "started")}
    merged.update(
        partial=any(s.get("partial") for s in schemes.values()) or any(s.get("partial") for _, s, _, _ in loaded),
        command="; ".join(s.get("command", "") for _, s, _, _ in loaded if s.get("command")),
        started=min((s["started"] for _, s, _, _ in loaded if s.get("started")), default=None),
        wall_seconds_of_runs=_r(sum(float(s.get("wall_seconds") or 0.0) for _, s, _, _ in loaded), 1),
        merged=_dt.datetime.now().isoformat(timespec="seconds"),
        merged_from=[{"folder": str(f), "schemes": list(res), "command": s.get("command"),
                      "wall_seconds": s.get("wall_seconds")} for f, s, _, res in loaded],
        schemes=schemes)
    write_run_folder(out, merged, times0, results, plots)
    return merged
