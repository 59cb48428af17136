"""evaluate(): joins, study aggregation, not-evaluable labels, bad input, the CLI end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REALCXR, run_cli

from chexcut.errors import ChexcutError
from chexcut.evaluation.evaluate import EvalRows, aggregate_by_study, evaluate
from chexcut.evaluation.predictions import align, read_predictions

COMP = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def test_study_level_takes_the_max_over_views():
    es = EvalRows(["a1", "a2", "b1"], ("Edema",), np.array([[1.0], [1.0], [0.0]]), np.ones((3, 1)),
                 np.array(["p1", "p1", "p2"], dtype=object), np.array(["p1/s1", "p1/s1", "p2/s1"], dtype=object))
    agg, (s,) = aggregate_by_study(es, [np.array([[0.2], [0.7], [0.5]])])
    assert agg.paths == ["p1/s1", "p2/s1"]
    np.testing.assert_array_equal(s[:, 0], [0.7, 0.5])
    np.testing.assert_array_equal(agg.y[:, 0], [1, 0])


def test_schema_and_not_evaluable_label():
    rng = np.random.default_rng(0)
    n = 80
    labels = tuple(COMP) + ("Fracture",)
    y = rng.integers(0, 2, (n, 6)).astype(float)
    y[:, 5] = 0  # Fracture: negatives only
    es = EvalRows([str(i) for i in range(n)], labels, y, np.ones((n, 6)), np.arange(n) // 2, np.arange(n))
    r = evaluate(es, rng.random((n, 6)), bootstrap=100)
    assert set(r) >= {"n", "bootstrap", "ci", "labels", "mean_competition", "mean_all", "compare"}
    frac = r["labels"][5]
    assert frac["auroc"] is None and frac["ci_low"] is None and "only negatives" in frac["not_evaluable"]
    assert r["mean_competition"]["labels"] == 5 and r["mean_all"]["labels"] == 5
    assert r["mean_competition"]["ci_low"] <= r["mean_competition"]["auroc"] <= r["mean_competition"]["ci_high"]
    for row in r["labels"][:5]:
        assert {"label", "auroc", "ci_low", "ci_high", "n_pos", "n_neg"} <= set(row)
    json.dumps(r)  # strictly JSON-serialisable


@pytest.mark.parametrize("kw,msg", [({"bootstrap": -1}, "--bootstrap"), ({"ci": 1.5}, "--ci"),
                                    ({"cluster": "hospital"}, "--cluster")])
def test_bad_parameters(kw, msg):
    es = EvalRows(["a", "b"], ("Edema",), np.array([[1.0], [0.0]]), np.ones((2, 1)), np.arange(2), np.arange(2))
    with pytest.raises(ChexcutError, match=msg):
        evaluate(es, np.array([[0.4], [0.2]]), **kw)


def _write(tmp_path, name, df):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def test_predictions_file_validation(tmp_path):
    ok = pd.DataFrame({"Path": ["a", "b"], "Edema": [0.2, 0.9]})
    assert read_predictions(_write(tmp_path, "ok.csv", ok)).loc["b", "Edema"] == 0.9
    with pytest.raises(ChexcutError, match=r"outside \[0, 1\] in rows 3.*--logits"):
        read_predictions(_write(tmp_path, "big.csv", pd.DataFrame({"Path": ["a", "b"], "Edema": [0.2, 3.0]})))
    got = read_predictions(tmp_path / "big.csv", logits=True)
    assert got.loc["b", "Edema"] == 3.0  # logits are ranked as they are, never squashed into ties
    with pytest.raises(ChexcutError, match=r"rows 2"):
        read_predictions(_write(tmp_path, "nan.csv", pd.DataFrame({"Path": ["a", "b"], "Edema": [np.nan, 0.1]})))
    with pytest.raises(ChexcutError, match="duplicated"):
        read_predictions(_write(tmp_path, "dup.csv", pd.DataFrame({"Path": ["a", "a"], "Edema": [0.1, 0.1]})))
    with pytest.raises(ChexcutError, match="missing prediction columns: Cardiomegaly"):
        read_predictions(tmp_path / "ok.csv", labels=("Edema", "Cardiomegaly"))


def test_join_mismatch_and_empty_join():
    es = EvalRows(["a", "b", "c"], ("Edema",), np.zeros((3, 1)), np.ones((3, 1)), np.arange(3), np.arange(3))
    preds = pd.DataFrame({"Edema": [0.1, 0.2]}, index=["a", "b"])
    with pytest.raises(ChexcutError, match="1 of 3 truth rows have no predictions row"):
        align(es, preds)
    with pytest.raises(ChexcutError, match="empty join"):
        align(es, pd.DataFrame({"Edema": [0.1]}, index=["zzz"]))


def test_cli_predictions_vs_labels_and_compare(tmp_path):
    from chexcut.data.phantom import make_phantom

    # enough validation studies that every label draws both classes in >= 90% of the resamples (the one rule)
    root = make_phantom(tmp_path, n=400, image_size=32, seed=0)
    valid = pd.read_csv(root / "valid.csv")
    rng = np.random.default_rng(0)
    labels = ["Cardiomegaly", "Edema", "Pleural Effusion", "Atelectasis", "Consolidation"]
    good = valid[["Path"]].copy()
    bad = valid[["Path"]].copy()
    for lab in labels:
        good[lab] = np.clip(valid[lab] * 0.6 + rng.random(len(valid)) * 0.4, 0, 1)
        bad[lab] = rng.random(len(valid))
    g, b = _write(tmp_path, "good.csv", good), _write(tmp_path, "bad.csv", bad)
    rc, out, err = run_cli("evaluate", "--predictions", g, "--labels", root / "valid.csv", "--compare", b,
                           "--bootstrap", "300", "--json", "-")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mean_competition"]["auroc"] > 0.9 and r["mean_competition"]["ci_low"] is not None
    assert r["compare"]["mean_competition"]["delta"] > 0.2 and r["compare"]["significant"]
    assert "significant" in r["compare"]["verdict"]
    rc, out, err = run_cli("evaluate", "--predictions", g, "--labels", root / "valid.csv", "--bootstrap", "-1")
    assert rc == 2 and "--bootstrap" in err
    rc, out, err = run_cli("evaluate", "--predictions", g, "--labels", root / "train.csv")
    assert rc == 2 and "empty join" in err


@pytest.mark.skipif(not REALCXR.is_dir(), reason="../shared/realcxr-sample is absent")
def test_real_xrays_model_evaluation(tmp_path):
    """A random-init model over the 100 real X-rays: the pipeline runs on real pixels; AUROC is computed."""
    model = tmp_path / "m.safetensors"
    rc, _, err = run_cli("truncate", "resnet18", "--drop", "3", "--weights", "none", "-o", model, "-q")
    assert rc == 0, err
    rc, out, err = run_cli("evaluate", model, "--data", REALCXR, "--csv", "labels.csv", "--split", "all",
                           "--image-size", "64", "--blank", "ignore", "--bootstrap", "50", "--level", "image",
                           "--workers", "0", "--json", "-", "--predictions-out", tmp_path / "p.csv")
    assert rc == 0, err
    r = json.loads(out)
    assert r["n"] == 100
    fr = next(lab for lab in r["labels"] if lab["label"] == "Fracture")
    assert fr["n_pos"] == 0 and fr["n_neg"] == 0 and fr["auroc"] is None  # NIH never labelled it
    assert len(pd.read_csv(tmp_path / "p.csv")) == 100
