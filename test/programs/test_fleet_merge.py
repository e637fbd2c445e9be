"""`ams-eval merge` of fleet studies (issue #31): N run side by side in separate processes merge into the
study one process would have written, and studies that are not one experiment are refused."""

from __future__ import annotations

import json

import pytest

from ams_ros.eval.cli import main as eval_main
from ams_ros.eval.fleet_merge import merge_studies

SPEC = "synthetic:0?shifts=20"
TINY = "width=64 height=48 eval_fps=1 iterations=2 batch_size=2 train_s_per_step=0.5 update_period_s=5"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fleet(out, robots: str, alone: str = "all") -> None:
    assert eval_main(["fleet", "--sources", SPEC, "--robots", robots, "--alone", alone, "--policies", "utility",
                      "--teacher", "oracle:0?shifts=20", "--max-seconds", "20", "--cache", "", "--quiet",
                      "--out", str(out), "--set", TINY]) == 0


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """N = 1 with robot1's reference, and N = 2 with robot2's only (`--alone 2`), as two processes would."""
    root = tmp_path_factory.mktemp("fleets")
    _fleet(root / "one", "1")
    _fleet(root / "two", "2", alone="2")
    return root


def _load(folder) -> dict:
    return json.loads((folder / "fleet.json").read_text())


def test_a_study_without_some_references_has_no_fleet_loss_until_merged(studies) -> None:
    two = _load(studies / "two")
    assert list(two["alone"]) == ["robot2"]
    run = two["runs"][0]
    assert "miou_loss" not in run["robots"]["robot1"] and "miou_loss" in run["robots"]["robot2"]
    assert run["mean_miou_loss"] is None and run["worst_miou_loss"] is None  # not a mean over some robots
    assert "| 2 | utility | - |" in (studies / "two" / "fleet.md").read_text()


def test_studies_of_other_n_merge_into_one_study_with_every_n_and_reference(studies, tmp_path) -> None:
    out = tmp_path / "merged"
    assert eval_main(["merge", str(studies / "one"), str(studies / "two"), "--out", str(out)]) == 0
    merged, one, two = _load(out), _load(studies / "one"), _load(studies / "two")
    # robot1's reference from the first study, robot2's from the second
    assert merged["alone"] == {"robot1": one["alone"]["robot1"], "robot2": two["alone"]["robot2"]}
    assert [(r["n"], r["policy"]) for r in merged["runs"]] == [(1, "utility"), (2, "utility")]
    assert merged["runs"][1]["robots"].keys() == two["runs"][0]["robots"].keys()
    for run in merged["runs"]:  # every loss against the merged references
        for name, fig in run["robots"].items():
            assert fig["miou_loss"] == round(merged["alone"][name]["miou_teacher"] - fig["miou_teacher"], 3)
        assert run["mean_miou_loss"] == round(sum(f["miou_loss"] for f in run["robots"].values()) / len(run["robots"]), 3)
    assert merged["robots"] == [1, 2] and not merged["partial"]
    assert [m["folder"] for m in merged["merged_from"]] == [str(studies / "one"), str(studies / "two")]
    md = (out / "fleet.md").read_text()
    assert "| 1 | utility |" in md and "| 2 | utility |" in md and "(of N up to 2 tested)" in md
    assert (out / "fleet_miou_loss.png").stat().st_size > 0


def test_a_reference_or_run_with_other_figures_in_another_study_is_kept_once_and_the_difference_recorded(
        studies, tmp_path) -> None:
    """x264 does not always encode a batch to the same bytes in two processes, so the same seeded run
    can differ a little: the first study's figures are kept, never averaged, and the difference is
    recorded field by field."""
    other = tmp_path / "other"
    other.mkdir()
    data = _load(studies / "one")
    data["alone"]["robot1"]["miou_teacher"] += 0.5
    data["runs"][0]["gpu_utilisation"] += 0.1
    (other / "fleet.json").write_text(json.dumps(data))
    merged = merge_studies([studies / "one", other], tmp_path / "merged")
    one = _load(studies / "one")
    assert merged["alone"] == one["alone"] and merged["runs"] == one["runs"]
    assert [(d["what"], d["fields"]) for d in merged["differences"]] == [
        ("robot1 alone", {"miou_teacher": [one["alone"]["robot1"]["miou_teacher"],
                                           data["alone"]["robot1"]["miou_teacher"]]}),
        ("N=1 utility", {"gpu_utilisation": [one["runs"][0]["gpu_utilisation"], data["runs"][0]["gpu_utilisation"]]})]
    assert merge_studies([studies / "one", studies / "one"], tmp_path / "same")["differences"] == []


