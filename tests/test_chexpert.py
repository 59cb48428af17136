"""The CSV reader: every policy on a handwritten CSV, views, prefixes, splits, bad input."""

from pathlib import Path

import numpy as np
import pytest

from chexcut.data.tables import (
    DataOptions,
    apply_policies,
    check_files,
    load_split,
    parse_uncertain,
    patient_split,
    read_csv_table,
)
from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS

HEAD = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)


def row(path, view="Frontal", appa="AP", **labels):
    vals = [labels.get(lab.replace(" ", "_"), "") for lab in CHEXPERT_LABELS]
    return f"{path},Male,50,{view},{appa}," + ",".join(vals)


@pytest.fixture
def chexpert(tmp_path):
    """A tiny CheXpert-layout dataset: 3 patients, a lateral view, every kind of label cell."""
    root = tmp_path / "CheXpert-v1.0-small"
    lines = [HEAD,
             row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", Edema="1.0", Atelectasis="-1.0", Cardiomegaly="0.0"),
             row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", view="Lateral", appa="", Edema="1.0"),
             row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", appa="PA", Edema="-1.0", Atelectasis="1.0"),
             row("CheXpert-v1.0-small/train/patient00003/study2/view1_frontal.jpg", Edema="0.0", Cardiomegaly="-1.0")]
    root.mkdir()
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "valid.csv").write_text("\n".join([HEAD, row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", Edema="1.0")]) + "\n")
    for p in [lab.split(",")[0] for lab in lines[1:]] + ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"]:
        f = tmp_path / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    return tmp_path


def col(t, name):
    return t.labels.index(name)


def test_policies_exact_targets_and_masks(chexpert):
    e, a, c = (CHEXPERT_LABELS.index(n) for n in ("Edema", "Atelectasis", "Cardiomegaly"))
    t = load_split(chexpert, "train", DataOptions(uncertain="zeros", blank="zeros"))
    assert len(t) == 3  # frontal only: the lateral view is not selected
    np.testing.assert_array_equal(t.targets[:, [e, a, c]], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    # only Edema, Atelectasis and Cardiomegaly have a value in some row; the 11 others are blank in every row:
    # "not annotated in this data set", never turned into negatives by --blank zeros
    assert set(t.not_annotated) == set(CHEXPERT_LABELS) - {"Edema", "Atelectasis", "Cardiomegaly"}
    assert t.mask[:, [e, a, c]].min() == 1 and t.mask.sum() == 9
    t = load_split(chexpert, "train", DataOptions(uncertain="ones", blank="ignore"))
    np.testing.assert_array_equal(t.targets[:, [e, a, c]], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(t.mask[:, [e, a, c]], [[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    assert t.mask[:, CHEXPERT_LABELS.index("Fracture")].sum() == 0  # blank everywhere -> ignored
    t = load_split(chexpert, "train", DataOptions(uncertain="ignore"))
    np.testing.assert_array_equal(t.mask[:, [e, a, c]], [[1, 0, 1], [0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(t.targets[:, [e, a, c]], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    t = load_split(chexpert, "train", DataOptions(uncertain="Atelectasis=ones,Edema=ignore,default=zeros"))
    np.testing.assert_array_equal(t.targets[:, [e, a, c]], [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(t.mask[:, [e, a, c]], [[1, 1, 1], [0, 1, 1], [1, 1, 1]])


def test_chexpert_preset():
    labels = CHEXPERT_LABELS
    u = parse_uncertain("chexpert", labels)
    assert u[labels.index("Atelectasis")] == 1 and u[labels.index("Edema")] == 1
    assert u[labels.index("Cardiomegaly")] == 0 and u[labels.index("Pleural Effusion")] == 0


@pytest.mark.parametrize("bad,msg", [("maybe", "use ones"), ("Edema=twos", "ones, zeros or ignore"),
                                     ("Bogus=ones", "not one of the labels")])
def test_bad_uncertain_policy(bad, msg):
    with pytest.raises(ChexcutError, match=msg):
        parse_uncertain(bad, CHEXPERT_LABELS)


def test_apply_policies_vectorised():
    v = np.array([[1, 0, -1, np.nan]], dtype=np.float32)
    t, m = apply_policies(v, [None, None, None, None], "ignore")
    np.testing.assert_array_equal(t, [[1, 0, 0, 0]])
    np.testing.assert_array_equal(m, [[1, 1, 0, 0]])


def test_views(chexpert):
    assert len(load_split(chexpert, "train", DataOptions(views="all"))) == 4
    lat = load_split(chexpert, "train", DataOptions(views="lateral"))
    assert lat.paths == ["CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg"]
    assert len(load_split(chexpert, "train", DataOptions(views="pa"))) == 1
    assert len(load_split(chexpert, "train", DataOptions(views="ap"))) == 2
    with pytest.raises(ChexcutError, match="no images selected"):
        load_split(chexpert, "valid", DataOptions(views="lateral"))


def test_prefix_resolution_from_either_folder(chexpert):
    a = load_split(chexpert, "train")
    b = load_split(chexpert / "CheXpert-v1.0-small", "train")
    assert a.files == b.files
    assert all(Path(f).is_file() for f in a.files)
    assert a.patient.tolist() == ["patient00001", "patient00002", "patient00003"]
    assert a.study.tolist()[2] == "patient00003/study2"


def test_own_valid_csv_is_used(chexpert):
    v = load_split(chexpert, "valid")
    assert v.paths == ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"]


def test_missing_columns_and_bad_values(tmp_path):
    (tmp_path / "train.csv").write_text("Path,Edema\na.jpg,1.0\n")
    with pytest.raises(ChexcutError, match="missing label columns: Atelectasis"):
        load_split(tmp_path, "train", DataOptions(labels=("Edema", "Atelectasis")))
    (tmp_path / "train.csv").write_text("Path,Edema\na.jpg,1.0\nb.jpg,2.0\nc.jpg,yes\n")
    with pytest.raises(ChexcutError, match=r"2 label cells .*row 3 Edema='2\.0'.*row 4 Edema='yes'"):
        load_split(tmp_path, "all")
    (tmp_path / "train.csv").write_text("File,Edema\na.jpg,1.0\n")
    with pytest.raises(ChexcutError, match="no path column 'Path'"):
        load_split(tmp_path, "all")


def test_missing_files_reported_or_skipped(chexpert):
    t = load_split(chexpert, "train")
    Path(t.files[1]).unlink()
    with pytest.raises(ChexcutError, match=r"1 of 3 images are missing .*patient00002.*--skip-missing"):
        check_files(t)
    kept = check_files(t, skip_missing=True)
    assert len(kept) == 2 and "skipped 1 missing" in kept.notes[-1]


def test_patient_split_has_no_leakage(tmp_path):
    lines = ["Path,Edema"] + [f"p{i % 37}/img{i}.png,{i % 2}.0" for i in range(400)]
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    opts = DataOptions(csv="all.csv", valid_frac=0.2, split_seed=3)
    table = read_csv_table(tmp_path / "all.csv", tmp_path, opts, "all")
    table.patient = np.array([p.split("/")[0] for p in table.paths], dtype=object)
    tr, va = patient_split(table, 0.2, 3)
    assert len(tr) + len(va) == 400 and not set(table.patient[tr]) & set(table.patient[va])
    tr2, _ = patient_split(table, 0.2, 3)
    assert np.array_equal(tr, tr2)  # seeded


def test_generic_csv_split_without_leakage(tmp_path):
    lines = ["Path,Edema"] + [f"images/{i // 3:08d}_{i % 3:03d}.png,{i % 2}.0" for i in range(300)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    opts = DataOptions(csv="labels.csv", valid_frac=0.25)
    tr, va = load_split(tmp_path, "train", opts), load_split(tmp_path, "valid", opts)
    assert len(tr) + len(va) == 300
    assert not set(tr.patient) & set(va.patient)
    assert tr.labels == ("Edema",)


def test_data_options_json_round_trip():
    opts = DataOptions(csv="x.csv", path_col="File", labels=("Edema",), views="all", uncertain="Edema=ones,default=ignore",
                       blank="ignore", valid_frac=0.2, split_seed=4)
    assert DataOptions.from_json(opts.to_json()) == opts
    assert DataOptions.from_json({}) == DataOptions()
