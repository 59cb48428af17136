"""Label budgets (finetune --label-fraction): patients drawn, nested per seed, each label keeping a positive."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
from conftest import run_cli

from chexcut.data.fractions import draw_patients
from chexcut.data.tables import DataOptions, load_split


@pytest.fixture(scope="module")
def tables(phantom):
    return load_split(phantom, "train", DataOptions()), load_split(phantom, "valid", DataOptions())


def _patients(table, rows) -> set:
    return set(map(str, table.patient[rows]))


def test_draws_are_whole_patients_nested_per_seed_and_keep_a_positive_per_label(tables):
    train, valid = tables
    has_positive = [j for j in range(len(train.labels)) if ((train.targets[:, j] > 0.5) & (train.mask[:, j] > 0)).any()]
    for seed in (0, 1):
        previous = set()
        for fraction in (0.05, 0.2, 0.5, 1.0):
            rows, record = draw_patients(train, fraction, seed)
            drawn = _patients(train, rows)
            # whole patients: every row of a drawn patient, no row of another
            assert set(rows) == {i for i, p in enumerate(train.patient) if str(p) in drawn}
            assert drawn == set(record["patient_ids"]) and record["images"] == len(rows)
            assert previous <= drawn  # nested: the smaller budget's patients are inside the larger's
            previous = drawn
            assert len(drawn) >= np.ceil(fraction * len(set(train.patient)))
            for j in has_positive:  # stratified: a label with a positive training row keeps one
                assert ((train.targets[rows, j] > 0.5) & (train.mask[rows, j] > 0)).any(), train.labels[j]
                assert record["positives"][train.labels[j]] >= 1
            assert drawn.isdisjoint(set(map(str, valid.patient)))  # training patients only
        assert previous == set(map(str, train.patient))  # 1.0: every training patient
    a, _ = draw_patients(train, 0.2, 0)
    b, _ = draw_patients(train, 0.2, 1)
    assert set(a) != set(b)  # another seed, another draw


def test_a_rare_labels_only_positive_patient_joins_the_draw(tables):
    train, _ = tables
    rare = train.labels.index("Edema")
    targets = train.targets.copy()
    targets[:, rare] = 0
    last = str(train.patient[-1])
    targets[np.array([str(p) == last for p in train.patient]), rare] = 1  # one patient holds every Edema positive
    table = dataclasses.replace(train, targets=targets)
    rows, record = draw_patients(table, 0.01, 0)
    # 1% of the patients (rounded up), and each label's first positive patient where those hold none
    assert record["patients"] == math.ceil(0.01 * record["of_patients"]) + len(record["added_for_positives"])
    assert last in _patients(table, rows) and record["positives"]["Edema"] >= 1
    assert "Edema" not in record["without_positives"]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan"])
def test_a_fraction_outside_0_1_is_one_line(phantom, tmp_path, value):
    code, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--data", phantom, "--out", tmp_path / "r",
                           "--label-fraction", value)
    assert code == 2 and "--label-fraction" in err and err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_run_on_a_label_budget_records_it_and_its_command_reproduces_it(phantom, tmp_path):
    from chexcut.training.reproduce import finetune_argv

    args = ["finetune", "resnet18", "--drop", "3", "--weights", "none", "--data", phantom, "--out", tmp_path / "r",
            "--label-fraction", "0.3", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0",
            "--max-steps", "2", "--val-every", "2", "--device", "cpu", "-q"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    budget = json.loads((tmp_path / "r" / "label_fraction.json").read_text())
    train = load_split(phantom, "train", DataOptions(views="frontal"))
    rows, expected = draw_patients(train, 0.3, 0)
    assert budget == expected and config["train"]["label_fraction"] == 0.3
    assert config["data"]["train_images"] == len(rows)
    assert "--label-fraction" in finetune_argv(config, tmp_path / "again")
    code, _, err = run_cli("finetune", "--resume", tmp_path / "r", "--label-fraction", "0.5")
    assert code == 2 and "--label-fraction cannot change on --resume" in err


def test_a_report_never_pools_runs_of_two_label_budgets(trained_run, tmp_path):
    """Two budgets are two configurations (never seeds of one): the paper's findings use the full budget's run, and
    the how-much block lists both."""
    a = shutil.copytree(trained_run, tmp_path / "a")
    b = shutil.copytree(trained_run, tmp_path / "b")
    for run in (a, b):
        assert run_cli("evaluate", run, "--bootstrap", "0", "--json", run / "eval.json", "-q")[0] == 0
    config = json.loads((b / "config.json").read_text())
    config["train"]["label_fraction"] = 0.1
    (b / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli("report", a, b, "--bootstrap", "0", "--json", "-")
    assert code == 0, err
    report = json.loads(out)
    assert report["arm"] == {"adapt": "full", "label_fraction": 1.0, "runs": 1}
    assert [r["run_dirs"] for r in report["results"]] == [[str(a)]]
    assert sorted(c["label_fraction"] for c in report["how_much"]["configurations"]) == [0.1, 1.0]