def test_a_study_from_before_a_preset_field_existed_is_taken_at_the_fields_default_and_listed(studies, tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    data = _load(studies / "one")
    del data["preset"]["fleet_rate_share"]  # the harness had no such knob when it ran
    (older / "fleet.json").write_text(json.dumps(data))
    merged = merge_studies([older, studies / "two"], tmp_path / "merged")
    assert merged["preset_fields_defaulted"] == [{"folder": str(older), "fields": {"fleet_rate_share": False}}]
    data["preset"]["gate_margin"] = 9.0  # a field the fleet model does not read is not compared
    (older / "fleet.json").write_text(json.dumps(data))
    assert merge_studies([older, studies / "two"], tmp_path / "merged2")["differences"] == []
    data["preset"]["teacher_s"] = 0.1  # a field it had is still compared
    (older / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="teacher_s"):
        merge_studies([older, studies / "two"], tmp_path / "merged3")
    # a field whose default changed how the model runs is taken at what it was before it existed
    data = _load(studies / "one")
    del data["preset"]["fleet_max_pending"]  # every batch was labelled then
    (older / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"fleet_max_pending \(4 there, 0 in the first run\)"):
        merge_studies([older, studies / "two"], tmp_path / "merged4")


def test_references_from_a_study_that_labelled_every_batch_serve_one_that_drops_unless_a_reference_waited_that_long(
        studies, tmp_path) -> None:
    """fleet_max_pending (batches dropped beyond it) changes nothing for a robot alone whose updates never
    came as late as that many periods: no batch of it waited behind that many."""
    older = tmp_path / "older"
    older.mkdir()
    data = _load(studies / "one")
    del data["preset"]["fleet_max_pending"]  # every batch labelled
    (older / "fleet.json").write_text(json.dumps(data))
    merged = merge_studies([studies / "two"], tmp_path / "merged", references=[older])
    assert merged["alone"]["robot1"] == data["alone"]["robot1"]
    data["alone"]["robot1"]["update_delay_s"] = 4 * 5.0  # four periods late: it may have had batches dropped
    (older / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fleet_max_pending 4: a reference's updates came 20 s after its frames"):
        merge_studies([studies / "two"], tmp_path / "merged2", references=[older])


def test_a_study_with_its_rate_shared_takes_its_references_from_a_study_without(studies, tmp_path) -> None:
    """fleet_rate_share acts only when robots share the GPU (alone, a robot's ceiling is r_max at these
    costs), so the references of a study without it serve a study with it."""
    shared = tmp_path / "shared"
    assert eval_main(["fleet", "--sources", SPEC, "--robots", "2", "--alone", "none", "--policies", "utility",
                      "--teacher", "oracle:0?shifts=20", "--max-seconds", "20", "--cache", "", "--quiet",
                      "--out", str(shared), "--set", TINY + " fleet_rate_share=true"]) == 0
    merged = merge_studies([shared], tmp_path / "merged", references=[studies / "one", studies / "two"])
    one, two = _load(studies / "one"), _load(studies / "two")
    assert merged["alone"] == {"robot1": one["alone"]["robot1"], "robot2": two["alone"]["robot2"]}
    assert merged["preset"]["fleet_rate_share"] is True and [r["n"] for r in merged["runs"]] == [2]
    assert merged["runs"][0]["mean_miou_loss"] is not None
    assert merged["references_from"] == [str(studies / "one"), str(studies / "two")]
    # a field that does change a robot alone is refused, named
    data = _load(studies / "one")
    data["preset"]["teacher_s"] = 0.1
    other = tmp_path / "other"
    other.mkdir()
    (other / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"references cannot serve .*teacher_s \(0.1 there, 0.25 in the first run\)"):
        merge_studies([shared], tmp_path / "merged2", references=[other])


def test_studies_of_another_preset_or_kind_are_refused_naming_what_differs(studies, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    data = _load(studies / "two")
    data["preset"]["teacher_s"] = 0.1
    other.mkdir()
    (other / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'preset' differ in teacher_s \(0.1 there, 0.25 in the first run\)"):
        merge_studies([studies / "one", other], tmp_path / "merged")
    run = tmp_path / "run"
    run.mkdir()
    assert eval_main(["merge", str(studies / "one"), str(run), "--out", str(tmp_path / "merged")]) == 2
    assert f"{studies / 'one'} are 'ams-eval fleet' studies and {run} are not" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is one of the studies"):
        merge_studies([studies / "one", studies / "two"], studies / "two")
