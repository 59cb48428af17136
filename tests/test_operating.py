"""Operating points and readers against the model's ROC curve: direct computations of sensitivity and
specificity at thresholds, known answers (a reader on the curve, a reader far below), the null rejection
rate of the paired test, and files shaped like the public CheXpert test set (3 reader files, a Study key)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import public_truth, run_cli

from chexcut.errors import ChexcutError
from chexcut.evaluation.operating import Draws, Rule, operating_points, parse_rule
from chexcut.labels import CHEXPERT_LABELS, COMPETITION_LABELS


def _direct(y, s, w=None):
    """Every threshold's (threshold, sens, spec, ppv, npv, f1) by brute force, with row weights ``w``."""
    w = np.ones(len(y)) if w is None else w
    out = [(None, 0.0, 1.0)]
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tp, fp = (w * (pred & y)).sum(), (w * (pred & ~y)).sum()
        out.append((t, tp / (w * y).sum(), 1 - fp / (w * ~y).sum()))
    return out


def _pick(points, rule: str, target=None):
    if rule == "spec":
        ok = [p for p in points if p[2] >= target - 1e-12]
        return max(ok, key=lambda p: (p[1], -p[2] if p[0] is None else p[2]))
    if rule == "sens":
        ok = [p for p in points if p[1] >= target - 1e-12]
        return max(ok, key=lambda p: (p[2], p[1]))
    return max(points, key=lambda p: p[1] + p[2])


