"""Published data sets read as published (issue 32): the real label tables shipped in torchxrayvision's wheel,
phantoms in each published layout, DICOM decoding, external evaluation.

The real tables are fetched once per machine (``pip download --no-deps torchxrayvision==1.5.7`` into
``~/.cache/chexcut-test``; or ``CHEXCUT_XRV_DATA=DIR`` names an unzipped ``torchxrayvision/data``); the tests
that need them skip, saying why, when the package index cannot be reached. They are never committed.
Expected counts are recomputed here from the raw columns with plain Python (not the readers' pandas code).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

XRV = "torchxrayvision==1.5.7"


def _fetch_xrv() -> Path:
    given = os.environ.get("CHEXCUT_XRV_DATA")
    if given:
        return Path(given)
    cache = Path.home() / ".cache" / "chexcut-test" / "xrv-1.5.7"
    data = cache / "torchxrayvision" / "data"
    if data.is_dir():
        return data
    tmp = cache.with_name(f"xrv-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", XRV, "-d", str(tmp)],
                       capture_output=True, text=True, timeout=300)
    wheels = list(tmp.glob("*.whl"))
    if r.returncode or not wheels:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"the real label tables need `pip download {XRV}`, which failed: "
                    f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no wheel']}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("torchxrayvision/data/")])
    try:
        tmp.rename(cache)  # atomic: another xdist worker may have won; then use its copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return data


@pytest.fixture(scope="module")
def xrv(tmp_path_factory):
    """One folder per published set holding its real label file (a link), as it sits beside the images."""
    data = _fetch_xrv()
    root = tmp_path_factory.mktemp("real")
    for name, files in {"nih": ["Data_Entry_2017_v2020.csv.gz"],
                        "padchest": ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"],
                        "vinbigdata": ["vinbigdata-train.csv.gz"]}.items():
        (root / name).mkdir()
        for f in files:
            (root / name / f).symlink_to(data / f)
    return root


def _index(folder, ref, *extra):
    out = folder / f"{ref.split(':')[0]}-index.csv"
    code, stdout, stderr = run_cli("datasets", "index", ref, "-o", out, "--json", "-", *extra)
    assert code == 0, stderr
    return json.loads(stdout), out


def _counts(label_sets, mapping):
    """Positives per CheXpert label from rows' sets of own labels (None: a row without labels)."""
    return {c: sum(1 for s in label_sets if s is not None and set(src) & s) for c, src in mapping.items() if src}


