"""A study's adaptation and label-budget axes (study plan --adapts/--label-fractions) and the report's how-much block:
learning curves with a fitted power law, the frontier against the best, calibration per adaptation."""

import json

import numpy as np
import pytest
from conftest import run_cli

from chexcut.errors import ChexcutError
from chexcut.study.howmuch import frontier, main_arm, power_law
from chexcut.study.plan import Grid, load_plan, plan_study, run_id
from chexcut.training.config import FinetuneOptions


def test_the_grid_crosses_adaptations_and_label_fractions_and_skips_what_a_drop_cannot_keep(phantom, tmp_path):
    plan = plan_study(tmp_path / "s", phantom, Grid(archs=("resnet18",), weights=("none",), drops=(0, 3),
                                                    adapts=("probe", "LAST:2", "full"), label_fractions=(0.25, 1)))
    ids = [r["id"] for r in plan["runs"]]
    # drop 3 keeps 1 block of 4: last:2 is skipped there, with the reason; 2 drops x 3 adapts x 2 fractions - 2
    assert len(ids) == len(set(ids)) == 10 and plan["adapts"] == ["probe", "last:2", "full"]
    assert any("drop 3 --adapt last:2 (it keeps 1 block)" in s for s in plan["skipped"])
    assert "resnet18-none-d0-s0" in ids and "resnet18-none-d0-last2-f0.25-s0" in ids  # defaults leave the id as before
    run = next(r for r in plan["runs"] if r["id"] == "resnet18-none-d3-probe-f0.25-s0")
    assert (run["adapt"], run["label_fraction"]) == ("probe", 0.25)
    assert run_id("a", "w", 1, 2, "lora:8", 0.1) == "a-w-d1-lora8-f0.1-s2"


def test_each_run_trains_its_cell_of_the_axes(phantom, tmp_path, monkeypatch):
    import chexcut.training.loop as loop
    from chexcut.study.execute import execute

    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "resnet18",
                         "--weights", "none", "--drops", "1", "--adapts", "last:1,probe", "--label-fractions", "0.5,1",
                         "--epochs", "3")
    assert rc == 0, err
    seen = []
    monkeypatch.setattr(loop, "finetune", lambda run, emit=None: seen.append(run))
    plan = load_plan(tmp_path / "s")
    for run in plan["runs"]:
        execute(tmp_path / "s", run, plan, step="finetune")
    assert [(r.cfg.adapt, r.cfg.label_fraction, r.cfg.epochs) for r in seen] == [
        ("last:1", 0.5, 3), ("last:1", 1.0, 3), ("probe", 0.5, 3), ("probe", 1.0, 3)]


@pytest.mark.parametrize("args, message", [
    (["--adapts", "probe,half"], "--adapt 'half'"), (["--label-fractions", "0.1,0"], "--label-fractions is a share"),
    (["--label-fractions", "0.5,x"], "--label-fractions takes numbers"),
    (["--adapts", "probe,PROBE"], "--adapts lists probe and PROBE"),
    (["--label-fractions", "0.5,0.50"], "--label-fractions lists 0.5 twice"),
    (["--label-fractions", "0.1234561,0.1234564"], "which name the same runs (0.123456)"),
    (["--adapt", "probe"], "No such option: --adapt")])
def test_bad_axes_are_one_line_and_plan_nothing(phantom, tmp_path, args, message):
    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "resnet18",
                         "--weights", "none", *args)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_shared_options_cannot_hold_an_axis():
    with pytest.raises(ChexcutError, match="grid axis"):
        FinetuneOptions(train={"adapt": "probe"})


def test_a_format_3_plan_moves_its_shared_adaptation_into_its_runs(phantom, tmp_path):
    s = tmp_path / "s"
    plan = plan_study(s, phantom, Grid(archs=("resnet18",), weights=("none",), drops=(0,)))
    old = {**plan, "version": 3, "runs": [{k: v for k, v in r.items() if k not in ("adapt", "label_fraction")}
                                          for r in plan["runs"]]}
    old["finetune_options"] = {**plan["finetune_options"], "train": {"adapt": "probe", "label_fraction": 0.5}}
    del old["adapts"], old["label_fractions"]
    (s / "plan.json").write_text(json.dumps(old))
    read = load_plan(s)
    assert read["runs"][0]["adapt"] == "probe" and read["runs"][0]["label_fraction"] == 0.5
    assert read["finetune_options"]["train"] == {} and read["adapts"] == ["probe"]


