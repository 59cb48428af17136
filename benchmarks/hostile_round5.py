"""Round 5's inputs for benchmarks/hostile_sweep.py: bounded reads, the readers' cells, DICOM tags, external sets,
ensembles, the card on damaged run files, plans and launchers (issue 43)."""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path

import pandas as pd


def _bomb(path: Path, header: bytes, gigabytes: float = 1.0) -> None:
    """A gzip file of about 1 MB that expands to ``gigabytes`` GB on one line after ``header``."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    chunk = b"a" * (1 << 20)
    with open(path, "wb") as f:
        f.write(z.compress(header))
        for _ in range(int(gigabytes * 1024)):
            f.write(z.compress(chunk))
        f.write(z.flush())


def _folder(t: Path, name: str, source: Path) -> Path:
    return Path(shutil.copytree(source, t / name))


def round5(t: Path, cli) -> None:
    """Writes every damaged or hostile input of this round under ``t`` (the phantoms come from ``cli``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_datasets import _dicom
    from test_dicom_hostile import RAMP, _raw_tags

    for layout in ("padchest", "mimic", "vinbigdata"):
        assert cli("phantom", t / f"r5_{layout}", "--layout", layout, "--n", "20", "--image-size", "32", "-q")[0] == 0
    nih = t / "nih"
    entry = (nih / "Data_Entry_2017_v2020.csv").read_bytes()
    _bomb(_folder(t, "r5_bomb", nih) / "Data_Entry_2017_v2020.csv.gz", entry.split(b"\n")[0] + b"\n")
    (t / "r5_bomb" / "Data_Entry_2017_v2020.csv").unlink()
    rows = entry.decode().splitlines()
    (_folder(t, "r5_twocols", nih) / "Data_Entry_2017_v2020.csv").write_text(
        "\n".join([rows[0].replace("Finding Labels", "Finding Labels,Finding Labels", 1)]
                  + [",".join(r.split(",")[:2] + r.split(",")[1:]) for r in rows[1:]]) + "\n")
    (_folder(t, "r5_renamed", nih) / "Data_Entry_2017_v2020.csv").write_text(
        entry.decode().replace("Finding Labels", "Findings", 1))
    (_folder(t, "r5_pipes", nih) / "Data_Entry_2017_v2020.csv").write_text(entry.decode().replace(",", "|"))
    bad = rows[1].split(",")
    bad[1] = "Efusion"
    (_folder(t, "r5_term", nih) / "Data_Entry_2017_v2020.csv").write_text("\n".join([rows[0], ",".join(bad),
                                                                                       *rows[2:]]) + "\n")
    (t / "nih:nih").mkdir()
    labels = t / "r5_mimic" / "mimic-cxr-2.0.0-chexpert.csv.gz"
    good = pd.read_csv(labels)
    for name, value in (("yes", "yes"), ("two", 2.0)):
        frame = good.astype({"Edema": object})
        frame.loc[3, "Edema"] = value
        frame.to_csv(_folder(t, f"r5_mimic_{name}", t / "r5_mimic") / labels.name, index=False)
    pd.concat([good, good.iloc[[2]]]).to_csv(_folder(t, "r5_mimic_twice", t / "r5_mimic") / labels.name, index=False)
    pc_file = next((t / "r5_padchest").glob("PADCHEST*.csv"))
    for name, cell in (("nested", "[['pneumonia']]"), ("quoted", '["pneumonia"]'), ("bare", "pneumonia")):
        frame = pd.read_csv(pc_file, dtype=str)
        frame.loc[1, "Labels"] = cell
        frame.to_csv(_folder(t, f"r5_padchest_{name}", t / "r5_padchest") / pc_file.name, index=False)
    for name, tags in (("ww0", {"WindowCenter": "2048", "WindowWidth": "0"}),
                       ("wwtext", {"WindowCenter": "2048", "WindowWidth": "abc"}), ("frames", {"NumberOfFrames": "abc"}),
                       ("norows", {"Rows": None}), ("slope0", {"RescaleSlope": "0"}),
                       ("slopenan", {"RescaleSlope": "NaN"})):
        folder = t / f"r5_dcm_{name}"
        folder.mkdir()
        _raw_tags(folder / "x.dcm", **tags)
        pd.DataFrame({"Path": ["x.dcm"], "Edema": [1.0]}).to_csv(folder / "rows.csv", index=False)
    folder = t / "r5_dcm_cut"
    folder.mkdir()
    _dicom(folder / "x.dcm", RAMP)
    (folder / "x.dcm").write_bytes((folder / "x.dcm").read_bytes()[:-100])
    pd.DataFrame({"Path": ["x.dcm"], "Edema": [1.0]}).to_csv(folder / "rows.csv", index=False)
    (t / "r5_deep").mkdir()
    (t / "r5_deep" / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    (t / "r5_laughs.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    for name, change in (("nodata", lambda c, e: c.pop("data")), ("citext", lambda c, e: e.update(ci="ninety"))):
        run = Path(shutil.copytree(t / "run", t / f"r5_run_{name}"))
        assert cli("evaluate", run, "--bootstrap", "10", "--json", run / "eval.json", "-q")[0] == 0
        cfg, ev = json.loads((run / "config.json").read_text()), json.loads((run / "eval.json").read_text())
        change(cfg, ev)
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "eval.json").write_text(json.dumps(ev))
    from conftest import write_evil_pickle

    write_evil_pickle(t / "r5_evil.pt", t / "r5_ran")
    (t / "r5_members").mkdir()
    shutil.copy(t / "preds_copy.csv", t / "r5_members" / "predictions.csv")


def round5_cases(d: dict) -> list[tuple[str, list, dict]]:
    t, run, ph, valid = d["t"], d["run"], d["ph"], d["valid"]
    p1 = run / "valid_predictions.csv"
    index = ["datasets", "index"]
    plan = ["study", "plan", "--data", ph, "--archs", "resnet18", "--weights", "none", "--image-size", "32"]
    return [
        ("r5 a 1 MB gz that expands to 1 GB on one line", [*index, f"nih:{t / 'r5_bomb'}", "-o", t / "r5.csv"], {}),
        ("r5 NIH with two Finding Labels columns", [*index, f"nih:{t / 'r5_twocols'}", "-o", t / "r5.csv"], {}),
        ("r5 NIH with a renamed column", [*index, t / "r5_renamed", "-o", t / "r5.csv"], {}),
        ("r5 NIH with another separator", [*index, t / "r5_pipes", "-o", t / "r5.csv"], {}),
        ("r5 NIH with a term outside its vocabulary", [*index, f"nih:{t / 'r5_term'}", "-o", t / "r5.csv"], {}),
        ("r5 a folder named nih:nih beside the set", [*index, "nih:nih", "-o", t / "r5.csv"], {"cwd": t}),
        *[(f"r5 MIMIC label {n}", [*index, f"mimic:{t / f'r5_mimic_{n}'}", "-o", t / "r5.csv"], {})
          for n in ("yes", "two", "twice")],
        *[(f"r5 PadChest list {n}", [*index, f"padchest:{t / f'r5_padchest_{n}'}", "-o", t / "r5.csv"], {})
          for n in ("nested", "quoted", "bare")],
        *[(f"r5 DICOM {n}", ["prepare", t / f"r5_dcm_{n}", "--csv", "rows.csv", "--image-size", "32", "-q"], {})
          for n in ("ww0", "wwtext", "frames", "norows", "slope0", "slopenan", "cut")],
        ("r5 plan.json nested 100,000 deep", ["study", "status", t / "r5_deep"], {}),
        ("r5 about YAML of nested aliases", ["card", run, "-o", t / "r5.md", "--about", t / "r5_laughs.yaml"], {}),
        ("r5 external set that is the training set", [*plan, "--out", t / "r5_s1", "--external", ph], {}),
        ("r5 external set listed twice", [*plan, "--out", t / "r5_s2", "--external", f"nih:{t / 'nih'}", "--external",
                                          t / "nih"], {}),
        ("r5 seeds repeated", [*plan, "--out", t / "r5_s3", "--seeds", "1,1"], {}),
        ("r5 ensemble of one run spelled twice", ["ensemble", run, f"{run}/", "-o", t / "r5_e1"], {}),
        ("r5 ensemble into a member's folder", ["ensemble", p1, t / "r5_members" / "predictions.csv", "--truth", valid,
                                                "-o", t / "r5_members"], {}),
        ("r5 ensemble into a run's folder", ["ensemble", run, run, "-o", run], {}),
        *[(f"r5 card on a run with {n}", ["card", t / f"r5_run_{n}", "-o", t / "r5.md"], {})
          for n in ("nodata", "citext")],
        ("r5 explain --json onto the set's label file", ["explain", run, "--data", ph, "--limit", "1", "-o",
                                                         t / "r5_maps", "--json", valid], {}),
        ("r5 evaluate --predictions-out onto MIMIC's patients table", ["evaluate", run, "--data",
                                                                       f"mimic:{t / 'r5_mimic'}", "--predictions-out",
                                                                       t / "r5_mimic" / "patients.csv.gz"], {}),
        ("r5 a pretraining source on an architecture it does not fit", ["truncate", "resnet18", "--weights", "rad-dino",
                                                                        "-o", t / "r5.safetensors"], {}),
        ("r5 a pickled model that runs code as a source", ["truncate", "densenet121", "--weights",
                                                           f"txrv-all:{t / 'r5_evil.pt'}", "-o", t / "r5.safetensors"],
         {}),
        ("r5 failure images onto a file", ["evaluate", run, "--failures", "2", "--failure-images", p1], {}),
        ("r5 two outputs naming one file", ["evaluate", "--predictions", p1, "--truth", valid, "--json",
                                            t / "r5.json", "--csv-out", t / "r5.json"], {}),
        ("r5 study exec --step finetune with a launcher", ["study", "exec", t / "plan_ok", "--index", "0", "--step",
                                                           "finetune", "--launcher", "sh"], {}),
        ("r5 study exec with an unbalanced launcher", ["study", "exec", t / "plan_ok", "--index", "0", "--launcher",
                                                       "torchrun 'x"], {}),
        ("r5 study exec with a missing launcher", ["study", "exec", t / "plan_ok", "--index", "0", "--launcher",
                                                   "no-such-launcher-6f2"], {}),
    ]
