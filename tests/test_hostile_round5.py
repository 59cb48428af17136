"""Hostile inputs, round 5: ensembles, the card and the report on damaged run files, and the output rule.

An ensemble of one run spelled twice, weights near the float maximum, an ensemble written into a member's folder;
a card on an ensemble's evaluation, on damaged run files, beside a damaged external evaluation; a report beside
one; ``-`` as standard output and two outputs naming one file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli


def _refused(args, *words, cwd=None):
    code, _, err = run_cli(*args, cwd=cwd)
    lines = [line for line in err.strip().splitlines() if "━" not in line]  # a progress bar is no error line
    assert code == 2 and len(lines) == 1 and all(w in err for w in words), (args, code, err)


@pytest.fixture
def preds(trained_run, phantom, tmp_path):
    """Two members as predictions CSVs (the run's own and a shifted copy) and their truth."""
    p1 = trained_run / "valid_predictions.csv"
    other = pd.read_csv(p1)
    cols = other.columns[1:]
    other[cols] = np.clip(other[cols].to_numpy() * 0.5 + 0.2, 0, 1)
    p2 = tmp_path / "p2.csv"
    other.to_csv(p2, index=False)
    return p1, p2, phantom / "CheXpert-v1.0-small" / "valid.csv"


def test_an_ensemble_member_named_twice_by_any_spelling(trained_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(trained_run)
    for twin in (f"{trained_run}/", link, trained_run / ".." / trained_run.name):
        _refused(["ensemble", trained_run, twin, "-o", tmp_path / "e"], "named twice")
        _refused(["evaluate", trained_run, "--ensemble", twin], "named twice")
    assert not (tmp_path / "e").exists()


def test_ensemble_weights_near_the_float_maximum_are_normalised(preds, tmp_path):
    p1, p2, truth = preds
    outs = {}
    for name, w in (("huge", "1e308,1e308"), ("one", "1,1")):
        code, _, err = run_cli("ensemble", p1, p2, "--truth", truth, "--ensemble-weights", w, "--bootstrap", "10", "-o",
                               tmp_path / name, "-q")
        assert code == 0, err
        outs[name] = pd.read_csv(tmp_path / name / "predictions.csv")
    pd.testing.assert_frame_equal(outs["huge"], outs["one"])
    assert outs["huge"].iloc[:, 1:].to_numpy().max() > 0


def test_an_ensemble_never_writes_over_a_member(trained_run, run_copy, preds, tmp_path):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    _refused(["ensemble", trained_run, run_copy, "-o", run_copy], "finetune run's folder")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    p1, p2, truth = preds
    folder = tmp_path / "members"
    folder.mkdir()
    own = folder / "predictions.csv"
    own.write_bytes(p2.read_bytes())
    _refused(["ensemble", p1, own, "--truth", truth, "-o", folder], "is one of this command's inputs")
    assert own.read_bytes() == p2.read_bytes()


def test_the_card_of_an_ensemble_evaluation_says_ensemble(trained_run, run_copy, tmp_path):
    code, _, err = run_cli("evaluate", run_copy, "--ensemble", trained_run, "--bootstrap", "10", "--json",
                           run_copy / "eval.json", "-q")
    assert code == 0, err
    code, _, err = run_cli("card", run_copy, "-o", tmp_path / "card.md")
    assert code == 0, err
    text = (tmp_path / "card.md").read_text()
    assert "an ensemble of 2 models" in text and "No ensemble: one model." not in text


def _evaluated(run):
    code, _, err = run_cli("evaluate", run, "--bootstrap", "10", "--json", run / "eval.json", "-q")
    assert code == 0, err


@pytest.mark.parametrize("damage", ["no data", "ci text", "labels text"])
def test_a_card_on_damaged_run_files_is_one_line(run_copy, tmp_path, damage):
    _evaluated(run_copy)
    config, ev = (json.loads((run_copy / f).read_text()) for f in ("config.json", "eval.json"))
    if damage == "no data":
        del config["data"]
    elif damage == "ci text":
        ev["ci"] = "ninety-five"
    else:
        ev["labels"] = "Edema"
    (run_copy / "config.json").write_text(json.dumps(config))
    (run_copy / "eval.json").write_text(json.dumps(ev))
    _refused(["card", run_copy, "-o", tmp_path / "card.md"], "damaged")
    assert not (tmp_path / "card.md").exists()


def test_a_damaged_external_evaluation_is_named_never_fatal(run_copy, tmp_path):
    _evaluated(run_copy)
    (run_copy / "external").mkdir()
    (run_copy / "external" / "broken.json").write_text("{")
    (run_copy / "external" / "stray.json").write_text(json.dumps({"note": "not an evaluation"}))
    code, _, err = run_cli("card", run_copy, "-o", tmp_path / "card.md")
    assert code == 0, err
    card = (tmp_path / "card.md").read_text()
    assert "external/broken.json: unreadable" in card and "external/stray.json: damaged" in card
    code, _, err = run_cli("report", run_copy, "-o", tmp_path / "report.md", "--json", tmp_path / "report.json")
    assert code == 0, err
    reasons = [i["reason"] for i in json.loads((tmp_path / "report.json").read_text())["incomplete"]]
    assert any(r.startswith("external/broken.json") for r in reasons), reasons
    assert any(r.startswith("external/stray.json") for r in reasons), reasons


def test_outputs_dash_is_stdout_and_two_outputs_never_name_one_file(trained_run, preds, tmp_path, capfd):
    p, _, truth = preds
    code, _, err = run_cli("evaluate", "--predictions", p, "--truth", truth, "--bootstrap", "10", "--csv-out", "-",
                           "-q", cwd=tmp_path)
    assert code == 0, err
    assert not (tmp_path / "-").exists() and "auroc" in capfd.readouterr().out.lower()
    _refused(["evaluate", "--predictions", p, "--truth", truth, "--json", tmp_path / "x.json", "--csv-out",
              tmp_path / "x.json"], "name one file")
    _refused(["evaluate", trained_run, "--failures", "2", "--failure-images", p], "is a file; give a folder")
    assert not (tmp_path / "x.json").exists()


def test_the_training_patients_under_new_file_names_are_found(trained_run, phantom, tmp_path):
    """A copy of the training data whose images were renamed: no path is shared, every patient id is."""
    import shutil

    copy = Path(shutil.copytree(phantom, tmp_path / "copy"))
    base = copy / "CheXpert-v1.0-small"
    for split in ("train", "valid"):
        frame = pd.read_csv(base / f"{split}.csv")
        for old in frame["Path"]:
            src = copy / old
            src.rename(src.with_name("renamed_" + src.name))
        frame["Path"] = [p.replace("/view", "/renamed_view") for p in frame["Path"]]
        frame.to_csv(base / f"{split}.csv", index=False)
    _refused(["evaluate", trained_run, "--data", copy, "--split", "train"], "shares 0 images and", "patients")
    other = tmp_path / "hospital"  # another hospital's export in the CheXpert layout numbers its own patients
    shutil.copytree(phantom, other)
    for split in ("train", "valid"):
        text = (other / "CheXpert-v1.0-small" / f"{split}.csv").read_text()
        (other / f"{split}.csv").write_text(text.replace("CheXpert-v1.0-small/", "HospitalB/"))
    (other / "CheXpert-v1.0-small").rename(other / "HospitalB")
    (other / "HospitalB" / "train.csv").unlink()
    (other / "HospitalB" / "valid.csv").unlink()
    code, _, err = run_cli("evaluate", trained_run, "--data", other, "--split", "all", "--bootstrap", "10", "-q")
    assert code == 0, err


def test_explain_never_writes_its_listing_over_a_file_of_the_data(trained_run, phantom, tmp_path):
    import shutil

    data = Path(shutil.copytree(phantom, tmp_path / "data"))
    label_file = data / "CheXpert-v1.0-small" / "valid.csv"
    before = label_file.read_bytes()
    for target in (label_file, trained_run / "config.json"):
        _refused(["explain", trained_run, "--data", data, "--limit", "1", "-o", tmp_path / "maps", "--json", target])
    assert label_file.read_bytes() == before


def test_a_name_longer_than_the_file_system_allows_is_one_line(trained_run, tmp_path):
    long = tmp_path / ("x" * 300)
    for args in (["phantom", long, "--n", "20", "-q"], ["ensemble", trained_run, trained_run, "-o", long],
                 ["report", trained_run, "-o", f"{long}.md"], ["evaluate", trained_run, "--plots", long],
                 ["finetune", "resnet18", "--weights", "none", "--data", tmp_path, "--out", long]):
        _refused(args, "longer than the file system allows")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_never_replaces_a_file_of_the_data_set_it_reads(trained_run, tmp_path):
    from chexcut.data.phantom_layouts import make_layout_phantom

    mimic = make_layout_phantom(tmp_path / "mimic", "mimic", 20, 32, seed=2)
    patients = mimic / "patients.csv.gz"
    before = patients.read_bytes()
    for flag in ("--predictions-out", "--json", "--csv-out"):
        _refused(["evaluate", trained_run, "--data", f"mimic:{mimic}", flag, patients], "would replace a file of")
    assert patients.read_bytes() == before