def test_a_replan_never_keeps_a_run_folder_trained_as_another_cell(phantom, tmp_path):
    """A format-3 plan's --adapt lora:4 run has the id (no suffix) a format-4 plan gives full fine-tuning: planning
    over it with --force is refused while the folder holds that run, as for any changed setting."""
    s = tmp_path / "s"
    args = ["study", "plan", "--data", phantom, "--out", s, "--archs", "resnet18", "--weights", "none", "--drops", "0"]
    assert run_cli(*args)[0] == 0
    plan = json.loads((s / "plan.json").read_text())
    old = {**plan, "version": 3, "runs": [{k: v for k, v in r.items() if k not in ("adapt", "label_fraction")}
                                          for r in plan["runs"]]}
    old["finetune_options"] = {**plan["finetune_options"], "train": {"adapt": "lora:4"}}
    del old["adapts"], old["label_fractions"]
    (s / "plan.json").write_text(json.dumps(old))
    (s / "runs" / "resnet18-none-d0-s0").mkdir(parents=True)
    (s / "runs" / "resnet18-none-d0-s0" / "log.txt").write_text("trained with lora:4")
    rc, _, err = run_cli(*args, "--force")
    assert rc == 2 and "other settings" in err and err.count("\n") == 1
    assert json.loads((s / "plan.json").read_text())["version"] == 3  # the plan kept


def test_the_power_law_recovers_its_parameters_and_marks_extrapolation():
    b, c = 3.0, 0.4
    points = [{"patients": n, "auroc": 1 - b * n ** -c} for n in (50, 200, 1000)]
    fit = power_law(points, target=0.9)
    assert fit["b"] == pytest.approx(b) and fit["c"] == pytest.approx(c) and fit["r2"] == pytest.approx(1)
    assert fit["patients_for_target"] == pytest.approx((b / 0.1) ** (1 / c)) and fit["extrapolation"] is True
    inside = power_law(points, target=1 - b * 500 ** -c)
    assert inside["patients_for_target"] == pytest.approx(500) and inside["extrapolation"] is False
    flat = power_law([{"patients": 10, "auroc": 0.8}, {"patients": 20, "auroc": 0.7}], target=0.9)
    assert flat["patients_for_target"] is None and "does not rise" in flat["note"]
    nearly = power_law([{"patients": 8, "auroc": 0.70}, {"patients": 27, "auroc": 0.7001}], target=0.9)
    assert nearly["patients_for_target"] is None and "too flat" in nearly["note"]  # (it overflowed)
    one = power_law([{"patients": 10, "auroc": 0.8}, {"patients": None, "auroc": 0.7}], target=0.9)
    assert one["b"] is None and "two budgets" in one["note"]


def _config(name, trainable, auroc, noninferior, latency=None):
    arch, adapt = name.split("/")
    return {"arch": arch, "weights": "imagenet", "drop": 0, "adapt": adapt, "label_fraction": 1.0, "auroc": auroc,
            "trainable_params": trainable, "latency_ms": latency, "noninferior_to_best": noninferior,
            "delta_vs_best": None}


def test_the_frontier_and_the_smallest_configuration_non_inferior_to_the_best():
    rows = [_config("a/full", 1000, 0.90, True), _config("a/probe", 10, 0.80, False),
            _config("a/last:1", 300, 0.89, True), _config("b/full", 2000, 0.85, False)]
    f = frontier(rows)
    assert f["trainable"]["front"] == ["a/imagenet/drop0/probe", "a/imagenet/drop0/last:1", "a/imagenet/drop0/full"]
    assert f["trainable"]["smallest_noninferior"]["configuration"] == "a/imagenet/drop0/last:1"
    assert f["latency"] is None  # not every configuration was benched


def test_the_papers_findings_use_full_training_on_the_largest_budget():
    assert main_arm({("probe", 1.0), ("full", 0.1), ("full", 0.5)}) == ("full", 0.5)
    assert main_arm({("probe", 1.0), ("last:1", 0.1), ("probe", 0.2)}) == ("last:1", 0.1)