def test_nih_index_matches_the_published_counts_and_the_raw_columns(xrv, tmp_path):
    from chexcut.data.datasets import get

    s, out = _index(tmp_path, f"nih:{xrv / 'nih'}")
    assert (s["images"], s["patients"]) == (112_120, 30_805)  # NIH's published counts
    assert s["views"] == {"Frontal": 112_120} and s["ap_pa"] == {"PA": 67_310, "AP": 44_810}
    assert s["sex"] == {"Male": 63_340, "Female": 48_780}
    assert s["missing_images"] == 112_120  # labels only here: every image is named missing
    with gzip.open(xrv / "nih" / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        next(f)
        sets = [set(line.split(",")[1].split("|")) for line in f]
    expect = _counts(sets, get("nih").mapping)
    assert {c: v["positive"] for c, v in s["labels"].items() if isinstance(v, dict)} == expect
    assert s["labels"]["Fracture"] == "not annotated" and s["labels"]["Support Devices"] == "not annotated"
    import pandas as pd

    idx = pd.read_csv(out, low_memory=False)
    assert len(idx) == 112_120 and set(idx["Fracture"]) == {"not annotated"}
    assert int((idx["Lung Lesion"] == 1).sum()) == expect["Lung Lesion"]


def test_padchest_index_matches_the_published_counts_and_the_raw_columns(xrv, tmp_path):
    import csv

    from chexcut.data.datasets import get

    s, _ = _index(tmp_path, str(xrv / "padchest"))  # detected from its label file
    assert (s["dataset"], s["images"], s["patients"], s["studies"]) == ("padchest", 160_861, 67_625, 109_931)
    rows = list(csv.DictReader(gzip.open(xrv / "padchest" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
                                         "rt")))
    proj = Counter(r["Projection"] for r in rows)
    assert s["views"]["Frontal"] == proj["PA"] + proj["AP"] + proj["AP_horizontal"]
    assert s["views"]["Lateral"] == proj["L"]
    assert s["sex"] == {"Male": 80_920, "Female": 79_919, "Other": 18, "(blank)": 4}
    # 103 rows have no list (one reads "nan"): blank in every label
    sets = [None if r["Labels"] in ("", "nan") else {t.strip().lower() for t in ast.literal_eval(r["Labels"])}
            for r in rows]
    mapping = {c: [t.lower() for t in src] for c, src in get("padchest").mapping.items()}
    expect = _counts(sets, mapping)
    assert {c: v["positive"] for c, v in s["labels"].items()} == expect
    assert all(v["blank"] == sum(x is None for x in sets) for v in s["labels"].values())


def test_vinbigdata_image_labels_by_the_majority_and_the_any_rule(xrv, tmp_path):
    import csv

    from chexcut.data.datasets import get

    rows = list(csv.DictReader(gzip.open(xrv / "vinbigdata" / "vinbigdata-train.csv.gz", "rt")))
    readers, marks = {}, {}
    for r in rows:
        readers.setdefault(r["image_id"], set()).add(r["rad_id"])
        marks.setdefault((r["image_id"], r["class_name"]), set()).add(r["rad_id"])
    for ref, need in (("vinbigdata", lambda n: n // 2 + 1), ("vinbigdata-any", lambda n: 1)):
        s, _ = _index(tmp_path, f"{ref}:{xrv / 'vinbigdata'}")
        assert (s["images"], s["patients"]) == (15_000, 15_000)
        for c, src in get(ref).mapping.items():
            if c == "No Finding" or not src:
                continue
            expect = sum(1 for i, n in readers.items() if len(marks.get((i, src[0]), ())) >= need(len(n)))
            assert s["labels"][c]["positive"] == expect, (ref, c)
        assert s["labels"]["Edema"] == "not annotated"


def test_indexing_the_real_tables_reads_them_whole(xrv):
    from chexcut.data.tables import DataOptions, load_split

    nih = load_split(f"nih:{xrv / 'nih'}", "all", DataOptions(views="all"))
    assert len(nih) == 112_120 and nih.not_annotated == ("Enlarged Cardiomediastinum", "Lung Opacity", "Fracture",
                                                         "Support Devices")
    tr, va = (load_split(f"nih:{xrv / 'nih'}", s, DataOptions()) for s in ("train", "valid"))
    assert not set(tr.patient) & set(va.patient) and len(tr) + len(va) == 112_120


# ----------------------------------------------------------------------------- layouts, without the network

@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    from chexcut.data.phantom_layouts import make_layout_phantom

    root = tmp_path_factory.mktemp("layouts")
    return {name: make_layout_phantom(root / name, name, 60, 48, seed=3)
            for name in ("nih", "padchest", "vinbigdata", "mimic")}


def test_every_layout_reads_back_as_published(layouts):
    from chexcut.data.datasets import DATASETS
    from chexcut.data.tables import DataOptions, check_files, load_split

    for name, folder in layouts.items():
        table = check_files(load_split(folder, "all", DataOptions(views="all")))  # detected; every file found
        assert len(table) == 60, name
        assert set(table.not_annotated) == set(DATASETS[name].not_annotated), name
        for j, label in enumerate(table.labels):
            if label not in table.not_annotated:
                assert 0 < table.targets[:, j].sum() < 60 or label in ("Pneumothorax", "Pleural Other", "Fracture",
                                                                       "Lung Lesion", "Pneumonia"), (name, label)


def test_mimic_layout_official_split_views_and_demographics(layouts, tmp_path):
    import pandas as pd

    from chexcut.data.tables import DataOptions, load_split

    folder = layouts["mimic"]
    split = pd.read_csv(folder / "mimic-cxr-2.0.0-split.csv.gz")
    sizes = {s: len(load_split(f"mimic:{folder}", s, DataOptions(views="all"))) for s in ("train", "valid", "test")}
    assert sizes == {"train": int((split.split == "train").sum()), "valid": int((split.split == "validate").sum()),
                     "test": int((split.split == "test").sum())}
    s, out = _index(tmp_path, f"mimic:{folder}")
    assert s["missing_images"] == 0 and set(s["sex"]) <= {"Male", "Female"}
    idx = pd.read_csv(out)
    assert idx["Path"].str.match(r"files/p\d\d/p\d{8}/s\d+/[0-9a-f-]+\.jpg").all()
    truth = pd.read_csv(folder / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert int((idx["Edema"] == 1).sum()) == int((truth["Edema"] == 1).sum())


def test_a_label_map_replaces_the_declared_mapping(layouts, tmp_path):
    from chexcut.data.tables import DataOptions, load_split

    m = tmp_path / "map.csv"
    m.write_text("chexpert,source\nLung Opacity,Infiltration\nLung Opacity,Consolidation\nPleural Other,\n")
    t = load_split(f"nih:{layouts['nih']}", "all", DataOptions(label_map=str(m)))
    assert "Lung Opacity" not in t.not_annotated and "Pleural Other" in t.not_annotated
    m.write_text("chexpert,source\nLung Opacity,Shoe size\n")
    code, _, err = run_cli("datasets", "index", f"nih:{layouts['nih']}", "-o", tmp_path / "i.csv", "--label-map", m)
    assert code == 2 and "'Shoe size'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "i.csv").exists()


def test_datasets_lists_every_declaration_and_refuses_unknown_sets(tmp_path):
    code, out, _ = run_cli("datasets", "--json", "-")
    names = [d["name"] for d in json.loads(out)]
    assert {"chexpert", "mimic", "nih", "padchest", "vinbigdata"} <= set(names)
    nih = next(d for d in json.loads(out) if d["name"] == "nih")
    assert nih["mapping"]["Pleural Effusion"] == ["Effusion"] and "Fracture" in nih["not_annotated"]
    code, _, err = run_cli("datasets", "index", f"chexray:{tmp_path}", "-o", tmp_path / "x.csv")
    assert code == 2 and "unknown data set 'chexray'" in err
    code, _, err = run_cli("evaluate", "x", "--data", f"nih:{tmp_path}")
    assert code == 2 and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- DICOM

def _dicom(path, stored, photometric="MONOCHROME2", bits=12, **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = tags.pop("Modality", "CR")
    ds.set_pixel_data(stored, photometric, bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_pixels_follow_the_file(tmp_path):
    from chexcut.data.images import load_image

    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 64 x 64, 12-bit
    expect = np.round(ramp / 4095 * 255).astype(np.uint8)
    mono2 = load_image(_dicom(tmp_path / "a.dcm", ramp), 64)
    assert np.abs(mono2.astype(int) - expect).max() <= 1
    mono1 = load_image(_dicom(tmp_path / "b.dcm", ramp, "MONOCHROME1"), 64)
    assert np.abs(mono1.astype(int) - (255 - expect)).max() <= 1  # MONOCHROME1: high values are dark
    # RescaleSlope 2, intercept -100, then a window of centre 2000 and width 1000 over the rescaled values
    win = load_image(_dicom(tmp_path / "c.dcm", ramp, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2000,
                            WindowWidth=1000), 64)
    x = ramp * 2.0 - 100
    lo, hi = -100.0, 4095 * 2.0 - 100  # the output range: the stored range through the rescale
    y = np.clip(((x - (2000 - 0.5)) / (1000 - 1) + 0.5), 0, 1) * (hi - lo) + lo  # DICOM PS3.3 C.11.2.1.2.1
    assert np.abs(win.astype(int) - np.round((y - lo) / (hi - lo) * 255)).max() <= 1
    assert win[:, 0].max() == 0 and win[:, -1].min() == 255  # clipped below and above the window
    named_png = tmp_path / "d.png"
    shutil.copy(tmp_path / "a.dcm", named_png)  # a DICOM by its preamble, whatever its name
    assert np.array_equal(load_image(named_png, 64), mono2)


def test_dicom_that_is_no_radiograph_or_lacks_a_decoder_is_a_bad_image(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    from chexcut.data.images import load_image
    from chexcut.errors import ChexcutError

    ramp = np.zeros((32, 32), dtype=np.uint16)
    with pytest.raises(ChexcutError, match="Modality CT is not a projection radiograph"):
        load_image(_dicom(tmp_path / "ct.dcm", ramp, Modality="CT"), 32)
    import pydicom

    p = _dicom(tmp_path / "j2k.dcm", ramp)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 40])
    ds.save_as(p)
    try:
        import pylibjpeg  # noqa: F401
        pytest.skip("a JPEG 2000 decoder is installed here")
    except ImportError:
        pass
    with pytest.raises(ChexcutError, match="pip install pylibjpeg"):
        load_image(p, 32)


# ----------------------------------------------------------------------------- the workflow

def test_external_evaluation_on_nih_and_padchest_layouts(trained_run, layouts, tmp_path):
    out = tmp_path / "nih.json"
    code, _, err = run_cli("evaluate", trained_run, "--data", f"nih:{layouts['nih']}", "--bootstrap", "30",
                           "--by", "Sex", "--json", out, "-q")
    assert code == 0, err
    r = json.loads(out.read_text())
    es = r["evaluation_set"]
    assert (es["kind"], es["dataset"], es["split"]) == ("external", "nih", "all")
    assert es["overlap"]["checked"] and not es["overlap"]["patients_checked"]  # patient ids of another set: unrelated
    dropped = {x["label"] for x in r["labels"] if x.get("not_evaluable", "").startswith("not annotated")}
    assert dropped == {"Enlarged Cardiomediastinum", "Lung Opacity", "Fracture", "Support Devices"}
    assert r["mean_competition"]["labels"] == 5 and r["subgroups"]
    code, stdout, err = run_cli("evaluate", trained_run, "--data", layouts["padchest"], "--bootstrap", "30", "--by",
                                "MethodLabel", "--json", "-", "-q")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["evaluation_set"]["dataset"] == "padchest" and r["evaluation_set"]["kind"] == "external"
    assert {g["by"] for g in r["subgroups"]} == {"MethodLabel"}
    assert {g["group"] for g in r["subgroups"]} <= {"Physician", "RNN_model"}


def test_dicom_set_through_prepare_finetune_and_evaluate(layouts, tmp_path):
    data = f"vinbigdata:{layouts['vinbigdata']}"
    code, out, err = run_cli("prepare", data, "--image-size", "40", "--cache", tmp_path / "cache", "--json", "-", "-q")
    assert code == 0, err
    assert json.loads(out)["decoded"] == 60
    run = tmp_path / "run"
    code, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--drop", "2", "--data", data, "--out", run,
                           "--image-size", "40", "--batch-size", "8", "--max-steps", "3", "--workers", "0",
                           "--device", "cpu", "-q")
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["dataset"] == "vinbigdata" and cfg["data"]["dir"] == str(layouts["vinbigdata"])
    code, out, err = run_cli("evaluate", run, "--bootstrap", "20", "--json", "-", "-q")
    assert code == 0, err
    r = json.loads(out)
    assert r["evaluation_set"]["kind"] == "run-validation" and r["evaluation_set"]["dataset"] == "vinbigdata"
    # the run's own set: patients are checked, and its training rows are refused as an evaluation set
    code, _, err = run_cli("evaluate", run, "--split", "train", "--bootstrap", "20", "--json", "-", "-q")
    assert code == 2 and "shares" in err


def test_study_with_external_sets_and_its_report(phantom, layouts, tmp_path):
    study = tmp_path / "study"
    code, _, err = run_cli("study", "plan", "--data", phantom, "--out", study, "--archs", "resnet18", "--weights",
                           "none", "--drops", "0,1", "--bootstrap", "20", "--external",
                           f"nih:{layouts['nih']},{layouts['padchest']}", "--max-steps", "2", "--image-size", "40",
                           "--batch-size", "8", "--workers", "0", "--device", "cpu")
    assert code == 0, err
    plan = json.loads((study / "plan.json").read_text())
    assert [e["name"] for e in plan["evaluate_options"]["external"]] == ["nih", "padchest"]
    code, _, err = run_cli("study", "run", study, "-q")
    assert code == 0, err
    for run in plan["runs"]:
        ext = json.loads((study / run["run_dir"] / "external" / "nih.json").read_text())
        assert ext["evaluation_set"]["dataset"] == "nih" and ext["evaluation_set"]["split"] == "all"
    code, _, err = run_cli("report", study, "-o", tmp_path / "rep")
    assert code == 0, err
    rep = json.loads((tmp_path / "rep" / "results.json").read_text())
    blocks = {b["name"]: b for b in rep["external"]}
    assert set(blocks) == {"nih", "padchest"}
    nih = blocks["nih"]
    assert len(nih["configurations"]) == 2 and nih["ranking"]["n"] == 2
    row = nih["configurations"][0]
    internal = next(r for r in rep["results"] if (r["arch"], r["drop"]) == (row["arch"], row["drop"]))
    assert row["internal"] == internal["auroc"] and abs(row["difference"] - (row["external"] - row["internal"])) < 1e-12
    assert "Fracture" not in row["labels"]  # not annotated in NIH: never compared
    assert (tmp_path / "rep" / "external_nih.png").stat().st_size > 0
    assert "External validation: nih" in (tmp_path / "rep" / "report.md").read_text()


def test_external_interval_and_rank_correlation_by_hand():
    from scipy.stats import spearmanr

    from chexcut.study.external import difference, rank_correlation

    d = difference((0.80, 0.76, 0.84), (0.70, 0.64, 0.76), 0.05)
    se = ((0.08 / 3.919927969080108) ** 2 + (0.12 / 3.919927969080108) ** 2) ** 0.5
    assert abs(d["difference"] + 0.10) < 1e-12 and abs(d["ci_low"] - (-0.10 - 1.959963984540054 * se)) < 1e-9
    x, y = [0.70, 0.72, 0.75, 0.78, 0.80, 0.81], [0.60, 0.65, 0.64, 0.70, 0.73, 0.71]
    r = rank_correlation(x, y, 0.05)
    rho = spearmanr(x, y)[0]
    import math

    half = 1.959963984540054 * math.sqrt((1 + rho ** 2 / 2) / 3)
    assert abs(r["spearman_rho"] - rho) < 1e-12
    assert abs(r["ci_low"] - math.tanh(math.atanh(rho) - half)) < 1e-12 and r["ci_high"] < 1


def test_a_label_map_and_a_published_set_reach_every_run_of_a_study(layouts, tmp_path, monkeypatch):
    import chexcut.training.loop as loop
    from chexcut.study.execute import execute

    m = tmp_path / "map.csv"
    m.write_text("chexpert,source\nLung Opacity,Infiltration\n")
    code, _, err = run_cli("study", "plan", "--data", f"nih:{layouts['nih']}", "--out", tmp_path / "s", "--archs",
                           "resnet18", "--weights", "none", "--drops", "3", "--label-map", m)
    assert code == 0, err
    seen = []
    monkeypatch.setattr(loop, "finetune", lambda run, emit=None: seen.append(run))
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["data"] == str(layouts["nih"])
    execute(tmp_path / "s", plan["runs"][0], plan, step="finetune")
    assert seen[0].opts.label_map == str(m) and seen[0].opts.dataset == "nih"


def test_hostile_label_files_are_one_line_and_write_nothing(tmp_path):
    nih = tmp_path / "nih"
    nih.mkdir()
    entry = nih / "Data_Entry_2017.csv"
    entry.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                     "a.png,Edema,0,1,50,M,PA\n")
    before = entry.read_bytes()
    cases = [(["-o", entry], "which this command reads")]  # the index never replaces the labels it reads
    for content, words in ((before + b"a.png,Edema,0,1,50,M,PA\n", "repeat an image"),
                           (gzip.compress(before)[:40], "not a readable CSV")):
        bad = tmp_path / f"bad{len(cases)}"
        bad.mkdir()
        (bad / ("Data_Entry_2017.csv.gz" if content[:2] == b"\x1f\x8b" else "Data_Entry_2017.csv")).write_bytes(content)
        cases.append(([f"nih:{bad}", "-o", tmp_path / "out.csv"], words))
    for args, words in cases:
        argv = ["datasets", "index", *(args if str(args[0]).startswith("nih:") else [f"nih:{nih}", *args])]
        code, _, err = run_cli(*argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert entry.read_bytes() == before and not (tmp_path / "out.csv").exists()


def test_explain_and_finetune_take_a_published_set(trained_run, layouts, tmp_path):
    code, _, err = run_cli("explain", trained_run, "--data", f"nih:{layouts['nih']}", "--limit", "2", "-o",
                           tmp_path / "maps", "-q")
    assert code == 0, err
    assert any(p.name.endswith("-sheet.png") for p in (tmp_path / "maps").iterdir())
    code, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--data", f"chexray:{layouts['nih']}",
                           "--out", tmp_path / "run")
    assert code == 2 and "unknown data set 'chexray'" in err and not (tmp_path / "run").exists()
