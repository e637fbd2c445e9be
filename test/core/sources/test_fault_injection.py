"""The fault benchmarks' lossy link (issue #13): seeded, repeatable, off by default, and it
drops, duplicates and reorders the fractions it is given."""

from __future__ import annotations

import pytest

from ams_ros.core.sources.fault_injection import DELIVER, DROP, DUPLICATE, REORDER, FaultConfig, FaultyLink


pytestmark = pytest.mark.ros


def _run(config: FaultConfig, n: int) -> tuple[list[int], FaultyLink]:
    link: FaultyLink[int] = FaultyLink(config)
    out: list[int] = []
    for i in range(n):
        out += link.push(i)[1]
    return out, link


def test_the_default_link_delivers_every_message_once_in_order():
    out, link = _run(FaultConfig(), 500)
    assert out == list(range(500))
    assert link.counts[DELIVER] == 500


def test_a_twenty_percent_drop_loses_about_a_fifth_and_keeps_the_order():
    out, link = _run(FaultConfig(drop=0.2, seed=3), 5000)
    assert out == sorted(out) and len(set(out)) == len(out)
    assert 0.17 < 1 - len(out) / 5000 < 0.23
    assert link.counts[DROP] == 5000 - len(out)


def test_the_same_seed_makes_the_same_decisions_and_another_seed_others():
    cfg = FaultConfig(drop=0.2, duplicate=0.1, reorder=0.1, seed=7)
    assert _run(cfg, 300)[0] == _run(cfg, 300)[0]
    assert _run(cfg, 300)[0] != _run(FaultConfig(drop=0.2, duplicate=0.1, reorder=0.1, seed=8), 300)[0]


def test_a_duplicated_message_is_delivered_twice_in_a_row():
    link: FaultyLink[str] = FaultyLink(FaultConfig(duplicate=1.0))
    assert link.push("a") == (DUPLICATE, ["a", "a"])


def test_a_reordered_message_arrives_right_after_the_next_one():
    fates = iter([DELIVER, REORDER, DELIVER, REORDER, REORDER, DUPLICATE, DROP])

    class Scripted(FaultyLink):
        def decide(self) -> str:
            return next(fates)

    link: FaultyLink[str] = Scripted(FaultConfig(reorder=0.5))
    out = [m for msg in "abcdefg" for m in link.push(msg)[1]]
    assert out == ["a", "c", "b", "f", "f", "d", "e"]


def test_a_seeded_reorder_fraction_swaps_messages_but_loses_none():
    out, link = _run(FaultConfig(reorder=0.3, seed=1), 1000)
    assert out != sorted(out) and len(set(out)) == len(out)
    assert 0.25 < link.counts[REORDER] / 1000 < 0.35


def test_only_a_message_still_held_at_the_end_is_missing():
    out, link = _run(FaultConfig(reorder=0.3, seed=1), 1000)
    assert len(out) + link.holding == 1000
    assert out != sorted(out)


@pytest.mark.parametrize("kwargs", [{"drop": -0.1}, {"duplicate": 1.5}, {"drop": 0.6, "reorder": 0.6}])
def test_fractions_outside_zero_one_or_adding_up_past_one_are_refused_with_the_value(kwargs):
    with pytest.raises(ValueError, match=r"fault injection fraction|add up to"):
        FaultConfig(**kwargs)


def test_the_nodes_declare_the_fault_parameters_off_by_default():
    from ros_helpers import require_ros

    require_ros()
    from ams_ros.nodes.edge import camera_sampler, model_patcher

    patcher = {p.name: p.default for p in model_patcher.PARAMS}
    sampler = {p.name: p.default for p in camera_sampler.PARAMS}
    for name in ("fault_drop_updates", "fault_duplicate_updates", "fault_reorder_updates"):
        assert patcher[name] == 0.0 and isinstance(patcher[name], float)
    assert sampler["fault_drop_batches"] == 0.0 and sampler["start_s"] == 0.0
    assert patcher["fault_seed"] == sampler["fault_seed"] == 0
    assert not FaultConfig().active
