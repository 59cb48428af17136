"""Evaluating the way chest X-ray papers report: the public CheXpert test-set files as they are (a `Study` key,
5 columns, prefixes), subgroups with clustered gaps, calibration and average precision, against scikit-learn
and synthetic data with known answers."""

import json
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from conftest import public_truth, run_cli
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from chexcut.errors import ChexcutError
from chexcut.evaluation import calibration as cal
from chexcut.evaluation.evaluate import EvalRows, evaluate
from chexcut.evaluation.predictions import canonical_key
from chexcut.labels import COMPETITION_LABELS


def _evalrows(y, groups=None, patient=None):
    n = len(y)
    y = np.asarray(y, dtype=np.float64).reshape(n, -1)
    ids = np.arange(n) if patient is None else np.asarray(patient)
    labels = tuple(COMPETITION_LABELS[: y.shape[1]])
    return EvalRows([f"p{i}" for i in range(n)], labels, y, np.ones_like(y), ids.astype(str), ids.astype(str),
                   groups=groups)


def test_figures_equal_scikit_learn_also_with_bootstrap_weights():
    rng = np.random.default_rng(0)
    n = 600
    p = np.round(rng.random(n), 2)  # ties: scikit-learn treats tied scores as one threshold
    y = (rng.random(n) < p).astype(float)
    lc = cal.LabelCalibration(y, p, np.arange(n))
    one = lc.figures(np.ones((1, n)))
    assert one["average_precision"][0] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert one["brier"][0] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    w = rng.integers(0, 4, size=(3, n)).astype(np.float64)  # a replicate's row weights (draw counts)
    got = lc.figures(w)
    for r in range(3):
        assert got["average_precision"][r] == pytest.approx(average_precision_score(y, p, sample_weight=w[r]), abs=1e-9)
        assert got["brier"][r] == pytest.approx(brier_score_loss(y, p, sample_weight=w[r]), abs=1e-9)
    x = np.log(p.clip(1e-7, 1 - 1e-7) / (1 - p.clip(1e-7, 1 - 1e-7)))
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(x[:, None], y)
    assert lc.fit[0, 1] == pytest.approx(lr.coef_[0, 0], abs=1e-6)
    assert lc.fit[0, 0] == pytest.approx(lr.intercept_[0], abs=1e-6)
    # the reliability bins: equal-mass exactly scikit-learn's; equal-width on scores off the edges
    for bins, q, strategy in ((cal.mass_bins(p), p, "quantile"), (None, None, "uniform")):
        if bins is None:
            q = rng.random(n) * 0.999
            q[np.isclose((q * 10) % 1, 0)] += 1e-6
            bins = cal.width_bins(q)
        yy = (rng.random(n) < q).astype(float) if strategy == "uniform" else y
        rel = cal.reliability(yy, q, bins)
        true, pred = calibration_curve(yy, q, n_bins=10, strategy=strategy)
        assert np.abs(np.array([b["rate"] for b in rel]) - true).max() < 1e-9
        assert np.abs(np.array([b["mean_p"] for b in rel]) - pred).max() < 1e-9
    assert cal.width_bins(np.array([0.1, 0.3, 0.7, 0.9, 1.0, 0.0]).tolist()).tolist() == [1, 3, 7, 9, 9, 0]


def test_subgroup_aurocs_equal_scikit_learn_on_the_subset():
    rng = np.random.default_rng(1)
    n = 400
    y = rng.random((n, 2)) < 0.3
    s = y * 0.8 + rng.random((n, 2))
    sex = np.array(["Female", "Male"])[rng.integers(0, 2, n)].astype(object)
    es = _evalrows(y, groups={"Sex": sex})
    from chexcut.evaluation.settings import Statistics

    r = evaluate(es, s, Statistics(bootstrap=200, by=("Sex",)))
    for g in r["subgroups"]:
        sel = sex == g["group"]
        assert g["n"] == int(sel.sum())
        for j, row in enumerate(g["labels"]):
            assert row["auroc"] == pytest.approx(roc_auc_score(y[sel, j], s[sel, j]), abs=1e-12)
            assert row["average_precision"] == pytest.approx(average_precision_score(y[sel, j], s[sel, j]), abs=1e-12)
            assert row["ci_low"] < row["auroc"] < row["ci_high"]
    gap = next(x for x in r["subgroup_gaps"] if x["label"] == COMPETITION_LABELS[0])
    a, b = r["subgroups"][0]["labels"][0]["auroc"], r["subgroups"][1]["labels"][0]["auroc"]
    assert gap["groups"] == ["Female", "Male"] and gap["delta"] == pytest.approx(a - b, abs=1e-12)