def test_a_study_of_two_fractions_and_two_adaptations_reports_its_learning_curves_and_frontier(phantom, tmp_path):
    """The issue's study: 2 label fractions x 2 adaptations on phantom data, run and reported."""
    s = tmp_path / "s"
    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", s, "--archs", "resnet18", "--weights", "none",
                         "--drops", "2", "--adapts", "probe,full", "--label-fractions", "0.3,1", "--epochs", "1",
                         "--image-size", "32", "--batch-size", "16", "--workers", "0", "--max-steps", "3",
                         "--val-every", "3", "--bootstrap", "40", "--device", "cpu")
    assert rc == 0, err
    from chexcut.study.execute import execute

    plan = load_plan(s)
    for run in plan["runs"]:  # in this process (`study run`, which starts one per run, is test_study's)
        assert execute(s, run, plan) == "done"
    rc, _, err = run_cli("probe", "resnet18", "--weights", "none", "--data", phantom, "--out", s / "probes" / "r18",
                         "--image-size", "32", "--bootstrap", "40", "--workers", "0", "--device", "cpu", "-q")
    assert rc == 0, err  # a probe in the study folder: its depth curve beside the fine-tuned truncation
    rc, out, err = run_cli("report", s, "--out", tmp_path / "r", "--bootstrap", "60", "--target-auroc", "0.8")
    assert rc == 0, err
    report = json.loads((tmp_path / "r" / "results.json").read_text())
    h = report["how_much"]
    assert report["arm"] == {"adapt": "full", "label_fraction": 1.0, "runs": 1} and len(report["results"]) == 1
    configs = {(c["adapt"], c["label_fraction"]): c for c in h["configurations"]}
    assert set(configs) == {("probe", 0.3), ("probe", 1.0), ("full", 0.3), ("full", 1.0)}
    assert configs["probe", 1.0]["trainable_params"] < configs["full", 1.0]["trainable_params"]
    assert configs["full", 0.3]["train_patients"] < configs["full", 1.0]["train_patients"]
    assert sum(c["best"] for c in h["configurations"]) == 1 and h["target_auroc"] == 0.8
    assert all(c["p_vs_best"] is not None for c in h["configurations"] if not c["best"])  # paired on the same rows
    assert [(c["adapt"], len(c["points"])) for c in h["learning_curves"]] == [("full", 2), ("probe", 2)]
    assert h["frontier"]["trainable"]["front"] and {c["adapt"] for c in h["calibration"]} == {"full", "probe"}
    assert all(c["ece"] is not None for c in h["calibration"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Learning curves" in md and "## Calibration by adaptation" in md and "Frontier of trainable" in md
    assert (tmp_path / "r" / "learning_curves.png").is_file() and (tmp_path / "r" / "frontier.png").is_file()
    probe = json.loads((s / "probes" / "r18" / "probe.json").read_text())
    [beside] = report["probes"]
    assert beside["comparable"] and (beside["arch"], beside["weights"]) == ("resnet18", "none")
    by_block = {b["block"]: b for b in beside["blocks"]}
    assert by_block[2]["drop"] == 2 and by_block[2]["finetuned_auroc"] == report["results"][0]["auroc"]
    assert by_block[2]["probe_auroc"] == probe["blocks"][1]["auroc"] and by_block[1]["finetuned_auroc"] is None
    assert "## Linear probe at every depth" in md and (tmp_path / "r" / "probe_vs_finetuned.png").is_file()
    rc, _, err = run_cli("report", s, "--target-auroc", "1.5")
    assert rc == 2 and "--target-auroc" in err and err.count("\n") == 1


def test_power_law_fits_like_numpy_least_squares_on_noisy_points():
    rng = np.random.default_rng(0)
    n = np.array([30, 100, 300, 1000])
    auroc = 1 - 2.0 * n ** -0.3 * np.exp(rng.normal(0, 0.05, len(n)))
    fit = power_law([{"patients": int(a), "auroc": float(b)} for a, b in zip(n, auroc)], target=None)
    slope, intercept = np.polyfit(np.log(n), np.log(1 - auroc), 1)
    assert fit["c"] == pytest.approx(-slope) and fit["b"] == pytest.approx(np.exp(intercept))
    assert fit["patients_for_target"] is None and 0 < fit["r2"] < 1


@pytest.mark.parametrize("field, value", [("label_fraction", "all"), ("label_fraction", 0), ("adapt", "half")])
def test_a_run_whose_config_names_no_budget_or_adaptation_is_listed_not_used(trained_run, tmp_path, field, value):
    import shutil

    from chexcut.study.collect import collect

    run = shutil.copytree(trained_run, tmp_path / "r")
    assert run_cli("evaluate", run, "--bootstrap", "0", "--json", run / "eval.json", "-q")[0] == 0
    config = json.loads((run / "config.json").read_text())
    config["train"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    found = collect([run])
    assert not found.runs and "damaged config.json" in found.incomplete[0]["reason"]


def test_a_lora_axis_without_peft_is_refused_before_anything_is_planned(phantom, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # as if the extra were not installed
    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "resnet18",
                         "--weights", "none", "--adapts", "full,lora:8")
    assert rc == 2 and "needs peft" in err and err.count("\n") == 1 and not (tmp_path / "s").exists()
    monkeypatch.undo()
    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "resnet18",
                         "--weights", "none", "--adapts", "full,lora:8")
    assert rc == 0 and "resnet18-none-d0-lora8-s0" in {r["id"] for r in load_plan(tmp_path / "s")["runs"]}
