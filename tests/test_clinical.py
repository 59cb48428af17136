"""Decision curves, error rates by subgroup, prevalence matching and failure analysis (issue 34), against known
answers: the dcurves package (MSKCC), scikit-learn, and simulations whose true gaps are set by construction."""

from __future__ import annotations

import numpy as np
import pytest

from chexcut.evaluation.evaluate import EvalRows, evaluate
from chexcut.evaluation.operating import Rule


def _set(y, groups=None, patients=None):
    n = len(y)
    y = np.asarray(y, dtype=np.float64).reshape(n, -1)
    ids = np.asarray(patients if patients is not None else np.arange(n)).astype(str)
    return EvalRows(paths=[f"p{i}.png" for i in range(n)], labels=tuple(f"L{j}" for j in range(y.shape[1])), y=y,
                   mask=np.ones_like(y), patient=ids, study=ids, groups=groups)


def test_net_benefit_equals_dcurves():
    dcurves = pytest.importorskip("dcurves", reason="dcurves (MSKCC) is in the test extra")
    import pandas as pd

    from chexcut.evaluation.clinical import THRESHOLDS, net_benefit

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1).round(3)  # ties on purpose
    ours, all_ = net_benefit(y, p, np.ones((1, len(y))), THRESHOLDS)
    ref = dcurves.dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"], thresholds=list(THRESHOLDS))
    model = ref[ref.model == "p"].sort_values("threshold")["net_benefit"].to_numpy()
    treat_all = ref[ref.model == "all"].sort_values("threshold")["net_benefit"].to_numpy()
    assert np.abs(ours[0] - model).max() < 1e-9 and np.abs(all_[0] - treat_all).max() < 1e-9


def test_decision_curve_block_from_logits_equals_from_probabilities():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 2)) < 0.4).astype(float)
    logit = y * 1.5 + rng.normal(size=y.shape)
    a = evaluate(_set(y), logit, bootstrap=50, decision_curve=True, logits=True, calibration=False)["decision_curve"]
    b = evaluate(_set(y), 1 / (1 + np.exp(-logit)), bootstrap=50, decision_curve=True, calibration=False)
    b = b["decision_curve"]
    for la, lb in zip(a["labels"], b["labels"]):
        assert np.allclose(la["model"], lb["model"]) and la["model_ci_low"] == pytest.approx(lb["model_ci_low"])
    first = a["labels"][0]
    assert first["model_ci_low"][10] <= first["model"][10] <= first["model_ci_high"][10]
    assert a["probabilities"] == "sigmoid of the logits"


def test_a_group_with_a_higher_false_negative_rate_is_found_with_a_ci_covering_the_gap():
    rng = np.random.default_rng(2)
    n = 6000
    site = np.where(np.arange(n) < n // 2, "A", "B")
    y = (rng.random(n) < 0.4).astype(float)
    # positives score above the threshold 0.5 with probability 0.8 at A and 0.7 at B: FNR 0.2 vs 0.3
    miss = rng.random(n) < np.where(site == "A", 0.2, 0.3)
    s = np.where(y == 1, np.where(miss, 0.3, 0.8), np.where(rng.random(n) < 0.1, 0.7, 0.2))
    s = s + rng.normal(scale=0.01, size=n)
    r = evaluate(_set(y, {"Site": site.astype(object)}), s[:, None], bootstrap=400, by=("Site",), calibration=False,
                 given={"L0": Rule("given", threshold=0.5, chosen_on="fixed")})
    gap = next(g for g in r["error_rate_gaps"] if g["rate"] == "fnr")
    assert gap["groups"] == ["A", "B"] and gap["ci_low"] <= -0.10 <= gap["ci_high"] and gap["p"] < 0.05
    fpr_gap = next(g for g in r["error_rate_gaps"] if g["rate"] == "fpr")
    assert fpr_gap["ci_low"] <= 0 <= fpr_gap["ci_high"]  # the false-positive rates were made equal
    rates = {x["group"]: x for x in r["error_rates"]}
    assert abs(rates["A"]["fnr"] - 0.2) < 0.03 and abs(rates["B"]["fnr"] - 0.3) < 0.03
    assert all(g["p_holm"] >= g["p"] for g in r["error_rate_gaps"])  # Holm over the column's 2 gaps


def test_prevalence_matching_removes_a_gap_that_only_prevalence_made():
    rng = np.random.default_rng(3)
    n = 8000
    group = np.where(np.arange(n) < n // 2, "A", "B")
    y = (rng.random(n) < np.where(group == "A", 0.5, 0.1)).astype(float)
    s = y + rng.normal(scale=1.0, size=n)  # the same score distributions given the class in both groups
    r = evaluate(_set(y, {"Group": group.astype(object)}), s[:, None], bootstrap=300, by=("Group",),
                 calibration=False, prevalence_matched=True)
    row = r["prevalence_matched"][0]
    raw, matched = row["ap_gap"], row["ap_gap_matched"]
    assert raw["delta"] > 0.2 and raw["p"] < 0.01  # average precision follows prevalence
    assert matched["ci_low"] <= 0 <= matched["ci_high"] and abs(matched["delta"]) < 0.03
    auroc_gap = next(g for g in r["subgroup_gaps"] if g["label"] == "L0")
    assert auroc_gap["ci_low"] <= 0 <= auroc_gap["ci_high"]  # AUROC never depended on prevalence


def test_weighted_average_precision_equals_scikit_learn():
    from sklearn.metrics import average_precision_score

    from chexcut.evaluation.clinical import weighted_ap

    rng = np.random.default_rng(4)
    y = (rng.random(200) < 0.3).astype(float)
    s = (y + rng.normal(size=200)).round(1)
    w = rng.integers(0, 4, size=(3, 200)).astype(float)
    ours = weighted_ap(y, s, w)
    for k in range(3):
        assert ours[k] == pytest.approx(average_precision_score(y, s, sample_weight=w[k]), abs=1e-12)


def test_failures_list_the_most_confident_errors_at_the_threshold():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1], dtype=float)
    s = np.array([0.9, 0.6, 0.1, 0.2, 0.8, 0.4, 0.7, 0.95])
    r = evaluate(_set(y, {"Sex": np.array(list("MFMFMFMF"), dtype=object)}), s[:, None], bootstrap=0,
                 calibration=False, failures=2, given={"L0": Rule("given", threshold=0.5)})
    f = r["failures"][0]
    assert [c["key"] for c in f["false_positives"]] == ["p0.png", "p6.png"]  # 0.9, then 0.7 (0.6 is third)
    assert [c["key"] for c in f["false_negatives"]] == ["p3.png", "p5.png"]  # 0.2, then 0.4
    assert f["n_false_positives"] == 3 and f["false_positives"][0]["Sex"] == "M" and f["rule"] == "given"
    r = evaluate(_set(y), s[:, None], bootstrap=0, calibration=False, failures=1)
    assert r["failures"][0]["rule"] == "youden (this set)"