def _binormal(rng, n, auc, prevalence=0.4):
    """Scores with a population AUROC of ``auc`` (binormal, unit variances)."""
    y = rng.random(n) < prevalence
    d = np.sqrt(2) * NormalDist().inv_cdf(auc)
    return y, rng.normal(size=n) + d * y


def test_a_set_gap_is_found_and_a_null_gap_rejects_at_about_alpha():
    from chexcut.evaluation.settings import Statistics

    rng = np.random.default_rng(2)
    ya, sa = _binormal(rng, 2500, 0.85)
    yb, sb = _binormal(rng, 2500, 0.75)
    es = _evalrows(np.r_[ya, yb], groups={"Site": np.array(["a"] * 2500 + ["b"] * 2500, dtype=object)})
    r = evaluate(es, np.r_[sa, sb][:, None], Statistics(bootstrap=500, by=("Site",), calibration=False))
    gap = next(x for x in r["subgroup_gaps"] if x["label"] == "mean_competition")
    assert gap["ci_low"] < 0.10 < gap["ci_high"] and gap["ci_low"] > 0 and gap["p"] < 0.01, gap
    rejected = 0
    for k in range(200):  # the same model in two groups: p < 0.05 in about 5% of data sets
        y, s = _binormal(rng, 300, 0.8)
        es = _evalrows(y, groups={"Site": np.array(["a", "b"] * 150, dtype=object)})
        r = evaluate(es, s[:, None], Statistics(bootstrap=200, by=("Site",), calibration=False, seed=k))
        rejected += next(x for x in r["subgroup_gaps"] if x["label"] == "mean_competition")["p"] < 0.05
    print("null rejection rate", rejected / 200)
    assert 0.01 <= rejected / 200 <= 0.11


def test_a_calibrated_model_has_small_ece_and_unit_slope_an_overconfident_one_does_not():
    from chexcut.evaluation.settings import Statistics

    rng = np.random.default_rng(3)
    p = rng.beta(1, 3, 6000)
    y = rng.random(6000) < p
    good = evaluate(_evalrows(y), p[:, None], Statistics(bootstrap=300))["calibration"]["labels"][0]
    assert good["ece"] < 0.025 and good["slope_ci_low"] < 1 < good["slope_ci_high"]
    assert good["intercept_ci_low"] < 0 < good["intercept_ci_high"]
    logit = np.log(p / (1 - p))
    over = 1 / (1 + np.exp(-2.5 * logit))  # same ranking, far too confident
    bad = evaluate(_evalrows(y), over[:, None], Statistics(bootstrap=300))["calibration"]["labels"][0]
    assert bad["ece"] > 0.08 and bad["slope_ci_high"] < 0.5
    sep = evaluate(_evalrows([0, 0, 1, 1] * 10), np.array([0.1, 0.2, 0.8, 0.9] * 10)[:, None],
                   Statistics(bootstrap=50))["calibration"]["labels"][0]
    assert sep["slope"] is None and "separated" in sep["recalibration_note"]


def test_canonical_keys():
    assert canonical_key("CheXpert-v1.0-small/test/patient1/study1/") == "CheXpert-v1.0/test/patient1/study1"
    assert canonical_key(" CheXpert-v1.0/valid/patient2/study1/view1_frontal.jpg") == \
        "CheXpert-v1.0/valid/patient2/study1/view1_frontal.jpg"


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """Files shaped like rajpurkarlab/cheXpert-test-set-labels: groundtruth.csv (Study + 14 labels, 500 studies
    of 500 patients) and two leaderboard-style prediction files (Study + the 5 tasks), one holding logits."""
    d = tmp_path_factory.mktemp("public")
    rng = np.random.default_rng(4)
    n = 500
    study, truth = public_truth(d, rng, n)
    a, b = pd.DataFrame({"Study": study}), pd.DataFrame({"Study": study})
    for lab in COMPETITION_LABELS:
        a[lab] = 1 / (1 + np.exp(-(2.2 * truth[lab] - 1.1 + rng.normal(0, 1, n))))
        b[lab] = 1.2 * truth[lab] + rng.normal(0, 1, n)  # logits: outside [0, 1]
    a.to_csv(d / "alpha_predictions.csv", index=False)
    b.to_csv(d / "beta_predictions.csv", index=False)
    small = a.copy()
    small["Study"] = [s.replace("CheXpert-v1.0/", "CheXpert-v1.0-small/") + "/" for s in study]
    small.to_csv(d / "small_prefix.csv", index=False)
    images = pd.DataFrame({"Path": [f"{s}/view{v}_frontal.jpg" for s in study for v in (1, 2)]})
    for lab in COMPETITION_LABELS:
        images[lab] = np.repeat(a[lab].to_numpy(), 2) * np.tile([1.0, 0.5], n)  # view 1 holds each study's max
    images.to_csv(d / "per_image.csv", index=False)
    pd.DataFrame({"Study": study, "Sex": rng.choice(["Female", "Male"], n), "Age": rng.integers(18, 95, n)}).to_csv(
        d / "demographics.csv", index=False)
    return d


