"""``ams-eval merge`` for fleet studies: one study from several ``ams-eval fleet`` runs made side by side.

A fleet study at the issue's scale (long streams, N up to 24) trains every robot's student for real
on this machine, hours on two cores in one process. Each N is independent once the sources, the
teacher, the student and the preset are fixed, and so is each robot's reference run alone (robot j
alone is the same run whatever N it is the reference for), so the N can run as separate processes
(``--robots 9 --alone 5-9`` in one, ``--robots 1,3,6 --alone 1-4`` in another, each with its own
``--out``) and be merged here into the folder one run of all of them would have written:
``fleet.json``, ``fleet.md`` and the plot, losses against the merged references. A study of a lever
that acts only when robots share the GPU (``fleet_rate_share``, ``fleet_max_pending``, the fused
factor) takes its references from a study without it (``--references-only``), where it is shown not
to change a robot served alone.

Only the preset fields the fleet model reads are compared, and a field added to the harness after a
study ran is taken at the value that reproduces how it ran then (``Preset.BEFORE_IT_EXISTED``),
listed in ``preset_fields_defaulted``.

Studies that are not the same experiment are refused, naming what differs (sources, teacher,
student, its weights, classes, preset values, fused). A robot's reference alone, or an (N, policy)
run, present in several studies is the same seeded run, but not always the same figures: x264 does
not always encode a batch to the same bytes in two processes (seen at 64x32 and 64x48 here; batch
sizes decide transfer times and which frames the rate control samples next). The first study's
figures are kept (never an average of two runs) and every difference is recorded in the merged
``fleet.json`` (``differences``: the robot or run, each field's values) and printed: the spread
between two runs of one robot is the noise floor under the losses.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from ams_ros.eval.fleet import _add_loss, fleet_reads, rate_cap, write_study
from ams_ros.eval.merge import describe_difference
from ams_ros.eval.presets import Preset

#: fleet.json fields that must be equal for two studies to be one experiment.
SAME_STUDY = ("sources", "teacher", "student", "student_weights", "classes", "max_seconds", "preset", "fused")
#: preset fields that only act when robots share the GPU: a robot served alone runs the same with any value
#: (checked: fleet_rate_share where its ceiling for one robot is r_max, fleet_max_pending where no reference's
#: updates came that many periods late), so a study's references serve a study that differs only in these
REFERENCE_NEUTRAL = ("fleet_rate_share", "fleet_fused_step_factor", "fleet_fuse_max", "fleet_max_pending")


def is_fleet_folder(folder: str | Path) -> bool:
    return (Path(folder) / "fleet.json").exists()


def _robot_index(name: str) -> int:
    return int(name.removeprefix("robot")) if name.removeprefix("robot").isdigit() else 1 << 30


def _figures(run: dict) -> dict:
    """A run's own figures, without the losses (recomputed against the merged references)."""
    out = {k: v for k, v in run.items() if k not in ("mean_miou_loss", "worst_miou_loss")}
    out["robots"] = {n: {k: v for k, v in f.items() if k != "miou_loss"} for n, f in run["robots"].items()}
    return out


