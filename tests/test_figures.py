"""The per-label figures are declared once (chexcut/evaluation/figures.py): one more Figure in the registry shows up
in the evaluation JSON, the per-label CSV, the terminal tables, MLflow's metrics and the study report."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from chexcut.evaluation import figures, operating
from chexcut.evaluation.figures import Figure
from chexcut.labels import CHEXPERT_LABELS, COMPETITION_LABELS

N = 80


def mean_score(label, counts):
    """The mean probability of the label's counted rows, per replicate (row weights from the cluster counts)."""
    w = label.weights(counts)
    return w @ label.p / w.sum(1)


MEAN_SCORE = Figure("mean_score", "mean score", compute=mean_score)  # resampled, percentile CI, shown everywhere


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(figures, "PER_LABEL", figures.PER_LABEL + (MEAN_SCORE,))
    return MEAN_SCORE


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A CheXpert-layout valid.csv (one view per study) and a predictions CSV on it."""
    base = tmp_path_factory.mktemp("figures")
    root = base / "CheXpert-v1.0-small"
    root.mkdir()
    rng = np.random.default_rng(0)
    paths = [f"CheXpert-v1.0-small/valid/patient{70000 + i}/study1/view1_frontal.jpg" for i in range(N)]
    truth = pd.DataFrame({"Path": paths, "Sex": "Male", "Age": 50, "Frontal/Lateral": "Frontal", "AP/PA": "AP"})
    preds = pd.DataFrame({"Path": paths})
    for lab in CHEXPERT_LABELS:
        truth[lab] = (rng.random(N) < 0.3).astype(float)
        preds[lab] = np.round(1 / (1 + np.exp(-(truth[lab] - 0.5) * 2 - rng.normal(0, 1, N))), 6)
    truth.to_csv(root / "valid.csv", index=False)
    preds.to_csv(base / "predictions.csv", index=False)
    return base, root / "valid.csv", preds


def test_the_registry_keeps_the_existing_layout():
    assert [f.key for f in figures.in_section("calibration")] == ["brier", "ece", "ece_equal_mass", "intercept",
                                                                  "slope"]
    assert operating.FIGURES == ("sensitivity", "specificity", "ppv", "npv", "f1")
    assert [f.name for f in figures.in_table("calibration")] == ["Brier", "ECE", "recal. slope b",
                                                                 "recal. intercept a"]
    with pytest.raises(ValueError, match="section"):
        Figure("x", "x", section="elsewhere")


def test_one_declaration_reaches_json_csv_table_tracking_and_report(toy, evaluated, tmp_path):
    base, truth, preds = evaluated
    code, out, err = run_cli("evaluate", "--predictions", base / "predictions.csv", "--truth", truth,
                             "--bootstrap", "30", "--json", tmp_path / "e.json", "--csv-out", tmp_path / "e.csv")
    assert code == 0, err
    ev = json.loads((tmp_path / "e.json").read_text())
    # the evaluation JSON: each label's row has the figure and its CI, on the evaluation's resamples
    for row in ev["labels"]:
        want = preds[row["label"]].mean()
        assert row["mean_score"] == pytest.approx(want, abs=1e-9)
        assert row["mean_score_ci_low"] <= row["mean_score"] <= row["mean_score_ci_high"]
    assert "mean_score" not in ev["mean_competition"]  # not declared mean=True
    # the per-label CSV: its columns after AUROC's, before the comparison's
    csv = pd.read_csv(tmp_path / "e.csv")
    cols = list(csv.columns)
    assert cols[cols.index("ci_high") + 1:cols.index("delta")] == ["mean_score", "mean_score_ci_low",
                                                                    "mean_score_ci_high"]
    first = ev["labels"][0]
    assert csv.loc[0, "mean_score"] == pytest.approx(first["mean_score"])
    # the terminal: a table of the declared figures, with the CI
    assert "Per-label figures" in out and "mean score CI" in out
    assert f"{first['mean_score']:.3f}" in out and f"{first['mean_score_ci_low']:.3f} to" in out
    # MLflow: one metric per label
    logged = {}
    fake = SimpleNamespace(metrics=lambda values, step: logged.update(values), tags=lambda t: None,
                           artifact=lambda f: None, rd=SimpleNamespace(read_bench=lambda: None, eval=None))
    from chexcut.tracking import Tracker

    Tracker.log_evaluation(fake, ev)
    assert logged[f"eval_mean_score/{first['label']}"] == first["mean_score"]
    # the study report: its 5-task mean per run (report.md) and its per-label values (results.csv)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {
        "arch": "resnet18", "drop": 0, "labels": list(CHEXPERT_LABELS), "params": 1000, "weights": {"kind": "none"},
        "image_size": 320}, "train": {"seed": 0, "image_size": 320}}))
    (run / "eval.json").write_text(json.dumps(ev))
    code, _, err = run_cli("report", run, "--out", tmp_path / "rep", "--bootstrap", "10")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    five = np.mean([r["mean_score"] for r in ev["labels"] if r["label"] in COMPETITION_LABELS])
    assert "Per-label figures (mean over the 5 tasks)" in md and "mean score" in md and f"{five:.3f}" in md
    results = pd.read_csv(tmp_path / "rep" / "results.csv")
    assert "label_mean_score" in results.columns and "label_auroc" in results.columns
    assert first["label"] in results.loc[0, "label_mean_score"]


def test_a_figure_without_ci_and_outside_the_csv(monkeypatch, evaluated, tmp_path):
    quiet = Figure("mean_score", "mean score", compute=mean_score, resampled=False, csv=False, table=None)
    monkeypatch.setattr(figures, "PER_LABEL", figures.PER_LABEL + (quiet,))
    base, truth, _ = evaluated
    code, out, err = run_cli("evaluate", "--predictions", base / "predictions.csv", "--truth", truth,
                             "--bootstrap", "20", "--json", tmp_path / "e.json", "--csv-out", tmp_path / "e.csv")
    assert code == 0, err
    row = json.loads((tmp_path / "e.json").read_text())["labels"][0]
    assert "mean_score" in row and "mean_score_ci_low" not in row
    assert "mean_score" not in pd.read_csv(tmp_path / "e.csv").columns and "mean score" not in out