def test_operating_points_equal_a_direct_computation_with_ties():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.random((n, 2)) < 0.3
    s = np.round(rng.normal(size=(n, 2)) + 1.3 * y, 1)  # heavy ties
    rules = [Rule("specificity", 0.9), Rule("sensitivity", 0.8), Rule("youden"), Rule("specificity", 1.0)]
    out = operating_points(y.astype(float), np.ones_like(y), s, ["A", "B"], np.arange(n), rules)
    for j, name in enumerate(["A", "B"]):
        pts = _direct(y[:, j], s[:, j])
        got = {p["rule"]: p for p in out["operating_points"] if p["label"] == name}
        for rule, (kind, target) in (("specificity>=0.9", ("spec", 0.9)), ("sensitivity>=0.8", ("sens", 0.8)),
                                     ("youden", ("youden", None)), ("specificity>=1", ("spec", 1.0))):
            t, sens, spec = _pick(pts, kind, target)
            assert got[rule]["threshold"] == t and got[rule]["optimistic"] is True
            assert got[rule]["sensitivity"] == pytest.approx(sens, abs=1e-12)
            assert got[rule]["specificity"] == pytest.approx(spec, abs=1e-12)
            pred = s[:, j] >= (np.inf if t is None else t)
            tp, fp = (pred & y[:, j]).sum(), (pred & ~y[:, j]).sum()
            fn, tn = (~pred & y[:, j]).sum(), (~pred & ~y[:, j]).sum()
            if tp + fp:
                assert got[rule]["ppv"] == pytest.approx(tp / (tp + fp), abs=1e-12)
            assert got[rule]["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
            assert got[rule]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    # a given threshold is applied as it is, and its figures are those of s >= t
    given = {"A": Rule("given", threshold=0.45, chosen_on="elsewhere")}
    g = operating_points(y.astype(float), np.ones_like(y), s, ["A", "B"], np.arange(n), [], given=given)
    (row,) = g["operating_points"]
    pred = s[:, 0] >= 0.45
    assert row["threshold"] == 0.45 and row["chosen_on"] == "elsewhere" and row["optimistic"] is False
    assert row["sensitivity"] == pytest.approx((pred & y[:, 0]).sum() / y[:, 0].sum(), abs=1e-12)


def test_replicates_are_the_rule_on_the_resampled_rows():
    """One bootstrap replicate = the rows drawn with their counts: the weighted figures equal a direct
    computation on the explicitly repeated rows."""
    from chexcut.evaluation.operating import Curve, figures_at

    rng = np.random.default_rng(3)
    n = 300
    y = rng.random(n) < 0.4
    s = np.round(rng.normal(size=n) + y, 1)
    w = rng.integers(0, 4, size=(5, n)).astype(np.float32)
    curve = Curve(y, s, np.arange(n))
    tp, fp = curve.counts(w)
    k = curve.index(Rule("specificity", 0.85), tp, fp)
    got = figures_at(tp, fp, k)
    for r in range(5):
        rep = np.repeat(np.arange(n), w[r].astype(int))
        t, sens, spec = _pick(_direct(y[rep], s[rep]), "spec", 0.85)
        assert got["sensitivity"][r] == pytest.approx(sens, abs=1e-12)
        assert got["specificity"][r] == pytest.approx(spec, abs=1e-12)


def _binormal(rng, n, prevalence=0.3, d=1.2):
    y = rng.random(n) < prevalence
    return y, rng.normal(size=n) + d * y


def test_a_reader_on_the_curve_and_a_reader_far_below():
    rng = np.random.default_rng(7)
    n = 600
    y, s = _binormal(rng, n)
    on_curve = (s >= np.quantile(s, 0.7)).astype(float)  # the model itself at a threshold
    below = ((y * 0.4 + rng.normal(size=n)) > 0.5).astype(float)  # a much weaker reader
    out = operating_points(y[:, None].astype(float), np.ones((n, 1)), s[:, None], ["A"], np.arange(n), [],
                           {"on": on_curve[:, None], "weak": below[:, None]}, draws=Draws(500, seed=1))
    on, weak = out["readers"]
    assert 0 <= on["delta_sensitivity"] < 0.01 and on["p_sensitivity"] > 0.5
    assert abs(on["delta_specificity"]) < 0.01 and on["below_model_curve"]
    # the tie rule: a reader exactly on the curve (the model matches it there) counts as below
    assert on["model_sensitivity_at_reader_specificity"] == on["sensitivity"] and on["below_model_curve"] is True
    assert weak["below_model_curve"] and weak["delta_sensitivity"] > 0.15 and weak["p_sensitivity"] < 0.01
    assert weak["delta_specificity_ci_low"] > 0 and weak["p_specificity"] < 0.01
    assert out["readers_summary"] == [pytest.approx({
        "label": "A", "below_model_curve": 2, "of": 2,
        "mean_sensitivity": (on["sensitivity"] + weak["sensitivity"]) / 2,
        "mean_specificity": (on["specificity"] + weak["specificity"]) / 2,
        "model_sensitivity_at_mean_specificity": out["readers_summary"][0]["model_sensitivity_at_mean_specificity"]})]


def test_a_reader_as_good_as_the_model_is_rejected_at_about_alpha():
    """Null: the reader thresholds an independent score of the same binormal quality, so the model's sensitivity
    at the reader's specificity equals the reader's in the population."""
    rejected, deltas = [], []
    for d in range(150):
        rng = np.random.default_rng(1000 + d)
        y, s = _binormal(rng, 400)
        read = ((rng.normal(size=400) + 1.2 * y) > 0.8).astype(float)
        out = operating_points(y[:, None].astype(float), np.ones((400, 1)), s[:, None], ["A"], np.arange(400), [],
                               {"r": read[:, None]}, draws=Draws(400, seed=d))
        r = out["readers"][0]
        rejected.append(r["p_sensitivity"] < 0.05)
        deltas.append(r["delta_sensitivity"])
    rate = float(np.mean(rejected))
    assert 0.0 < rate <= 0.10, rate
    assert abs(np.mean(deltas)) < 0.02


def test_rules_parse_and_refuse():
    assert parse_rule("youden").name == "youden" and parse_rule("specificity:0.9").name == "specificity>=0.9"
    for bad in ("spec:0.9", "specificity:1.5", "specificity:x", "sensitivity"):
        with pytest.raises(ChexcutError):
            parse_rule(bad)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """groundtruth.csv (Study + 14 labels), a leaderboard-style predictions file (Study + 5 tasks) and three
    benchmark-radiologist files (Study + 14 binary reads), as rajpurkarlab/cheXpert-test-set-labels has them."""
    d = tmp_path_factory.mktemp("readers")
    rng = np.random.default_rng(11)
    n = 500
    study, truth = public_truth(d, rng, n)
    preds = pd.DataFrame({"Study": study})
    for lab in COMPETITION_LABELS:
        preds[lab] = 1 / (1 + np.exp(-(2.2 * truth[lab] - 1.1 + rng.normal(0, 1, n))))
    preds.to_csv(d / "model_predictions.csv", index=False)
    for k, name in enumerate(("bc4", "bc6", "bc8")):
        reads = pd.DataFrame({"Study": study})
        for lab in CHEXPERT_LABELS:
            reads[lab] = ((1.5 * truth[lab] + rng.normal(0, 1, n)) > 0.8 + 0.2 * k).astype(int)
        reads.to_csv(d / f"{name}.csv", index=False)
    return d


def _eval(*args):
    rc, out, err = run_cli("evaluate", *args, "--json", "-")
    assert rc == 0, err
    return json.loads(out)


def test_public_readers_and_operating_points_end_to_end(public, tmp_path):
    d = public
    r = _eval("--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--readers",
              f"{d / 'bc4.csv'},{d / 'bc6.csv'}", "--readers", f"third={d / 'bc8.csv'}", "--at-specificity", "0.9",
              "--at-sensitivity", "0.8,0.95", "--bootstrap", "300", "--plots", tmp_path / "plots")
    assert {x["reader"] for x in r["readers"]} == {"bc4", "bc6", "third"}
    assert len(r["readers"]) == 15 and len(r["operating_points"]) == 15
    truth = pd.read_csv(d / "groundtruth.csv")
    bc4 = pd.read_csv(d / "bc4.csv")
    for x in (x for x in r["readers"] if x["reader"] == "bc4"):
        yy, rr = truth[x["label"]].to_numpy() > 0, bc4[x["label"]].to_numpy() > 0
        assert x["sensitivity"] == pytest.approx((yy & rr).sum() / yy.sum(), abs=1e-12)
        assert x["specificity"] == pytest.approx((~yy & ~rr).sum() / (~yy).sum(), abs=1e-12)
        assert x["sensitivity_ci_low"] < x["sensitivity"] < x["sensitivity_ci_high"]
        assert x["delta_sensitivity"] == pytest.approx(
            x["model_sensitivity_at_reader_specificity"] - x["sensitivity"], abs=1e-12)
    s = {x["label"]: x for x in r["readers_summary"]}
    assert set(s) == set(COMPETITION_LABELS) and all(x["of"] == 3 for x in s.values())
    assert all(p["optimistic"] and p["chosen_on"] == "the evaluated set itself" for p in r["operating_points"])
    assert (tmp_path / "plots" / "edema-roc.png").is_file()
    # thresholds chosen on one evaluation, applied to another: the same threshold, not flagged optimistic
    first = tmp_path / "first.json"
    first.write_text(json.dumps(r))
    again = _eval("--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--thresholds",
                  first, "--threshold-rule", "specificity:0.9", "--bootstrap", "100")
    chosen = {p["label"]: p["threshold"] for p in r["operating_points"] if p["rule"] == "specificity>=0.9"}
    for p in again["operating_points"]:
        assert p["rule"] == "given" and not p["optimistic"] and "first.json" in p["chosen_on"]
        assert p["threshold"] == chosen[p["label"]] and p["specificity"] >= 0.9
    csv = tmp_path / "thresholds.csv"
    pd.DataFrame({"label": ["Edema"], "threshold": [0.5]}).to_csv(csv, index=False)
    given = _eval("--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--thresholds",
                  csv, "--bootstrap", "0")
    (p,) = given["operating_points"]
    pred, yy = pd.read_csv(d / "model_predictions.csv")["Edema"] >= 0.5, truth["Edema"] > 0
    assert p["label"] == "Edema" and p["sensitivity"] == pytest.approx((pred & yy).sum() / yy.sum(), abs=1e-12)
    rc, out, err = run_cli("evaluate", "--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv",
                           "--readers", d / "bc4.csv", "--at-specificity", "0.9", "--bootstrap", "200")
    assert rc == 0 and "readers below the model's ROC curve" in out and "spec>=0.9*" in out


def test_reader_and_threshold_mistakes_are_one_line(public, tmp_path):
    d = public
    bad = pd.read_csv(d / "bc4.csv")
    bad["Edema"] = bad["Edema"].astype(float)
    bad.loc[3, "Edema"] = 0.5
    bad.to_csv(tmp_path / "soft.csv", index=False)
    minus = pd.read_csv(d / "bc4.csv")
    minus.loc[5, "Edema"] = -1  # a reader's -1 is not a logit: the 0/1 line, not "--logits"
    minus.to_csv(tmp_path / "minus.csv", index=False)
    short = pd.read_csv(d / "bc4.csv").iloc[:-2]
    short.to_csv(tmp_path / "short.csv", index=False)
    base = ["--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "0"]
    for extra, words in (
        (["--readers", tmp_path / "soft.csv"], "values other than 0 and 1"),
        (["--readers", tmp_path / "minus.csv"], "values other than 0 and 1"),
        (["--readers", tmp_path / "short.csv"], "2 of 500 truth rows have no reader short row"),
        (["--readers", tmp_path / "missing.csv"], "file not found"),
        (["--readers", f"a={d / 'bc4.csv'},a={d / 'bc6.csv'}"], "two readers are named 'a'"),
        (["--at-specificity", "1.2"], "--at-specificity takes numbers in (0, 1]"),
        (["--thresholds", tmp_path / "nothing"], "no such run directory or file"),
        (["--thresholds", d / "groundtruth.csv"], "columns label,threshold"),
        (["--threshold-rule", "best", "--thresholds", d / "bc4.csv"], "--threshold-rule is youden"),
    ):
        rc, out, err = run_cli("evaluate", *base, *extra)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_report_shows_readers_of_runs_evaluated_with_them(public):
    from chexcut.evaluation.result import Evaluation
    from chexcut.study.collect import _readers
    from chexcut.study.render import readers_table

    r = _eval("--predictions", public / "model_predictions.csv", "--truth", public / "groundtruth.csv", "--readers",
              public / "bc4.csv", "--bootstrap", "100", "--labels", "Edema")
    rows = _readers(Evaluation.from_json(r))
    assert [(x["label"], x["reader"]) for x in rows] == [("Edema", "bc4")]
    table = readers_table({"readers": [{"arch": "resnet18", "weights": "none", "drop": 1, "seed": 0, **x}
                                       for x in rows]})
    md = "\n".join(table.markdown())
    assert "bc4" in md and f"{rows[0]['delta_sensitivity']:+.3f}" in md and "n/a" not in md
    assert readers_table({"readers": []}) is None


def test_threshold_and_group_files_as_users_and_spreadsheets_write_them(public, tmp_path):
    """Every defect of a thresholds JSON/CSV is one line naming the file, where and what; a spreadsheet's BOM,
    CRLF and spaces are read; a file that covers only part of the evaluation says what it leaves out."""
    d = public
    base = ["--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "0"]
    point = {"label": "Edema", "rule": "youden", "threshold": 0.5}
    jsons = {"string": [{**point, "threshold": "high"}], "object": {"Edema": point}, "nolabel": [
        {k: v for k, v in point.items() if k != "label"}], "nan": [{**point, "threshold": float("nan")}],
        "range": [{**point, "threshold": 1.5}], "unknown": [{**point, "label": "Headache"}],
        "twice": [point, point]}
    words = {"string": "operating_points[0]: the threshold of 'Edema' is not a finite number ('high')",
             "object": "'operating_points' is a list of objects", "nolabel": "operating_points[0]: 'label' is missing",
             "nan": "is not a finite number (nan)", "range": "is 1.5, outside the probabilities' 0..1",
             "unknown": "operating_points[0]: unknown label 'Headache'", "twice": "operating_points[1]: 'Edema' has two"}
    for name, points in jsons.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"operating_points": points}))
        rc, _, err = run_cli("evaluate", *base, "--thresholds", tmp_path / f"{name}.json")
        assert rc == 2 and words[name] in err and f"{name}.json" in err and err.count("\n") == 1, (name, err)
    (tmp_path / "nan.csv").write_text("label,threshold\nEdema,nan\n")
    rc, _, err = run_cli("evaluate", *base, "--thresholds", tmp_path / "nan.csv")
    assert rc == 2 and "nan.csv: row 2: the threshold of 'Edema' is not a finite number" in err
    rc, _, err = run_cli("evaluate", *base, "--threshold-rule", "youden")
    assert rc == 2 and "give --thresholds" in err and err.count("\n") == 1
    # a spreadsheet's file: BOM, CRLF, spaces around names; 'Edema ' is Edema, and the labels left out are named
    (tmp_path / "excel.csv").write_bytes("\ufefflabel , threshold\r\nEdema ,0.5\r\n".encode("utf-8"))
    r = _eval(*base, "--thresholds", tmp_path / "excel.csv")
    assert [p["label"] for p in r["operating_points"]] == ["Edema"] and r["operating_points"][0]["threshold"] == 0.5
    assert any("no threshold for 4 of the 5 evaluated labels" in w for w in r["warnings"])
    # a --groups CSV saved by Excel (BOM), keyed like the truth, covering half of the rows: read, and said
    truth = pd.read_csv(d / "groundtruth.csv")
    groups = pd.DataFrame({"Study": truth["Study"][:250], "Site": ["a", "b"] * 125})
    (tmp_path / "groups.csv").write_bytes(b"\xef\xbb\xbf" + groups.to_csv(index=False, lineterminator="\r\n").encode())
    r = _eval(*base, "--groups", tmp_path / "groups.csv", "--by", "Site")
    assert {g["group"] for g in r["subgroups"]} == {"a", "b"}
    assert any("groups.csv has no row for 250 of the 500 evaluated rows" in w for w in r["warnings"]), r["warnings"]