def _csvs(tmp_path, n=3000, seed=5):
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = ["Edema", "Atelectasis"]
    y = (rng.random((n, 2)) < 0.3).astype(int)
    keys = [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    pd.DataFrame({"Path": keys, **{c: y[:, j] for j, c in enumerate(labels)}}).to_csv(tmp_path / "truth.csv",
                                                                                      index=False)
    files = []
    for k in range(2):  # two models with independent errors of the same size
        p = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(scale=1.5, size=y.shape))))
        f = tmp_path / f"m{k}.csv"
        pd.DataFrame({"Path": keys, **{c: p[:, j] for j, c in enumerate(labels)}}).to_csv(f, index=False)
        files.append(f)
    return files


def test_an_ensemble_of_independent_models_beats_both_and_of_one_model_equals_it(tmp_path):
    import json

    from conftest import run_cli

    a, b = _csvs(tmp_path)
    code, _, err = run_cli("ensemble", a, b, "--truth", tmp_path / "truth.csv", "-o", tmp_path / "ens", "-q",
                           "--bootstrap", "300")
    assert code == 0, err
    r = json.loads((tmp_path / "ens" / "eval.json").read_text())
    best = r["ensemble"]["member_auroc"][r["ensemble"]["best_member"]]
    assert r["mean_all"]["auroc"] > max(r["ensemble"]["member_auroc"].values()) == best
    cmp = r["compare"]["mean_all"]
    assert cmp["delta"] > 0 and cmp["p"] < 0.05 and cmp["ci_low"] > 0
    code, _, err = run_cli("ensemble", a, a, "--truth", tmp_path / "truth.csv", "-o", tmp_path / "self", "-q")
    assert code == 2 and "named twice" in err
    import shutil

    shutil.copy(a, tmp_path / "a_again.csv")
    code, _, err = run_cli("ensemble", a, tmp_path / "a_again.csv", "--truth", tmp_path / "truth.csv", "-o",
                           tmp_path / "self", "-q", "--bootstrap", "100", "--average", "logits")
    assert code == 0, err
    r = json.loads((tmp_path / "self" / "eval.json").read_text())
    assert r["mean_all"]["auroc"] == pytest.approx(r["ensemble"]["member_auroc"][str(a)], abs=1e-12)
    assert r["compare"]["mean_all"]["delta"] == pytest.approx(0, abs=1e-12)


def test_ensemble_members_must_share_rows_and_labels(tmp_path):
    import pandas as pd
    from conftest import run_cli

    a, b = _csvs(tmp_path)
    pd.read_csv(b).drop(columns=["Edema"]).to_csv(tmp_path / "fewer.csv", index=False)
    pd.read_csv(b).iloc[:-5].to_csv(tmp_path / "short.csv", index=False)
    for other, words in (("fewer.csv", "lack label columns: Edema"), ("short.csv", "5 of 3000 truth rows have no")):
        code, _, err = run_cli("ensemble", a, tmp_path / other, "--truth", tmp_path / "truth.csv", "-o",
                               tmp_path / "x", "-q")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("ensemble", a, b, "--truth", tmp_path / "truth.csv", "-o", tmp_path / "x", "--ensemble-weights", "1",
                           "-q")
    assert code == 2 and "gives 1 weights for 2 members" in err
    assert not (tmp_path / "x").exists()  # refused before or after the folder was made: nothing left


def test_combine_on_the_logit_scale():
    from chexcut.evaluation.ensemble import combine

    p = [np.array([[0.9, 0.2]]), np.array([[0.5, 0.2]])]
    assert combine(p)[0] == pytest.approx([0.7, 0.2])
    logit = np.log(0.9 / 0.1) / 2  # the mean of logit(0.9) and logit(0.5) = 0
    assert combine(p, average="logits")[0, 0] == pytest.approx(1 / (1 + np.exp(-logit)))
    assert combine(p, weights=[3, 1])[0, 0] == pytest.approx(0.8)
