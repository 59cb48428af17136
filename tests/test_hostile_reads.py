"""Hostile inputs, round 5: reads stay bounded and readers check their cells (one line, exit 2, nothing written).

Label files that expand without end, JSON nested without end, label cells outside a set's vocabulary, PadChest
lists that are not flat lists, repeated columns, a study named twice in MIMIC, an ambiguous ``SET:DIR``.
"""

from __future__ import annotations

import gzip
import shutil

import pandas as pd
import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from chexcut.data.phantom_layouts import make_layout_phantom

    root = tmp_path_factory.mktemp("sets")
    return {name: make_layout_phantom(root / name, name, 20, 32, seed=5) for name in ("nih", "padchest", "vinbigdata",
                                                                                      "mimic")}


def _copy(sets, name, tmp_path):
    return shutil.copytree(sets[name], tmp_path / name)


def _refused(args, *words):
    code, out, err = run_cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and all(w in err for w in words), (args, code, err)
    return err


def _index(folder, name, tmp_path, *words):
    err = _refused(["datasets", "index", f"{name}:{folder}", "-o", tmp_path / "index.csv"], *words)
    assert not (tmp_path / "index.csv").exists()
    return err


def test_a_label_file_that_expands_without_end_stops_at_a_bound(sets, tmp_path, monkeypatch):
    import chexcut.reading as reading

    nih = _copy(sets, "nih", tmp_path)
    entry = nih / "Data_Entry_2017_v2020.csv"
    text = entry.read_bytes()
    entry.unlink()
    bomb = nih / "Data_Entry_2017_v2020.csv.gz"
    bomb.write_bytes(gzip.compress(text[:-1] + b"a" * (3 << 20) + b"\n"))  # a 3 MiB line, 3 kB on disk
    _index(nih, "nih", tmp_path, "a line longer than 1 MiB", bomb.name)
    many = text + text.split(b"\n", 1)[1] * 2000  # short lines, expanding ~700 times
    bomb.write_bytes(gzip.compress(many, 9))
    monkeypatch.setattr(reading, "EXPANSION_FLOOR", 0)  # the floor (16 MiB) scaled away for a small test
    _index(nih, "nih", tmp_path, "decompresses to more than", "times its size")
    monkeypatch.setattr(reading, "EXPANSION_FLOOR", 16 << 20)
    code, _, err = run_cli("datasets", "index", f"nih:{nih}", "-o", tmp_path / "index.csv")
    assert code == 2 and "repeat an image" in err  # within the bound: read, and its real fault named


def test_json_nested_without_end_is_one_line(tmp_path, run_copy):
    from chexcut.reading import json_depth, parse_json

    assert json_depth('{"a": [1, {"b": "[[[\\"["}], "c": []}') == 3
    study = tmp_path / "s"
    study.mkdir()
    (study / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(["study", "status", study], "plan.json", "nested deeper than 64 levels")
    (run_copy / "eval.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    _refused(["evaluate", "--predictions", run_copy / "valid_predictions.csv", "--truth", run_copy / "config.json",
              "--thresholds", run_copy / "eval.json"])
    with pytest.raises(Exception, match="nested deeper"):
        parse_json("[" * 70 + "]" * 70, "x.json")


def test_mimic_cells_outside_its_vocabulary_and_a_study_named_twice(sets, tmp_path):
    mimic = _copy(sets, "mimic", tmp_path)
    f = mimic / "mimic-cxr-2.0.0-chexpert.csv.gz"
    good = pd.read_csv(f)
    for value, shown in (("yes", "'yes'"), (2.0, "2.0")):
        bad = good.astype({"Edema": object})
        bad.loc[3, "Edema"] = value
        bad.to_csv(f, index=False)
        _index(mimic, "mimic", tmp_path, f.name, "row 5 Edema=", shown, "not 1, 0, -1 or blank")
    pd.concat([good, good.iloc[[2]]]).to_csv(f, index=False)
    _index(mimic, "mimic", tmp_path, f.name, f"repeats study {good['study_id'].iat[2]}")


def test_padchest_lists_are_parsed_strictly(sets, tmp_path):
    pc = _copy(sets, "padchest", tmp_path)
    f = next(pc.glob("PADCHEST*.csv"))
    good = pd.read_csv(f, dtype=str)
    for cell in ("[['pneumonia']]", '["pneumonia", "cardiomegaly"]', "pneumonia, cardiomegaly"):
        bad = good.copy()
        bad.loc[1, "Labels"] = cell
        bad.to_csv(f, index=False)
        _index(pc, "padchest", tmp_path, "row 3 Labels=", "not a flat list of quoted labels")
    bad = good.copy()
    bad.loc[1, "Labels"] = "['', 'pneumonia']"  # a blank term, as 777 real PadChest rows have: read
    bad.to_csv(f, index=False)
    code, _, err = run_cli("datasets", "index", f"padchest:{pc}", "-o", tmp_path / "index.csv")
    assert code == 0, err


def test_nih_terms_columns_and_separators(sets, tmp_path):
    nih = _copy(sets, "nih", tmp_path)
    f = nih / "Data_Entry_2017_v2020.csv"
    good = f.read_text()
    rows = good.splitlines()
    twice = [rows[0].replace("Finding Labels", "Finding Labels,Finding Labels", 1)]
    f.write_text("\n".join(twice + [",".join(r.split(",")[:2] + r.split(",")[1:]) for r in rows[1:]]) + "\n")
    _index(nih, "nih", tmp_path, "'Finding Labels' more than once")
    first = rows[1].split(",")
    first[1] = "Efusion|Mass"
    f.write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    _index(nih, "nih", tmp_path, "row 2 Finding Labels='Efusion|Mass'", "'Efusion' is not one of the set's 15 labels")
    f.write_text(good.replace("Patient ID", "PatientID", 1))
    _refused(["datasets", "index", nih, "-o", tmp_path / "index.csv"], "lacks the column 'Patient ID'")
    f.write_text(good.replace(",", "|"))
    _refused(["datasets", "index", nih, "-o", tmp_path / "index.csv"], "lacks the column")


def test_vinbig_classes_outside_its_vocabulary(sets, tmp_path):
    vb = _copy(sets, "vinbigdata", tmp_path)
    df = pd.read_csv(vb / "train.csv", dtype=str)
    df.loc[0, "class_name"] = "Shoe size"
    df.to_csv(vb / "train.csv", index=False)
    _index(vb, "vinbigdata", tmp_path, "row 2 class_name='Shoe size'")


def test_a_folder_named_like_set_and_folder_is_ambiguous(sets, tmp_path, monkeypatch):
    nih = _copy(sets, "nih", tmp_path)
    (tmp_path / "nih:nih").mkdir()
    monkeypatch.chdir(tmp_path)
    _refused(["datasets", "index", "nih:nih", "-o", tmp_path / "index.csv"], "names both the folder", "./nih:nih")
    assert nih.is_dir() and not (tmp_path / "index.csv").exists()
