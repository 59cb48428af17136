"""A run remembers its data: `evaluate RUN` on the run's own validation rows, other sets labelled as such,
leakage into the training rows refused, never-annotated labels said plainly."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.metrics import roc_auc_score

from chexcut.data.tables import DataOptions, load_split
from chexcut.training.config import Run, TrainConfig
from chexcut.training.loop import finetune


@pytest.fixture(scope="module")
def generic_run(tmp_path_factory):
    """A run in the generic CSV mode (one CSV, --valid-frac 0.3, all views), Fracture never annotated."""
    from chexcut.data.phantom import make_phantom

    root = tmp_path_factory.mktemp("generic")
    make_phantom(root / "ph", n=200, image_size=48, seed=5)
    base = root / "ph" / "CheXpert-v1.0-small"
    df = pd.concat([pd.read_csv(base / "train.csv"), pd.read_csv(base / "valid.csv")])
    df["Fracture"] = np.nan  # a data set that never labelled it (NIH has no Fracture column values)
    data = root / "ph"
    df.to_csv(data / "labels.csv", index=False)
    opts = DataOptions(csv="labels.csv", views="all", valid_frac=0.3, uncertain="ignore")
    cfg = TrainConfig.from_recipe("paper", image_size=40, batch_size=16, epochs=1, val_every=1000, workers=0,
                                  device="cpu", lr=1e-3)
    run_dir = root / "run"
    finetune(Run(run_dir, data, opts, cfg, {"arch": "resnet18", "drop": 2, "weights": "none"}))
    return run_dir, data, opts


def _eval(*args):
    rc, out, err = run_cli("evaluate", *args, "--bootstrap", "0", "--level", "image", "--json", "-")
    return rc, (json.loads(out) if rc == 0 else None), err


def test_run_alone_is_evaluated_on_its_own_validation_rows(generic_run, tmp_path):
    run_dir, data, opts = generic_run
    rc, r, err = _eval(run_dir, "--predictions-out", tmp_path / "p.csv")
    assert rc == 0, err
    es = r["evaluation_set"]
    assert es["kind"] == "run-validation" and es["split"] == "valid" and es["options"]["valid_frac"] == 0.3
    assert es["overlap"]["images"] == 0 and es["overlap"]["patients"] == 0
    ours = pd.read_csv(tmp_path / "p.csv").set_index("Path")
    theirs = pd.read_csv(run_dir / "valid_predictions.csv").set_index("Path")
    assert list(ours.index) == list(theirs.index)  # exactly the run's validation rows, in order
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-6)
    valid = load_split(data, "valid", opts)
    for row in r["labels"]:
        if row["auroc"] is None:
            continue
        j = valid.labels.index(row["label"])
        m = valid.mask[:, j] > 0
        ref = roc_auc_score(valid.targets[m, j], theirs[row["label"]].to_numpy()[m])
        assert row["auroc"] == pytest.approx(ref, abs=1e-6)
    # never annotated: said so, not "only negatives", and in no mean
    frac = next(x for x in r["labels"] if x["label"] == "Fracture")
    assert frac["auroc"] is None and "not annotated" in frac["not_evaluable"] and frac["n_pos"] + frac["n_neg"] == 0
    assert r["mean_all"]["labels"] == sum(x["auroc"] is not None for x in r["labels"])


def test_other_sets_are_labelled_and_leakage_is_refused(generic_run):
    run_dir, _, _ = generic_run
    rc, r, err = _eval(run_dir, "--valid-frac", "0.2")
    assert rc == 0, err
    assert r["evaluation_set"]["kind"] == "same-dataset" and r["evaluation_set"]["differs"] == {"valid_frac": [0.3, 0.2]}
    for split in ("train", "all"):
        rc, _, err = _eval(run_dir, "--split", split)
        assert rc == 2 and "shares" in err and "--allow-overlap" in err and err.count("\n") == 1, err
    rc, r, err = _eval(run_dir, "--split", "train", "--allow-overlap")
    assert rc == 0, err
    assert r["evaluation_set"]["overlap"]["images"] == r["n"] and "overlaps training rows" in r["warnings"][0]
    assert r["warning_kinds"][0] == {"kind": "overlap", "message": r["warnings"][0]}  # selected by kind


def test_moved_data_and_missing_config(generic_run, tmp_path):
    run_dir, data, _ = generic_run
    moved_run = tmp_path / "run"
    shutil.copytree(run_dir, moved_run)
    cfg = json.loads((moved_run / "config.json").read_text())
    cfg["data"]["dir"] = str(tmp_path / "gone")
    (moved_run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _eval(moved_run)
    assert rc == 2 and "does not exist" in err and "--data NEWDIR" in err, err
    rc, r, err = _eval(moved_run, "--data", data)  # same CSV and options elsewhere: still the run's own set
    assert rc == 0, err
    assert r["evaluation_set"]["kind"] == "run-validation" and "recorded as" in r["evaluation_set"]["note"]
    (moved_run / "config.json").unlink()
    rc, _, err = _eval(moved_run)
    assert rc == 2 and "config.json" in err, err


def test_not_annotated_in_the_prevalence_table(generic_run):
    _, data, opts = generic_run
    t = load_split(data, "train", opts)
    prev = {p["label"]: p for p in t.prevalence()}
    assert prev["Fracture"]["annotated"] is False and prev["Fracture"]["train_neg"] == 0
    assert prev["Edema"]["annotated"] is True
    assert any("not annotated" in n for n in t.notes)


def test_thresholds_chosen_on_a_runs_validation_predictions(generic_run):
    """--thresholds RUN: the rule on the run's validation predictions (its own rows and labels), then applied as
    fixed thresholds; evaluated on those same rows they reach the target exactly as chosen."""
    run_dir, data, opts = generic_run
    rc, r, err = _eval(run_dir, "--thresholds", run_dir, "--threshold-rule", "specificity:0.8")
    assert rc == 0, err
    points = [p for p in r["operating_points"] if "not_evaluable" not in p]
    assert points and all(p["rule"] == "given" and not p["optimistic"] for p in points)
    assert all("validation (specificity>=0.8)" in p["chosen_on"] for p in points)
    valid = load_split(data, "valid", opts)
    preds = pd.read_csv(run_dir / "valid_predictions.csv").set_index("Path")
    for p in points:
        j = valid.labels.index(p["label"])
        m = valid.mask[:, j] > 0
        y, s = valid.targets[m, j] > 0, preds[p["label"]].to_numpy()[m]
        # the lowest threshold whose specificity is >= 0.8 (sensitivity only grows as the threshold falls)
        best = min(t for t in np.unique(s) if ((s < t) & ~y).sum() / (~y).sum() >= 0.8)
        assert p["threshold"] == pytest.approx(best) and p["specificity"] >= 0.8