def test_files_as_spreadsheets_and_archives_save_them(public, tmp_path):
    """A predictions and truth CSV gzipped, zipped, or saved with ';' and decimal commas give the same evaluation;
    a readers file named with '=' is that file; a non-numeric value names its column; a near-miss label column
    is suggested."""
    import gzip
    import zipfile

    d = public
    base = _eval("--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "0")
    preds, truth = pd.read_csv(d / "model_predictions.csv"), pd.read_csv(d / "groundtruth.csv")
    (tmp_path / "p.csv.gz").write_bytes(gzip.compress(preds.to_csv(index=False).encode()))
    with zipfile.ZipFile(tmp_path / "t.csv.zip", "w") as z:
        z.writestr("groundtruth.csv", truth.to_csv(index=False))
    preds.to_csv(tmp_path / "p-excel.csv", sep=";", decimal=",", index=False)
    for p, t in ((tmp_path / "p.csv.gz", tmp_path / "t.csv.zip"), (tmp_path / "p-excel.csv", d / "groundtruth.csv")):
        r = _eval("--predictions", p, "--truth", t, "--bootstrap", "0")
        assert r["mean_competition"]["auroc"] == pytest.approx(base["mean_competition"]["auroc"], abs=1e-12)
    import shutil

    shutil.copy(d / "bc4.csv", tmp_path / "reader=a.csv")
    r = _eval("--predictions", d / "model_predictions.csv", "--truth", d / "groundtruth.csv", "--bootstrap", "0",
              "--readers", tmp_path / "reader=a.csv")
    assert {x["reader"] for x in r["readers"]} == {"reader=a"}
    bad = preds.copy()
    bad["Edema"] = bad["Edema"].astype(object)
    bad.loc[3, "Edema"] = "high"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    preds.rename(columns={"Edema": "edema"}).to_csv(tmp_path / "near.csv", index=False)
    for p, words in ((tmp_path / "bad.csv", "non-numeric predictions in 'Edema'"), (tmp_path / "near.csv", "'edema'")):
        rc, _, err = run_cli("evaluate", "--predictions", p, "--truth", d / "groundtruth.csv")
        assert rc == 2 and words in err and err.count("\n") == 1, err
