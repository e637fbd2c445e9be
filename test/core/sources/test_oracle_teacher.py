"""The synthetic world's oracle teacher labels the world a source shows: it renders labels from
stream times, not pixels, so one oracle used for another world's frames labels them with the wrong
truth (the fleet evaluation did, labelling robot 2's ``synthetic:1`` with world 0's)."""

from __future__ import annotations

import numpy as np

from ams_ros.core.sources.synthetic import OracleTeacher, teacher_for_source, world_from_spec


def _agreement(teacher: OracleTeacher, spec: str) -> float:
    world = world_from_spec(spec, width=96, height=48)
    stamps = [1.0, 7.0, 13.0, 19.0]
    shown = [world.frame_at(t) for t in stamps]
    labels = teacher.label([img for img, _ in shown], stamps=stamps)
    return float(np.mean([np.mean(lab == truth) for lab, (_, truth) in zip(labels, shown)]))


def test_an_oracle_for_one_world_mislabels_another_and_teacher_for_source_follows_the_source():
    oracle = OracleTeacher("synthetic:0")
    wrong = _agreement(oracle, "synthetic:1")
    right = _agreement(teacher_for_source(oracle, "synthetic:1"), "synthetic:1")
    assert right > 0.9 and wrong < right - 0.1, (wrong, right)


def test_teacher_for_source_keeps_the_oracle_of_the_same_world_and_any_other_teacher():
    oracle = OracleTeacher("synthetic:2?shifts=20", noise=0.1, seed=3)
    assert teacher_for_source(oracle, "synthetic:2?shifts=20") is oracle
    other = teacher_for_source(oracle, "synthetic:5")
    assert (other.spec, other.noise, other.seed) == ("synthetic:5", 0.1, 3)
    assert teacher_for_source(oracle, "clip.mp4") is oracle
    not_an_oracle = object()
    assert teacher_for_source(not_an_oracle, "synthetic:1") is not_an_oracle


def test_the_cache_name_of_an_oracle_names_its_world():
    assert OracleTeacher("synthetic:0").cache_name != OracleTeacher("synthetic:1").cache_name
    assert OracleTeacher("synthetic:0").name == "oracle"  # reports and specs keep the short name