def _eval(*args):
    rc, out, err = run_cli("evaluate", *args, "--json", "-")
    assert rc == 0, err
    return json.loads(out), err


def test_public_files_evaluate_and_compare_without_renaming(public):
    d = public
    r, _ = _eval("--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "300")
    assert r["n"] == 500 and [x["label"] for x in r["labels"]] == list(COMPETITION_LABELS)
    assert r["mean_competition"]["labels"] == 5 and r["mean_competition"]["average_precision"] > 0.5
    truth = pd.read_csv(d / "groundtruth.csv")
    preds = pd.read_csv(d / "alpha_predictions.csv")
    for row in r["labels"]:
        assert row["auroc"] == pytest.approx(roc_auc_score(truth[row["label"]], preds[row["label"]]), abs=1e-12)
    c, _ = _eval("--predictions", d / "beta_predictions.csv", "--truth", d / "groundtruth.csv", "--logits",
                 "--compare", d / "alpha_predictions.csv", "--method", "delong", "--bootstrap", "200")
    assert c["compare"]["mean_competition"]["delta"] < 0 and c["calibration"]["probabilities"].startswith("sigmoid")
    for other in ("small_prefix.csv", "per_image.csv"):  # -small/ prefix and a trailing slash; image-level rows
        o, err = _eval("--predictions", d / other, "--truth", d / "groundtruth.csv", "--bootstrap", "0")
        assert [x["auroc"] for x in o["labels"]] == pytest.approx([x["auroc"] for x in r["labels"]], abs=1e-12)
    assert any("max over its images" in n for n in o["notes"])
    sub, _ = _eval("--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--labels",
                   "Edema,Cardiomegaly", "--bootstrap", "0")
    assert [x["label"] for x in sub["labels"]] == ["Edema", "Cardiomegaly"] and sub["mean_competition"]["labels"] == 2


def test_public_files_by_sex_and_age_with_plots(public, tmp_path):
    d = public
    r, _ = _eval("--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--groups",
                 d / "demographics.csv", "--by", "Sex,Age", "--age-bins", "0,40,60,80,200", "--bootstrap", "200",
                 "--plots", tmp_path / "plots")
    groups = [(s["by"], s["group"]) for s in r["subgroups"]]
    assert groups == [("Sex", "Female"), ("Sex", "Male"), ("Age", "[0, 40)"), ("Age", "[40, 60)"),
                      ("Age", "[60, 80)"), ("Age", "[80, 200)")]
    assert sum(s["n"] for s in r["subgroups"] if s["by"] == "Age") == 500
    assert len([g for g in r["subgroup_gaps"] if g["label"] == "mean_competition"]) == 1 + 6
    files = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"edema-roc.png", "edema-pr.png", "edema-reliability.png", "edema-roc-by-sex.png"} <= files
    assert len(r["plots"]) == len(files)