def _flat(fig: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in fig.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _differing(what: str, kept: dict, other: dict, kept_from: Path, other_from: Path) -> list[dict]:
    """[] when ``other`` equals ``kept``; else one record naming each field that differs, both values."""
    a, b = _flat(kept), _flat(other)
    fields_ = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    return [{"what": what, "kept_from": str(kept_from), "other": str(other_from), "fields": fields_}] if fields_ else []


def _load_study(folder: Path, filled: list[dict]) -> dict:
    """A study's fleet.json. Preset fields added to the harness after it ran are taken at the value that
    reproduces how it ran then (``Preset.BEFORE_IT_EXISTED``, else the default) and listed in ``filled``;
    fields the fleet model does not read are left out of the comparison."""
    s = json.loads((folder / "fleet.json").read_text())
    defaults = {**dataclasses.asdict(Preset("defaults")), **Preset.BEFORE_IT_EXISTED}
    missing = {k: v for k, v in defaults.items() if k not in s["preset"] and fleet_reads(k)}
    if missing:
        filled.append({"folder": str(folder), "fields": missing})
    s["preset"] = {k: v for k, v in {**s["preset"], **missing}.items() if fleet_reads(k)}
    return s


def _preset(fields_: dict) -> Preset:
    """The Preset of a study's (loaded) preset fields; those it lacks at their defaults."""
    known = {f.name for f in fields(Preset)}
    return Preset(**{k: v for k, v in fields_.items() if k in known})


def _mismatch(s: dict, s0: dict, ignore: Sequence[str] = ()) -> str:
    """What makes study ``s`` another experiment than ``s0`` (the preset fields in ``ignore`` aside); "" if nothing."""
    for key in SAME_STUDY:
        there, here = s.get(key), s0.get(key)
        if key == "preset" and ignore:
            there = {k: v for k, v in there.items() if k not in ignore}
            here = {k: v for k, v in here.items() if k not in ignore}
        if there != here:
            return describe_difference(key, there, here)
    return ""


def _check_references(folder: Path, s: dict, first: Path, s0: dict) -> None:
    """A study whose references serve ``s0``: the same experiment but for reference-neutral preset fields."""
    mismatch = _mismatch(s, s0, ignore=REFERENCE_NEUTRAL)
    if mismatch:
        raise ValueError(f"{folder}'s references cannot serve {first}: {mismatch} (only "
                         f"{', '.join(REFERENCE_NEUTRAL)} may differ)")
    slowest = max((f.get("update_delay_s") or 0.0 for f in s["alone"].values()), default=0.0)
    for p in (s["preset"], s0["preset"]):
        cap = p["fleet_max_pending"]
        if cap > 0 and slowest >= cap * p["update_period_s"]:
            raise ValueError(f"fleet_max_pending {cap}: a reference's updates came {slowest:g} s after its frames, so a "
                             f"robot alone may have had batches dropped; its reference is not the same run with another "
                             f"fleet_max_pending")
        if rate_cap(_preset(p), 1) < p["r_max"]:
            raise ValueError(f"fleet_rate_share caps a robot served alone below r_max {p['r_max']:g} at these costs: "
                             f"its reference is not the same run with and without it")


def merge_studies(folders: Sequence[str | Path], out: str | Path, plots: bool = True,
                  references: Sequence[str | Path] = ()) -> dict:
    """Merge finished ``ams-eval fleet`` folders of one experiment into ``out``; returns its fleet.json.
    ``references``: studies whose robots' references alone are taken (their runs are not), which may differ
    from the first study in reference-neutral preset fields only."""
    paths = [Path(f) for f in folders]
    refs = [Path(f) for f in references]
    if len(paths) + len(refs) < 2:
        raise ValueError(f"merge takes at least two fleet folders, got {len(paths) + len(refs)}")
    out = Path(out)
    if any(out.resolve() == p.resolve() for p in (*paths, *refs)):
        raise ValueError(f"the output folder {out} is one of the studies: write the merged study to a new folder")
    missing = [str(p) for p in (*paths, *refs) if not is_fleet_folder(p)]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no fleet.json; merge takes folders written by 'ams-eval fleet' "
                                f"(or, all of them, by 'ams-eval run')")
    if not paths:
        raise ValueError("merge needs at least one study whose runs it keeps besides --references-only")
    filled: list[dict] = []
    studies = [(p, _load_study(p, filled)) for p in paths]
    first, s0 = studies[0]
    alone: dict[str, dict] = {}
    runs: dict[tuple[int, str], dict] = {}
    origin: dict[object, Path] = {}
    policies: list[str] = []
    differences: list[dict] = []

    def take_references(folder: Path, s: dict) -> None:
        """Each robot's reference once (the first met); a later one with other figures is recorded."""
        for name, fig in s["alone"].items():
            if name in alone:
                differences.extend(_differing(f"{name} alone", alone[name], fig, origin[name], folder))
                continue
            alone[name], origin[name] = fig, folder

    for folder in refs:
        s = _load_study(folder, filled)
        _check_references(folder, s, first, s0)
        take_references(folder, s)
    for folder, s in studies:
        mismatch = _mismatch(s, s0)
        if mismatch:
            raise ValueError(f"{folder} is not the same experiment as {first}: {mismatch}; merge only studies of one "
                             f"set of sources, teacher, student and preset")
        take_references(folder, s)
        for run in s["runs"]:
            key = (int(run["n"]), str(run["policy"]))
            if key in runs:
                differences += _differing(f"N={key[0]} {key[1]}", _figures(runs[key]), _figures(run), origin[key], folder)
                continue
            runs[key] = json.loads(json.dumps(run))
            origin[key] = folder
        policies += [p for p in s["policies"] if p not in policies]
    order = {p: i for i, p in enumerate(policies)}
    study = {"robots": sorted({n for n, _ in runs}), "policies": policies, "fused": s0["fused"],
             "alone": dict(sorted(alone.items(), key=lambda kv: _robot_index(kv[0]))),
             "runs": [runs[k] for k in sorted(runs, key=lambda k: (k[0], order[k[1]]))],
             "partial": any(s.get("partial") for _, s in studies)}
    for run in study["runs"]:
        _add_loss(run, study["alone"])
    meta = {k: v for k, v in s0.items()
            if k not in (*study, "preset", "command", "started", "wall_seconds", "machine")}
    meta.update(command="; ".join(s.get("command", "") for _, s in studies if s.get("command")),
                started=min((s["started"] for _, s in studies if s.get("started")), default=None),
                machine=s0.get("machine"),
                wall_seconds_of_runs=round(sum(float(s.get("wall_seconds") or 0.0) for _, s in studies), 1),
                merged=_dt.datetime.now().isoformat(timespec="seconds"), differences=differences,
                references_from=[str(f) for f in refs], preset_fields_defaulted=filled,
                merged_from=[{"folder": str(f), "robots": s["robots"], "alone": list(s["alone"]),
                              "command": s.get("command"), "wall_seconds": s.get("wall_seconds")} for f, s in studies])
    write_study(out, study, _preset(s0["preset"]), meta, plots=plots)
    return json.loads((out / "fleet.json").read_text())
