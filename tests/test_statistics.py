"""Statistics a reviewer would sign: DeLong (classic = pROC, clustered for patients), non-inferiority and
equivalence, the 5-task mean under DeLong, small-sample honesty, and ranks that survive logits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from chexcut.errors import ChexcutError
from chexcut.evaluation import metrics
from chexcut.evaluation.evaluate import EvalRows, evaluate

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
COMP = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _evalrows(y, patient=None, labels=("Edema",)):
    y = np.asarray(y, dtype=float).reshape(len(y), -1)
    n = len(y)
    patient = np.arange(n) if patient is None else np.asarray(patient)
    return EvalRows([str(i) for i in range(n)], tuple(labels), y, np.ones_like(y), patient, np.arange(n))


# ----------------------------------------------------------------------------- DeLong = pROC

@pytest.mark.skipif(not (REFERENCE / "aSAH.csv").is_file(), reason="../shared/reference is absent")
def test_delong_equals_pROC_on_aSAH():
    df = pd.read_csv(REFERENCE / "aSAH.csv")
    want = json.loads((REFERENCE / "aSAH_pROC_expected.json").read_text())
    y = (df["outcome"] == "Poor").to_numpy().astype(int)
    markers = ["wfns", "ndka", "s100b"]
    aucs, cov = metrics.delong(y, [df[m].to_numpy(float) for m in markers])
    for i, m in enumerate(markers):
        assert aucs[i] == pytest.approx(want["auc"][m], abs=1e-12)
        assert cov[i, i] == pytest.approx(want["var_delong"][m], rel=1e-10)
    assert cov[0, 1] == pytest.approx(want["cov_delong"]["wfns,ndka"], rel=1e-10)
    assert cov[2, 0] == pytest.approx(want["cov_delong"]["s100b,wfns"], rel=1e-10)
    for pair, ref in want["roc_test_delong_paired"].items():
        a, b = pair.split(" vs ")
        t = metrics.delong_test(y, df[a].to_numpy(float), df[b].to_numpy(float))
        assert t.delta / t.se == pytest.approx(ref["z"], rel=1e-10)
        assert t.p == pytest.approx(ref["p"], rel=1e-10)
        assert [t.ci_low, t.ci_high] == pytest.approx(ref["ci95_delta"], rel=1e-9)
    # every row its own cluster is classic DeLong: the evaluation keeps pROC's figures with --cluster patient
    es = _evalrows(y)
    r = evaluate(es, df[["wfns"]].to_numpy(float), bootstrap=0, compare=df[["s100b"]].to_numpy(float),
                 method="delong", cluster="patient")
    assert r["compare"]["labels"][0]["p"] == pytest.approx(0.0271757822291882, rel=1e-10)


# ----------------------------------------------------------------------------- clustered DeLong

def _clustered_null(rng, k=120, per=4):
    """Patients with several images; both models equally good, each with its own per-patient error."""
    pid = np.repeat(np.arange(k), per)
    y = (rng.random(k) < 0.4)[pid].astype(int)
    y[rng.random(len(y)) < 0.1] ^= 1
    a = y + rng.normal(0, 1, k)[pid] + rng.normal(0, 0.5, len(y))
    b = y + rng.normal(0, 1, k)[pid] + rng.normal(0, 0.5, len(y))
    return y, a, b, pid


def test_clustered_delong_keeps_its_error_rate_under_a_clustered_null():
    rng = np.random.default_rng(11)
    sims, classic, clustered = 400, 0, 0
    for _ in range(sims):
        y, a, b, pid = _clustered_null(rng)
        classic += metrics.delong_test(y, a, b).p < 0.05
        clustered += metrics.delong_test(y, a, b, clusters=metrics.cluster_ids(pid)).p < 0.05
    print(f"false-positive rate at alpha 0.05 over {sims} clustered nulls: "
          f"classic DeLong {classic / sims:.3f}, clustered {clustered / sims:.3f}")
    assert clustered / sims <= 0.08
    assert classic / sims > 0.12  # the failure the clustered extension fixes


def test_evaluate_delong_uses_patient_clusters_unless_told_none():
    rng = np.random.default_rng(3)
    y, a, b, pid = _clustered_null(rng, k=60)
    es = _evalrows(y, patient=pid)
    by_patient = evaluate(es, a[:, None], bootstrap=0, compare=b[:, None], method="delong", cluster="patient")
    by_row = evaluate(es, a[:, None], bootstrap=0, compare=b[:, None], method="delong", cluster="none")
    pp, pn = by_patient["compare"]["labels"][0]["p"], by_row["compare"]["labels"][0]["p"]
    assert pp != pn
    assert pn == pytest.approx(metrics.delong_test(y, a, b).p, rel=1e-12)
    assert pp == pytest.approx(metrics.delong_test(y, a, b, clusters=metrics.cluster_ids(pid)).p, rel=1e-12)


# ----------------------------------------------------------------------------- the 5-task mean under DeLong

def _five_labels(rng, n=600, gap=0.0):
    y = (rng.random((n, 5)) < 0.35).astype(float)
    common = rng.normal(0, 1, (n, 1))  # correlated errors across labels and models
    a = y * 1.2 + common + rng.normal(0, 1, (n, 5))
    b = y * (1.2 - gap) + common + rng.normal(0, 1, (n, 5))
    es = EvalRows([str(i) for i in range(n)], COMP, y, np.ones_like(y), np.arange(n), np.arange(n))
    return es, a, b


def test_mean_under_delong_needs_no_bootstrap_and_agrees_with_it():
    es, a, b = _five_labels(np.random.default_rng(4), gap=0.5)
    dl = evaluate(es, a, bootstrap=0, compare=b, method="delong", cluster="none")["compare"]
    mc = dl["mean_competition"]
    assert mc["method"] == "delong" and mc["labels"] == 5 and mc["p"] < 0.05 and dl["significant"]
    assert "significant" in dl["verdict"] and "higher" in dl["verdict"]
    # its standard error is the bootstrap's (same quantity, two estimators)
    bs = evaluate(es, a, bootstrap=2000, compare=b, cluster="none", seed=1)["compare"]["mean_competition"]
    se_dl = (mc["ci_high"] - mc["ci_low"]) / (2 * 1.959964)
    se_bs = (bs["ci_high"] - bs["ci_low"]) / (2 * 1.959964)
    assert se_dl == pytest.approx(se_bs, rel=0.15)
    # the mean's variance counts the covariance between labels: five copies of one label have the mean's
    # standard error equal to the label's own (perfect correlation), not sqrt(5) times smaller
    one = EvalRows(es.paths, COMP, np.repeat(es.y[:, :1], 5, 1), es.mask, es.patient, es.study)
    cp = evaluate(one, np.repeat(a[:, :1], 5, 1), bootstrap=0, compare=np.repeat(b[:, :1], 5, 1), method="delong",
                  cluster="none")["compare"]
    width = cp["mean_competition"]["ci_high"] - cp["mean_competition"]["ci_low"]
    assert width == pytest.approx(cp["labels"][0]["ci_high"] - cp["labels"][0]["ci_low"], rel=1e-9)


# ----------------------------------------------------------------------------- non-inferiority and equivalence

def _pair(rng, n, gap):
    """Model b = model a degraded by ``gap`` (in the separation of its scores); delta = AUROC(b) - AUROC(a)."""
    y = (rng.random(n) < 0.4).astype(float)
    a = y * 1.5 + rng.normal(0, 1, n)
    b = y * (1.5 - gap) + rng.normal(0, 1, n)
    return _evalrows(y), b[:, None], a[:, None]


@pytest.mark.parametrize("method", ["bootstrap", "delong"])
def test_noninferiority_decisions_on_known_deltas(method):
    rng = np.random.default_rng(8)
    kw = dict(bootstrap=1000 if method == "bootstrap" else 0, method=method, cluster="none", seed=0)
    es, b, a = _pair(rng, 3000, 0.05)  # delta about -0.01 (true), well estimated at n = 3000
    c = evaluate(es, b, compare=a, margin=0.05, **kw)["compare"]["labels"][0]
    assert -0.03 < c["delta"] < 0 and c["noninferior"] is True and c["p_noninferiority"] < 0.01
    c = evaluate(es, b, compare=a, margin=0.001, **kw)["compare"]["labels"][0]
    assert c["noninferior"] is False and c["p_noninferiority"] > 0.5
    es, b, a = _pair(rng, 3000, 0.6)  # delta about -0.12: significantly worse and not non-inferior at 0.02
    r = evaluate(es, b, compare=a, margin=0.02, **kw)["compare"]
    c = r["labels"][0]
    assert c["delta"] < -0.08 and c["p"] < 0.01 and c["noninferior"] is False
    assert "non-inferiority not shown at margin 0.02" in r["verdict"] and "p_equivalence" not in c


@pytest.mark.parametrize("method", ["bootstrap", "delong"])
def test_equivalence_is_tost(method):
    rng = np.random.default_rng(9)
    kw = dict(bootstrap=1000 if method == "bootstrap" else 0, method=method, cluster="none", seed=0)
    es, b, a = _pair(rng, 4000, 0.0)
    c = evaluate(es, b, compare=a, margin=0.03, equivalence=True, **kw)["compare"]["labels"][0]
    assert c["equivalent"] is True and c["p_equivalence"] >= c["p_noninferiority"]
    es, b, a = _pair(rng, 4000, -0.6)  # b much better: non-inferior, not equivalent
    c = evaluate(es, b, compare=a, margin=0.03, equivalence=True, **kw)["compare"]["labels"][0]
    assert c["delta"] > 0.05 and c["noninferior"] is True and c["equivalent"] is False


def test_margin_arguments_are_checked():
    es, b, a = _pair(np.random.default_rng(0), 100, 0)
    with pytest.raises(ChexcutError, match="--equivalence needs --margin"):
        evaluate(es, b, compare=a, equivalence=True)
    with pytest.raises(ChexcutError, match="AUROC units"):
        evaluate(es, b, compare=a, margin=2.0)


# ----------------------------------------------------------------------------- small samples

def test_few_positives_are_flagged_and_one_positive_gets_no_interval():
    rng = np.random.default_rng(2)
    n = 300
    y = np.zeros((n, 2))
    y[:5, 0] = 1  # 5 positives
    y[:1, 1] = 1  # 1 positive
    s = rng.random((n, 2)) + y
    es = EvalRows([str(i) for i in range(n)], ("Edema", "Cardiomegaly"), y, np.ones_like(y), np.arange(n),
                 np.arange(n))
    r = evaluate(es, s, bootstrap=500, cluster="none")
    five, one = r["labels"]
    assert "5 positives" in five["warning"] and five["ci_low"] is not None
    assert one["ci_low"] is None and one["ci_high"] is None and "replicates drew both classes" in one["interval_note"]
    assert one["auroc"] == pytest.approx(roc_auc_score(y[:, 1], s[:, 1]))
    assert len(r["warnings"]) == 2
    big = evaluate(_evalrows((rng.random(400) < 0.5).astype(float)), rng.random((400, 1)), bootstrap=200)
    assert "warning" not in big["labels"][0] and big["warnings"] == []


def test_degenerate_delong_in_evaluate_gives_a_reason_not_p0():
    y = np.r_[np.ones(20), np.zeros(20)]
    s = np.r_[np.ones(20), np.zeros(20)]  # both models separate perfectly: zero variance
    r = evaluate(_evalrows(y), s[:, None], bootstrap=0, compare=s[:, None] * 2, method="delong", cluster="none")
    c = r["compare"]["labels"][0]
    assert c["p"] is None and "zero DeLong variance" in c["reason"] and c["delta"] == 0


# ----------------------------------------------------------------------------- ranks

def test_logits_are_ranked_as_they_are(tmp_path):
    from chexcut.evaluation.orchestrate import EvalInputs, run_evaluation
    from chexcut.evaluation.settings import Statistics

    rng = np.random.default_rng(5)
    n = 200
    y = (rng.random(n) < 0.4).astype(int)
    logit = 30 + 20 * rng.random(n) + 10 * y  # all in [30, 60]: a float sigmoid makes them all 1.0
    paths = [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    pd.DataFrame({"Path": paths, "Edema": logit}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"Path": paths, "Frontal/Lateral": "Frontal", "Edema": y}).to_csv(tmp_path / "valid.csv", index=False)
    r = run_evaluation(EvalInputs(predictions=tmp_path / "p.csv", truth=tmp_path / "valid.csv", logits=True),
                       Statistics(level="image", bootstrap=0))
    assert r["labels"][0]["auroc"] == pytest.approx(roc_auc_score(y, logit), abs=1e-12)
    assert roc_auc_score(y, 1 / (1 + np.exp(-logit))) < r["labels"][0]["auroc"] - 0.05  # what a sigmoid would do


def test_head_stays_float32_under_bf16_autocast():
    import torch

    import chexcut

    m = chexcut.truncate("resnet18", drop=2, weights="none")
    x = torch.randn(128, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.float32 and len(torch.unique(out[:, 0])) == 128


def test_predictions_only_evaluate_does_not_import_torch(tmp_path):
    rng = np.random.default_rng(1)
    n = 80
    paths = [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    y = (rng.random((n, 5)) < 0.4).astype(int)
    pd.DataFrame({"Path": paths, **{c: rng.random(n) for c in COMP}}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"Path": paths, "Frontal/Lateral": "Frontal", **{c: y[:, i] for i, c in enumerate(COMP)}}
                 ).to_csv(tmp_path / "valid.csv", index=False)
    code = ("import sys\nfrom chexcut.cli import main\ntry:\n    main(['evaluate', '--predictions', sys.argv[1], "
            "'--truth', sys.argv[2], '--bootstrap', '200', '--json', '-'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.csv"), str(tmp_path / "valid.csv")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().endswith("NO-TORCH"), p.stderr
    assert json.loads(p.stdout)["mean_competition"]["ci_low"] is not None


def test_one_usable_replicate_rule_for_every_estimate():
    """The AUROC, a paired delta, a subgroup gap and an operating point withhold their interval (and p) on the
    same replicates: fewer than 90% finite. At 90% or more all four give one."""
    from chexcut.evaluation.operating import _interval
    from chexcut.evaluation.paired import _bootstrap_test
    from chexcut.evaluation.subgroups import _gap
    from chexcut.evaluation.summary import interval_summary

    rng = np.random.default_rng(0)
    for finite, given in ((850, False), (900, True)):
        a = rng.normal(0.8, 0.02, (1000, 1))
        a[finite:] = np.nan  # resamples that drew one class
        b = rng.normal(0.7, 0.02, (1000, 1))
        auroc = interval_summary(0.8, a[:, 0], 0.95)
        delta = _bootstrap_test(0.1, a[:, 0] - b[:, 0], 0.95, None)
        gap = _gap(np.array([0.8]), a, np.array([0.7]), b, [0], 0.95)
        point = _interval(0.8, [a[:, 0]], 0.95, "sensitivity")
        assert (auroc["ci_low"] is not None) is given
        assert (delta["ci_low"] is not None) is given and (delta["p"] is not None) is given
        assert (gap["ci_low"] is not None) is given and (gap["p"] is not None) is given
        assert (point["sensitivity_ci_low"] is not None) is given
    assert metrics.MIN_USABLE_SHARE == 0.9


def test_holm_equals_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, None, 0.005, 0.5]
    got = metrics.holm(p)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.5 (m = 5): 0.025, 0.04, 0.09, 0.09 (monotone), 0.5
    assert got[3] is None
    assert got[4] == pytest.approx(0.025) and got[0] == pytest.approx(0.04) and got[2] == pytest.approx(0.09)
    assert got[1] == pytest.approx(0.09) and got[5] == pytest.approx(0.5)
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    finite = [x for x in p if x is not None]
    assert [x for x in got if x is not None] == pytest.approx(list(multipletests(finite, method="holm")[1]))


def test_subgroup_gaps_carry_holm_p_values_within_their_column():
    from chexcut.evaluation.settings import Statistics
    from chexcut.evaluation.subgroups import evaluate_subgroups

    rng = np.random.default_rng(3)
    n, labels = 600, ["Atelectasis", "Cardiomegaly", "Edema"]
    y = (rng.random((n, 3)) < 0.3).astype(float)
    s = y + rng.normal(0, 1, (n, 3))
    site = np.array(["a", "b", "c"])[rng.integers(0, 3, n)].astype(object)
    es = EvalRows(y=y, mask=np.ones_like(y), labels=tuple(labels), paths=[f"p{i}/s1/v.jpg" for i in range(n)],
                 patient=np.arange(n), study=np.arange(n), groups={"Site": site})
    _, gaps, _ = evaluate_subgroups(es, s, Statistics(bootstrap=200, by=("Site",)), np.arange(n))
    assert len(gaps) == 3 * 4  # 3 pairs of sites x (3 labels + the competition mean)
    assert [g["p_holm"] for g in gaps] == pytest.approx(metrics.holm([g["p"] for g in gaps]))
    assert all(g["p_holm"] >= g["p"] for g in gaps)