def test_mismatches_are_one_line(public, tmp_path):
    d = public
    truth = pd.read_csv(d / "groundtruth.csv")
    short = pd.read_csv(d / "alpha_predictions.csv").iloc[:-3]
    short.to_csv(tmp_path / "short.csv", index=False)
    both = pd.concat([pd.read_csv(d / "alpha_predictions.csv").iloc[:2], pd.read_csv(d / "small_prefix.csv").iloc[:1]])
    both.to_csv(tmp_path / "dup.csv", index=False)
    truth.rename(columns={"Study": "Exam"}).to_csv(tmp_path / "exam.csv", index=False)
    cases = [
        (["--predictions", tmp_path / "short.csv", "--truth", d / "groundtruth.csv"], "3 of 500 truth rows have no"),
        (["--predictions", tmp_path / "dup.csv", "--truth", d / "groundtruth.csv"], "1 duplicated Study keys"),
        (["--predictions", d / "alpha_predictions.csv", "--truth", tmp_path / "exam.csv"], "--key-col"),
        (["--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--by", "Sex"],
         "--by Sex: no such column"),
        (["--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--groups",
          d / "demographics.csv", "--by", "Age"], "--age-bins"),
        (["--predictions", d / "alpha_predictions.csv", "--truth", d / "groundtruth.csv", "--labels", "Fracture"],
         "has no column Fracture"),
    ]
    for args, msg in cases:
        rc, _, err = run_cli("evaluate", *args)
        assert rc == 2 and msg in err and err.count("\n") == 1, (args, err)
    extra = pd.concat([pd.read_csv(d / "alpha_predictions.csv"),
                       pd.DataFrame({"Study": ["CheXpert-v1.0/test/patient1/study9"], **{k: [0.5] for k in COMPETITION_LABELS}})])
    extra.to_csv(tmp_path / "extra.csv", index=False)
    r, _ = _eval("--predictions", tmp_path / "extra.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "0")
    assert any("1 predictions rows have no truth row" in n and "patient1/study9" in n for n in r["notes"])
    with pytest.raises(ChexcutError, match="--key-col"):
        from chexcut.evaluation.predictions import read_predictions

        read_predictions(tmp_path / "exam.csv")


def test_a_study_evaluates_by_subgroup_and_the_report_shows_it(tmp_path):
    from chexcut.data.phantom import make_phantom

    make_phantom(tmp_path / "ph", n=160, image_size=32, seed=0)
    rc, _, err = run_cli("study", "plan", "--data", tmp_path / "ph", "--out", tmp_path / "s", "--archs", "resnet18",
                         "--weights", "none", "--drops", "2", "--bootstrap", "50", "--by", "Sex,Age", "--age-bins",
                         "0,50,200", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0")
    assert rc == 0, err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["statistics"]["by"] == ["Sex", "Age"]
    rc, _, err = run_cli("study", "run", tmp_path / "s")
    assert rc == 0, err[-2000:]
    ev = json.loads((tmp_path / "s" / plan["runs"][0]["run_dir"] / "eval.json").read_text())
    assert {(g["by"], g["group"]) for g in ev["subgroups"]} <= {("Sex", "Male"), ("Sex", "Female"),
                                                                ("Age", "[0, 50)"), ("Age", "[50, 200)")}
    assert ev["calibration"]["labels"] and "average_precision" in ev["labels"][0]
    rc, out, err = run_cli("report", tmp_path / "s", "--out", tmp_path / "rep", "--bootstrap", "50")
    assert rc == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Subgroups" in md and "| Sex |" in md and "## Calibration" in md
    rc, _, err = run_cli("study", "plan", "--data", tmp_path / "ph", "--out", tmp_path / "s2", "--by", "Age")
    assert rc == 2 and "--age-bins" in err


def test_plot_names_never_collide_and_age_bins_are_finite(tmp_path):
    """Labels whose file names would collide (Edema / EDEMA, a/b / a b) get distinct plots; --age-bins with a
    non-finite edge is one line."""
    from pathlib import Path

    from chexcut.evaluation.plots import unique_slugs

    assert unique_slugs(["Edema", "EDEMA", "a/b", "a b", "a_b"]) == {
        "Edema": "edema", "EDEMA": "edema-2", "a/b": "a_b", "a b": "a_b-2", "a_b": "a_b-3"}
    rng = np.random.default_rng(0)
    n = 200
    paths = [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    truth = pd.DataFrame({"Path": paths, "Frontal/Lateral": "Frontal", "Sex": ["Male", "Female"] * (n // 2),
                          "Age": rng.integers(20, 90, n)})
    preds = pd.DataFrame({"Path": paths})
    for lab in ("Edema", "EDEMA"):
        truth[lab] = (rng.random(n) < 0.3).astype(int)
        preds[lab] = np.clip(truth[lab] * 0.5 + rng.random(n) * 0.5, 0, 1)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    preds.to_csv(tmp_path / "preds.csv", index=False)
    rc, out, err = run_cli("evaluate", "--predictions", tmp_path / "preds.csv", "--truth", tmp_path / "truth.csv",
                           "--allow-missing", "--bootstrap", "20", "--plots", tmp_path / "plots", "--json", "-")
    assert rc == 0, err
    files = json.loads(out)["plots"]
    assert len(files) == len(set(files)) == len(list((tmp_path / "plots").glob("*.png")))
    assert {"edema-roc.png", "edema-2-roc.png"} <= {Path(f).name for f in files}
    rc, _, err = run_cli("evaluate", "--predictions", tmp_path / "preds.csv", "--truth", tmp_path / "truth.csv",
                         "--allow-missing", "--by", "Age", "--age-bins", "0,nan,100")
    assert rc == 2 and "finite numbers" in err and err.count("\n") == 1, err
