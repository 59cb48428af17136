"""A hostile user's sweep over every command: bad inputs must end in one clear line and exit 2.

    python benchmarks/hostile_sweep.py [--keep DIR] [--only SUBSTRING]

Builds a small phantom dataset, a model file, a short run and a predictions CSV, then tries each bad input
as a fresh `python -m chexcut` process. A case is *handled* when it exits 2 with exactly one stderr line
starting "chexcut: error:" (no traceback, no "internal error") and leaves no partial output behind. Prints
every case that is not, and the counts.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from hostile_round5 import round5, round5_cases

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None):
    """(exit code, stdout, stderr) of one ``python -m chexcut`` process; its peak memory goes to ``PEAK``."""
    import threading

    e = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", **(env or {}))
    p = subprocess.Popen([sys.executable, "-m", "chexcut", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=e, cwd=cwd)
    streams = {}
    readers = [threading.Thread(target=lambda n=n, f=f: streams.__setitem__(n, f.read()))
               for n, f in (("out", p.stdout), ("err", p.stderr))]
    for r in readers:
        r.start()
    timer = threading.Timer(300, p.kill)
    timer.start()
    _, status, usage = os.wait4(p.pid, 0)  # the child's own rusage: its peak resident memory
    timer.cancel()
    for r in readers:
        r.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    PEAK[" ".join(map(str, args))] = usage.ru_maxrss / 1024  # MiB (ru_maxrss is in KiB on Linux)
    if p.returncode == -9:
        return None, "", "still running after 300 s (killed)"
    return p.returncode, streams["out"], streams["err"]


PEAK: dict[str, float] = {}


def setup(t: Path) -> dict:
    assert cli("phantom", t / "ph", "--n", "80", "--image-size", "48", "-q")[0] == 0
    assert cli("truncate", "resnet18", "--drop", "3", "--weights", "none", "--image-size", "48",
               "-o", t / "m.safetensors", "-q")[0] == 0
    rc, _, err = cli("finetune", t / "m.safetensors", "--data", t / "ph", "--out", t / "run", "--image-size", "40",
                     "--batch-size", "8", "--epochs", "1", "--workers", "0", "--quiet")
    assert rc == 0, err
    base = t / "ph" / "CheXpert-v1.0-small"
    valid = pd.read_csv(base / "valid.csv")
    preds = pd.read_csv(t / "run" / "valid_predictions.csv")
    (t / "junk.safetensors").write_bytes(os.urandom(300))
    (t / "afile").write_text("x")
    pd.concat([valid, valid.head(2)]).to_csv(t / "dup_rows.csv", index=False)
    (t / "dup_header.csv").write_text(valid.to_csv(index=False).replace("Edema", "Cardiomegaly", 1))
    preds.head(0).to_csv(t / "empty_preds.csv", index=False)
    preds.drop(columns=["Edema"]).to_csv(t / "no_edema.csv", index=False)
    p2 = preds.astype({preds.columns[1]: object})
    p2.iloc[0, 1] = "abc"
    p2.to_csv(t / "nan_preds.csv", index=False)
    (t / "bad_plan").mkdir()
    (t / "bad_plan" / "plan.json").write_text("{")
    (t / "ro").mkdir()
    round3(t, base, valid, preds)
    round4(t, preds)
    round5(t, cli)
    return {"t": t, "ph": t / "ph", "valid": base / "valid.csv", "run": t / "run", "m": t / "m.safetensors"}


def round3(t: Path, base: Path, valid, preds) -> None:
    """Inputs of the third round: damaged run files, caches, plans, model specs, published-style files."""
    import json
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    valid.head(0).to_csv(t / "header_only.csv", index=False)
    for name, change in (("newer", lambda c: c["train"].update(future_setting=1)),
                         ("nokey", lambda c: c["train"].pop("lr")),
                         ("otherdrop", lambda c: c["model"].update(drop=2))):
        shutil.copytree(t / "run", t / f"run_{name}")
        cfg = json.loads((t / f"run_{name}" / "config.json").read_text())
        change(cfg)
        (t / f"run_{name}" / "config.json").write_text(json.dumps(cfg))
    with safe_open(str(t / "m.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for name, size in (("huge", 10**9), ("px", "320px")):
        spec = json.loads(meta["chexcut"]) if "chexcut" in meta else None
        if spec is None:
            continue
        spec["image_size"] = size
        save_file(tensors, str(t / f"spec_{name}.safetensors"), metadata={**meta, "chexcut": json.dumps(spec)})
    spec = json.loads(meta["chexcut"])
    for name, text in (("deep", json.dumps(spec)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                       ("std0", json.dumps({**spec, "normalisation": {"mean": [0.5] * 3, "std": [0, 0, 0]}})),
                       ("nanmean", json.dumps({**spec, "normalisation": {"mean": [float("nan")] * 3, "std": [1] * 3}}))):
        save_file(tensors, str(t / f"spec_{name}.safetensors"), metadata={**meta, "chexcut": text})
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(t / "script.pt"))
    (t / "plan_v99").mkdir()
    plan = {"format": "chexcut-study", "version": 99, "runs": []}
    (t / "plan_v99" / "plan.json").write_text(json.dumps(plan))
    # round 4: a plan of this version, hand-edited (a run outside runs/, a wrong type), and thresholds files
    assert cli("study", "plan", "--data", t / "ph", "--out", t / "plan_ok", "--archs", "resnet18", "--weights", "none",
               "--drops", "3")[0] == 0
    good = json.loads((t / "plan_ok" / "plan.json").read_text())
    for name, change in (("plan_escape", {"run_dir": "../../escape"}), ("plan_type", {"drop": "3"})):
        (t / name).mkdir()
        (t / name / "plan.json").write_text(json.dumps({**good, "runs": [{**good["runs"][0], **change}]}))
    point = {"label": "Edema", "rule": "youden", "threshold": 0.5}
    for name, points in (("thr_string", [{**point, "threshold": "high"}]), ("thr_object", {"Edema": point}),
                         ("thr_nolabel", [{"rule": "youden", "threshold": 0.5}]), ("thr_nan", [{**point, "threshold": float("nan")}]),
                         ("thr_range", [{**point, "threshold": 7}]), ("thr_unknown", [{**point, "label": "Shoe size"}])):
        (t / f"{name}.json").write_text(json.dumps({"operating_points": points}))
    (t / "thr_nan.csv").write_text("label,threshold\nEdema,nan\n")
    (t / "loop.json").symlink_to(t / "loop.json")
    truth = valid.rename(columns={"Path": "Study"})
    truth["Study"] = [p.rsplit("/", 1)[0] for p in truth["Study"]]
    truth = truth.drop_duplicates("Study")
    truth.to_csv(t / "study_truth.csv", index=False)
    sp = pd.DataFrame({"Study": truth["Study"]})
    for c in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"):
        sp[c] = 0.5
    sp.to_csv(t / "study_preds.csv", index=False)
    reads = sp.copy()
    reads.iloc[:, 1:] = 1
    reads.to_csv(t / "reader.csv", index=False)
    soft = sp.copy()
    soft.to_csv(t / "soft_reader.csv", index=False)
    sp.iloc[:-1].to_csv(t / "short_preds.csv", index=False)
    pd.concat([sp, sp.head(1)]).to_csv(t / "dup_keys.csv", index=False)
    sp.rename(columns={"Study": "Key"}).to_csv(t / "nokey.csv", index=False)
    assert cli("prepare", t / "ph", "--image-size", "40", "--cache", t / "cache_cut", "-q")[0] == 0
    u8 = t / "cache_cut" / "images.u8"
    with open(u8, "r+b") as f:  # an interrupted rsync
        f.truncate(u8.stat().st_size // 2)
    (t / "empty.csv").write_text("")
    (t / "notcsv.csv").write_bytes(os.urandom(200))


def round4(t: Path, preds) -> None:
    """Round 4's inputs: published-set folders (one damaged, one repeating an image), a CT DICOM, a bad YAML."""
    import gzip

    import numpy as np

    assert cli("phantom", t / "nih", "--layout", "nih", "--n", "20", "--image-size", "48", "-q")[0] == 0
    entry = (t / "nih" / "Data_Entry_2017_v2020.csv").read_bytes()
    (t / "nih_gz").mkdir()
    (t / "nih_gz" / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(entry)[:60])
    (t / "nih_dup").mkdir()
    (t / "nih_dup" / "Data_Entry_2017_v2020.csv").write_bytes(entry + entry.splitlines(keepends=True)[1])
    (t / "map_bad.csv").write_text("chexpert,source\nLung Opacity,Shoe size\n")
    (t / "about_bad.yaml").write_text("intended_use: [unclosed\n")
    sys.path.insert(0, str(REPO / "tests"))
    from test_datasets import _dicom

    (t / "ct").mkdir()
    _dicom(t / "ct" / "scan.dcm", np.zeros((32, 32), dtype=np.uint16), Modality="CT")
    pd.DataFrame({"Path": ["scan.dcm"], "Edema": [1.0]}).to_csv(t / "ct" / "rows.csv", index=False)
    preds.to_csv(t / "preds_copy.csv", index=False)


def round4_cases(d: dict) -> list[tuple[str, list, dict]]:
    t, run, ph = d["t"], d["run"], d["ph"]
    truth = d["valid"]
    p1, p2 = run / "valid_predictions.csv", t / "preds_copy.csv"
    return [
        ("datasets index onto its label file", ["datasets", "index", f"nih:{t / 'nih'}", "-o",
                                                t / "nih" / "Data_Entry_2017_v2020.csv"], {}),
        ("datasets index of an unknown set", ["datasets", "index", f"chexray:{t}", "-o", t / "i1.csv"], {}),
        ("datasets index of a damaged gz", ["datasets", "index", f"nih:{t / 'nih_gz'}", "-o", t / "i2.csv"], {}),
        ("datasets index repeating an image", ["datasets", "index", t / "nih_dup", "-o", t / "i3.csv"], {}),
        ("datasets index with a label map naming no label", ["datasets", "index", f"nih:{t / 'nih'}", "-o",
                                                             t / "i4.csv", "--label-map", t / "map_bad.csv"], {}),
        ("evaluate an unknown set", ["evaluate", run, "--data", f"bogus:{t}"], {}),
        ("evaluate a label map on a CheXpert folder", ["evaluate", run, "--data", ph, "--label-map", t / "map_bad.csv"],
         {}),
        ("prepare a CT DICOM", ["prepare", t / "ct", "--csv", "rows.csv", "--image-size", "32", "-q"], {}),
        ("card of a run without eval.json", ["card", run, "-o", t / "card.md"], {}),
        ("card with unreadable YAML", ["card", run, "-o", t / "card.md", "--about", t / "about_bad.yaml"], {}),
        ("card onto the run's config", ["card", run, "-o", run / "config.json"], {}),
        ("ensemble of one", ["ensemble", run, "-o", t / "e1"], {}),
        ("ensemble of a run and a CSV", ["ensemble", run, p1, "-o", t / "e2"], {}),
        ("ensemble weights count", ["ensemble", p1, p2, "--truth", truth, "--ensemble-weights", "1", "-o", t / "e3"], {}),
        ("ensemble averaging medians", ["ensemble", p1, p2, "--truth", truth, "--average", "median", "-o", t / "e4"],
         {}),
        ("evaluate ensemble beside compare", ["evaluate", "--predictions", p1, "--truth", truth, "--ensemble", p2,
                                              "--compare", p2], {}),
        ("evaluate prevalence-matched without by", ["evaluate", run, "--prevalence-matched"], {}),
        ("evaluate failure images without failures", ["evaluate", run, "--failure-images", t / "f"], {}),
        ("evaluate failures -1", ["evaluate", run, "--failures", "-1"], {}),
        ("phantom of an unknown layout", ["phantom", t / "ph2", "--layout", "chexray"], {}),
        ("phantom nih layout with masks", ["phantom", t / "ph3", "--layout", "nih", "--masks"], {}),
        ("study plan with a missing external set", ["study", "plan", "--data", ph, "--out", t / "s30", "--archs",
                                                    "resnet18", "--external", f"nih:{t / 'nowhere'}"], {}),
    ]


def cases(d: dict) -> list[tuple[str, list, dict]]:
    t, ph, valid, run, m = d["t"], d["ph"], d["valid"], d["run"], d["m"]
    return [
        ("inspect unknown arch", ["inspect", "resnet1"], {}),
        ("inspect image size 0", ["inspect", "resnet18", "--image-size", "0"], {}),
        ("inspect junk model file", ["inspect", t / "junk.safetensors"], {}),
        ("inspect missing file", ["inspect", t / "nope.safetensors"], {}),
        ("truncate drop out of range", ["truncate", "resnet18", "--drop", "9", "-o", t / "x.safetensors", "--weights", "none"], {}),
        ("truncate drop and keep", ["truncate", "resnet18", "--drop", "1", "--keep", "1", "-o", t / "x.safetensors"], {}),
        ("truncate empty labels", ["truncate", "resnet18", "--labels", ",", "-o", t / "x.safetensors", "--weights", "none"], {}),
        ("truncate output folder missing", ["truncate", "resnet18", "-o", t / "no" / "x.safetensors", "--weights", "none"], {}),
        ("truncate output is a folder", ["truncate", "resnet18", "-o", t, "--weights", "none"], {}),
        ("truncate wrong suffix", ["truncate", "resnet18", "-o", t / "x.pt", "--weights", "none"], {}),
        ("truncate weights file missing", ["truncate", "resnet18", "-o", t / "x.safetensors", "--weights", t / "w.pth"], {}),
        ("truncate imagenet offline", ["truncate", "resnet18", "-o", t / "x.safetensors"], {"TORCH_HOME": str(t / "th")}),
        ("truncate in-chans 2", ["truncate", "resnet18", "--in-chans", "2", "-o", t / "x.safetensors", "--weights", "none"], {}),
        ("phantom into a file", ["phantom", t / "afile"], {}),
        ("phantom huge image", ["phantom", t / "p2", "--image-size", "100000"], {}),
        ("phantom n too small", ["phantom", t / "p3", "--n", "3"], {}),
        ("prepare missing data", ["prepare", t / "nodata"], {}),
        ("prepare cache is a file", ["prepare", ph, "--cache", t / "afile", "--image-size", "32"], {}),
        ("prepare CHEXCUT_CACHE is a file", ["prepare", ph, "--image-size", "32"], {"CHEXCUT_CACHE": str(t / "afile")}),
        ("prepare bad resize", ["prepare", ph, "--resize", "crop"], {}),
        ("prepare duplicate rows", ["prepare", ph, "--csv", t / "dup_rows.csv", "--image-size", "32"], {}),
        ("prepare duplicate header", ["prepare", ph, "--csv", t / "dup_header.csv", "--image-size", "32"], {}),
        ("prepare bad uncertain policy", ["prepare", ph, "--uncertain", "maybe"], {}),
        ("finetune no data", ["finetune", m, "--out", t / "r2"], {}),
        ("finetune out is a file", ["finetune", m, "--data", ph, "--out", t / "afile"], {}),
        ("finetune batch too big", ["finetune", m, "--data", ph, "--out", t / "r3", "--batch-size", "100000"], {}),
        ("finetune fp16 on cpu", ["finetune", m, "--data", ph, "--out", t / "r4", "--precision", "fp16", "--device", "cpu"], {}),
        ("finetune bad recipe", ["finetune", m, "--data", ph, "--out", t / "r5", "--recipe", "slow"], {}),
        ("finetune existing run without force", ["finetune", m, "--data", ph, "--out", run], {}),
        ("finetune resume not a run", ["finetune", "--resume", t / "ro"], {}),
        ("finetune drop with a model file", ["finetune", m, "--drop", "1", "--data", ph, "--out", t / "r6"], {}),
        ("finetune negative lr", ["finetune", m, "--data", ph, "--out", t / "r7", "--lr", "-1"], {}),
        ("evaluate nothing", ["evaluate"], {}),
        ("evaluate model file without data", ["evaluate", m], {}),
        ("evaluate run: json folder missing", ["evaluate", run, "--json", t / "no" / "e.json"], {}),
        ("evaluate run: predictions-out is a folder", ["evaluate", run, "--predictions-out", t], {}),
        ("evaluate split train (leakage)", ["evaluate", run, "--split", "train"], {}),
        ("evaluate bad bootstrap", ["evaluate", run, "--bootstrap", "-1"], {}),
        ("evaluate bad ci", ["evaluate", run, "--ci", "1.5"], {}),
        ("evaluate margin without compare", ["evaluate", run, "--margin", "0.02"], {}),
        ("evaluate equivalence without margin", ["evaluate", run, "--compare", run, "--equivalence"], {}),
        ("evaluate bad method", ["evaluate", run, "--method", "anova"], {}),
        ("evaluate predictions without truth", ["evaluate", "--predictions", run / "valid_predictions.csv"], {}),
        ("evaluate empty predictions", ["evaluate", "--predictions", t / "empty_preds.csv", "--truth", valid], {}),
        ("evaluate non-numeric predictions", ["evaluate", "--predictions", t / "nan_preds.csv", "--truth", valid], {}),
        ("evaluate missing competition column", ["evaluate", "--predictions", t / "no_edema.csv", "--truth", valid], {}),
        ("evaluate junk model", ["evaluate", t / "junk.safetensors", "--data", ph], {}),
        ("evaluate moved data", ["evaluate", run, "--data", t / "nodata"], {}),
        ("study plan bad recipe", ["study", "plan", "--data", ph, "--out", t / "s1", "--archs", "resnet18", "--recipe", "x"], {}),
        ("study plan unknown option", ["study", "plan", "--data", ph, "--out", t / "s2", "--archs", "resnet18", "--frob", "1"], {}),
        ("study plan no runs", ["study", "plan", "--data", ph, "--out", t / "s3", "--archs", "resnet18", "--drops", "99"], {}),
        ("study plan out is a file", ["study", "plan", "--data", ph, "--out", t / "afile", "--archs", "resnet18"], {}),
        ("study run without plan", ["study", "run", t / "ro"], {}),
        ("report corrupt plan", ["report", t / "bad_plan"], {}),
        ("report nothing evaluated", ["report", t / "ro"], {}),
        ("report out is a file", ["report", run, "--out", t / "afile"], {}),
        ("demo bad arch", ["demo", t / "d1", "--archs", "foonet", "--offline"], {}),
        ("demo jobs 0", ["demo", t / "d2", "--jobs", "0", "--offline"], {}),
        ("demo folder is a file", ["demo", t / "afile", "--offline"], {}),
        ("weights unknown arch", ["weights", "fetch", "resnt18"], {}),
        ("weights fetch offline", ["weights", "fetch", "resnet18"], {"TORCH_HOME": str(t / "th")}),
        ("weights mirror missing file", ["weights", "fetch", "resnet18", "--mirror", t / "ro"], {"TORCH_HOME": str(t / "th")}),
        ("bench no cuda", ["bench", "resnet18", "--device", "cuda"], {}),
        ("bench image too small", ["bench", "inception_v3", "--image-size", "40"], {}),
        ("bench junk model", ["bench", t / "junk.safetensors"], {}),
        ("export to missing folder", ["export", m, "-o", t / "no" / "m.onnx"], {}),
        ("export junk model", ["export", t / "junk.safetensors", "-o", t / "j.onnx"], {}),
        ("export wrong suffix", ["export", m, "-o", t / "m.txt"], {}),
    ] + round3_cases(d) + round4_cases(d) + round5_cases(d)


def round3_cases(d: dict) -> list[tuple[str, list, dict]]:
    """The third round: newer commands, bounds on every number, damaged files, inputs as outputs, signals' kin."""
    t, ph, valid, run, m = d["t"], d["ph"], d["valid"], d["run"], d["m"]
    st, sp = t / "study_truth.csv", t / "study_preds.csv"
    ev = ["evaluate", "--predictions", sp, "--truth", st]
    ft = ["finetune", "resnet18", "--weights", "none", "--drop", "3", "--data", ph, "--workers", "0"]
    plan = ["study", "plan", "--data", ph, "--archs", "resnet18"]
    return [
        # an output that is an input: refused, the input untouched
        ("evaluate csv-out is the truth", [*ev, "--csv-out", st], {}),
        ("evaluate json is the predictions", [*ev, "--json", sp], {}),
        ("evaluate predictions-out is the truth", ["evaluate", run, "--predictions-out", valid], {}),
        ("evaluate csv-out is a reader", [*ev, "--readers", t / "reader.csv", "--csv-out", t / "reader.csv"], {}),
        ("evaluate json is the groups", [*ev, "--groups", st, "--by", "Sex", "--json", st], {}),
        ("truncate output is its weights", ["truncate", "resnet18", "--drop", "3", "--weights", m, "-o", m], {}),
        ("export onto the model", ["export", m, "-o", m], {}),
        ("bench json onto the model", ["bench", m, "--json", m, "--max-time", "0.1"], {}),
        ("explain json is the model", ["explain", m, "--data", ph, "--out", t / "ex1", "--json", m], {}),
        # numbers out of range
        ("finetune seed -1", [*ft, "--out", t / "f1", "--seed", "-1"], {}),
        ("finetune batch 0", [*ft, "--out", t / "f2", "--batch-size", "0"], {}),
        ("finetune batch -1", [*ft, "--out", t / "f3", "--batch-size", "-1"], {}),
        ("finetune epochs 0", [*ft, "--out", t / "f4", "--epochs", "0"], {}),
        ("finetune image size 10^9", [*ft, "--out", t / "f5", "--image-size", "1000000000"], {}),
        ("finetune image size 0", [*ft, "--out", t / "f6", "--image-size", "0"], {}),
        ("finetune val-every 0", [*ft, "--out", t / "f7", "--val-every", "0"], {}),
        ("finetune log-every 0", [*ft, "--out", t / "f8", "--log-every", "0"], {}),
        ("finetune max-steps 0", [*ft, "--out", t / "f9", "--max-steps", "0"], {}),
        ("finetune workers -1", [*ft, "--out", t / "f10", "--workers", "-1"], {}),
        ("finetune lr 0", [*ft, "--out", t / "f11", "--lr", "0"], {}),
        ("finetune lr nan", [*ft, "--out", t / "f12", "--lr", "nan"], {}),
        ("finetune precise-bn -1", [*ft, "--out", t / "f13", "--precise-bn", "-1"], {}),
        ("finetune valid-frac 1.5", [*ft, "--out", t / "f14", "--valid-frac", "1.5"], {}),
        ("finetune device meta", [*ft, "--out", t / "f15", "--device", "meta"], {}),
        ("finetune device nonsense", [*ft, "--out", t / "f16", "--device", "tpu9"], {}),
        ("finetune track-tag without =", [*ft, "--out", t / "f17", "--track-tag", "x"], {}),
        ("finetune in-chans 0", [*ft, "--out", t / "f18", "--in-chans", "0"], {}),
        ("finetune drop -1", ["finetune", "resnet18", "--weights", "none", "--drop", "-1", "--data", ph, "--out", t / "f19"], {}),
        ("finetune keep 0", ["finetune", "resnet18", "--weights", "none", "--keep", "0", "--data", ph, "--out", t / "f20"], {}),
        ("finetune TorchScript weights", ["finetune", "resnet18", "--weights", t / "script.pt", "--drop", "3", "--data", ph, "--out", t / "f21"], {}),
        ("phantom seed -1", ["phantom", t / "p4", "--seed", "-1"], {}),
        ("phantom n -5", ["phantom", t / "p5", "--n", "-5"], {}),
        ("phantom image size 0", ["phantom", t / "p6", "--image-size", "0"], {}),
        ("evaluate seed -1", [*ev, "--seed", "-1"], {}),
        ("evaluate bootstrap 10^9", [*ev, "--bootstrap", "1000000000"], {}),
        ("evaluate alpha 0", [*ev, "--alpha", "0"], {}),
        ("evaluate ci 0", [*ev, "--ci", "0"], {}),
        ("evaluate margin 2", [*ev, "--compare", sp, "--margin", "2"], {}),
        ("evaluate batch 0", ["evaluate", run, "--batch-size", "0"], {}),
        ("evaluate batch -1", ["evaluate", run, "--batch-size", "-1"], {}),
        ("evaluate workers -2", ["evaluate", run, "--workers", "-2"], {}),
        ("evaluate image size 10^9", ["evaluate", run, "--image-size", "1000000000"], {}),
        ("evaluate image size 1", ["evaluate", run, "--image-size", "1"], {}),
        ("evaluate device meta", ["evaluate", run, "--device", "meta"], {}),
        ("evaluate at-specificity 0", [*ev, "--at-specificity", "0"], {}),
        ("evaluate at-sensitivity x", [*ev, "--at-sensitivity", "x"], {}),
        ("evaluate age bins decreasing", [*ev, "--by", "Age", "--age-bins", "60,40"], {}),
        ("evaluate age bins not numbers", [*ev, "--by", "Age", "--age-bins", "a,b"], {}),
        ("evaluate by a missing column", [*ev, "--by", "Shoe size"], {}),
        ("evaluate by twice", [*ev, "--by", "Sex,Sex"], {}),
        ("inspect image size 10^9", ["inspect", "resnet18", "--image-size", "1000000000"], {}),
        ("inspect image size -3", ["inspect", "resnet18", "--image-size", "-3"], {}),
        ("truncate image size 10^9", ["truncate", "resnet18", "--weights", "none", "--image-size", "1000000000", "-o", t / "x.safetensors"], {}),
        ("truncate seed -1", ["truncate", "resnet18", "--weights", "none", "--seed", "-1", "-o", t / "x.safetensors"], {}),
        ("bench image size 10^9", ["bench", "resnet18", "--image-size", "1000000000"], {}),
        ("bench batch 0", ["bench", "resnet18", "--batch", "0"], {}),
        ("bench max-time 0", ["bench", "resnet18", "--max-time", "0"], {}),
        ("bench threads 0", ["bench", "resnet18", "--threads", "0"], {}),
        ("export image size 10^9", ["export", m, "-o", t / "y.onnx", "--image-size", "1000000000"], {}),
        ("explain top 0", ["explain", m, "--data", ph, "--out", t / "ex2", "--top", "0"], {}),
        ("explain limit 0", ["explain", m, "--data", ph, "--out", t / "ex3", "--limit", "0"], {}),
        ("explain check-limit 0", ["explain", m, "--data", ph, "--out", t / "ex4", "--check", "--check-limit", "0"], {}),
        ("prepare image size 10^9", ["prepare", ph, "--image-size", "1000000000"], {}),
        ("prepare workers -1", ["prepare", ph, "--image-size", "32", "--workers", "-1"], {}),
        ("report bootstrap -1", ["report", run, "--bootstrap", "-1"], {}),
        ("report alpha 2", ["report", run, "--alpha", "2"], {}),
        ("report margin 0", ["report", run, "--margin", "0"], {}),
        ("study plan bootstrap -1", [*plan, "--out", t / "s4", "--bootstrap", "-1"], {}),
        ("study plan seeds -1", [*plan, "--out", t / "s5", "--seeds", "-1"], {}),
        ("study plan drops -1", [*plan, "--out", t / "s6", "--drops", "-1"], {}),
        ("study plan gpus -1", [*plan, "--out", t / "s7", "--slurm", "--gpus-per-task", "-1"], {}),
        ("study plan time 12h", [*plan, "--out", t / "s8", "--slurm", "--time", "12h"], {}),
        ("study plan cpus 0", [*plan, "--out", t / "s9", "--slurm", "--cpus-per-task", "0"], {}),
        ("study plan mem lots", [*plan, "--out", t / "s10", "--slurm", "--mem", "lots"], {}),
        ("study plan nodes 0", [*plan, "--out", t / "s11", "--slurm", "--nodes", "0"], {}),
        ("study plan seeds not numbers", [*plan, "--out", t / "s12", "--seeds", "a"], {}),
        ("study run jobs 0", ["study", "run", t / "plan_v99", "--jobs", "0"], {}),
        ("study status without plan", ["study", "status", t / "ro"], {}),
        ("study status watch 0", ["study", "status", t / "plan_v99", "--watch", "0"], {}),
        ("demo seed -1", ["demo", t / "d3", "--seed", "-1", "--offline"], {}),
        ("demo n 1", ["demo", t / "d4", "--n", "1", "--offline"], {}),
        ("demo epochs 0", ["demo", t / "d5", "--epochs", "0", "--offline"], {}),
        # damaged or foreign files
        ("evaluate truth with only a header", ["evaluate", "--predictions", run / "valid_predictions.csv", "--truth", t / "header_only.csv"], {}),
        ("evaluate empty truth file", ["evaluate", "--predictions", run / "valid_predictions.csv", "--truth", t / "empty.csv"], {}),
        ("evaluate binary truth file", ["evaluate", "--predictions", run / "valid_predictions.csv", "--truth", t / "notcsv.csv"], {}),
        ("evaluate predictions missing a study", ["evaluate", "--predictions", t / "short_preds.csv", "--truth", st], {}),
        ("evaluate duplicated keys", ["evaluate", "--predictions", t / "dup_keys.csv", "--truth", st], {}),
        ("evaluate no key column", ["evaluate", "--predictions", t / "nokey.csv", "--truth", st], {}),
        ("evaluate key-col missing", [*ev, "--key-col", "Nope"], {}),
        ("evaluate spec image size 10^9", ["evaluate", t / "spec_huge.safetensors", "--data", ph], {}),
        ("evaluate spec image size 320px", ["evaluate", t / "spec_px.safetensors", "--data", ph], {}),
        ("inspect spec image size 320px", ["inspect", t / "spec_px.safetensors"], {}),
        ("bench spec image size 10^9", ["bench", t / "spec_huge.safetensors"], {}),
        ("export spec image size 10^9", ["export", t / "spec_huge.safetensors", "-o", t / "z.onnx"], {}),
        ("finetune resume: config from a newer version", ["finetune", "--resume", t / "run_newer"], {}),
        ("finetune resume: config missing a key", ["finetune", "--resume", t / "run_nokey"], {}),
        ("finetune resume: checkpoint of another drop", ["finetune", "--resume", t / "run_otherdrop", "--max-steps", "100"], {}),
        ("study run: plan from another version", ["study", "run", t / "plan_v99"], {}),
        ("prepare: cache cut short", ["evaluate", run, "--cache", t / "cache_cut"], {}),
        ("truncate TorchScript weights", ["truncate", "resnet18", "--weights", t / "script.pt", "-o", t / "x.safetensors"], {}),
        ("evaluate process substitution gone", [*ev[:2], "/dev/fd/63", *ev[3:]], {}),
        ("evaluate json and predictions-out both stdout", ["evaluate", run, "--json", "-", "--predictions-out", "-"], {}),
        ("evaluate readers not binary", [*ev, "--readers", t / "soft_reader.csv"], {}),
        ("evaluate thresholds missing", [*ev, "--thresholds", t / "nothing.csv"], {}),
        ("evaluate track without a run", [*ev, "--track", "sqlite:///x.db"], {}),
        # round 4 (issue 31, 33): the executor, plan schema, thresholds files, output paths, options on resume
        ("study exec index out of range", ["study", "exec", t / "plan_ok", "--index", "5"], {}),
        ("study exec unknown run", ["study", "exec", t / "plan_ok", "nope"], {}),
        ("study exec run id and index", ["study", "exec", t / "plan_ok", "x", "--index", "0"], {}),
        ("study exec bad step", ["study", "exec", t / "plan_ok", "--index", "0", "--step", "evaluate"], {}),
        ("study exec run outside runs/", ["study", "exec", t / "plan_escape", "--index", "0"], {}),
        ("study exec drop of the wrong type", ["study", "exec", t / "plan_type", "--index", "0"], {}),
        ("study exec without plan", ["study", "exec", t / "ro", "--index", "0"], {}),
        ("study plan seed beside seeds", [*plan, "--out", t / "s13", "--seed", "3"], {}),
        ("study plan log-format", [*plan, "--out", t / "s14", "--log-format", "json"], {}),
        ("study plan track-tag without track", [*plan, "--out", t / "s15", "--track-tag", "a=b"], {}),
        ("study plan sbatch with a newline", [*plan, "--out", t / "s16", "--slurm", "--sbatch", "--qos=a\n#SBATCH --x"], {}),
        ("study plan sbatch without dashes", [*plan, "--out", t / "s17", "--slurm", "--sbatch", "qos=long"], {}),
        ("study plan workers 1000", [*plan, "--out", t / "s18", "--workers", "1000"], {}),
        ("finetune resume with --epochs", ["finetune", "--resume", run, "--epochs", "9"], {}),
        ("finetune resume with --recipe", ["finetune", "--resume", run, "--recipe", "fast"], {}),
        *[(f"evaluate thresholds {n}", [*ev, "--thresholds", t / f"thr_{n}.json"], {})
          for n in ("string", "object", "nolabel", "nan", "range", "unknown")],
        ("evaluate thresholds csv nan", [*ev, "--thresholds", t / "thr_nan.csv"], {}),
        ("evaluate threshold-rule alone", [*ev, "--threshold-rule", "youden"], {}),
        ("evaluate json onto a symlink loop", [*ev, "--json", t / "loop.json"], {}),
        ("evaluate json name too long", [*ev, "--json", t / ("x" * 300 + ".json")], {}),
        ("study status json onto its plan", ["study", "status", t / "plan_ok", "--json", t / "plan_ok" / "plan.json"], {}),
        ("report json onto the run's config", ["report", run, "--json", run / "config.json"], {}),
        ("bench json onto the run's config", ["bench", run, "--json", run / "config.json"], {}),
        *[(f"inspect spec {n}", ["inspect", t / f"spec_{n}.safetensors"], {}) for n in ("deep", "std0", "nanmean")],
        *[(f"evaluate spec {n}", ["evaluate", t / f"spec_{n}.safetensors", "--data", ph], {})
          for n in ("deep", "std0", "nanmean")],
        ("evaluate age bins with nan", [*ev, "--by", "Age", "--age-bins", "0,nan,100"], {}),
        ("evaluate key-col is a label", [*ev, "--key-col", "Edema"], {}),
        ("evaluate labels empty list", [*ev, "--labels", ","], {}),
        ("finetune labels empty list", ["finetune", "resnet18", "--data", ph, "--out", t / "rz", "--labels", ","], {}),
        ("study plan by empty list", [*plan, "--out", t / "s19", "--by", ","], {}),
        ("study plan labels the data lacks", [*plan, "--out", t / "s20", "--labels", "Edema,Shoe size"], {}),
        ("study plan time shorter than the warning", [*plan, "--out", t / "s21", "--slurm", "--time", "1"], {}),
        ("study plan time in Arabic digits", [*plan, "--out", t / "s22", "--slurm", "--time", "\u0661\u0662:00:00"], {}),
        ("study status watch nan", ["study", "status", t / "plan_ok", "--watch", "nan"], {}),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--only", help="run the cases whose name contains this")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = a.keep or Path(tmp)
        d = setup(t)
        before = {p for p in t.rglob("*")}
        inputs = [p for p in t.iterdir() if p.is_file()] + [d["valid"], d["run"] / "config.json",
                                                             d["run"] / "valid_predictions.csv",
                                                             t / "r5_members" / "predictions.csv",
                                                             t / "nih" / "Data_Entry_2017_v2020.csv"]
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
        failed = []
        all_cases = [c for c in cases(d) if not a.only or a.only in c[0]]
        slowest = (0.0, "")
        for name, args, env in all_cases:  # env: environment variables, and "cwd" (the folder the case runs in)
            env = dict(env)
            started = time.perf_counter()
            rc, out, err = cli(*args, env=env, cwd=env.pop("cwd", None))
            slowest = max(slowest, (time.perf_counter() - started, name))
            lines = [ln for ln in err.splitlines() if ln.strip() and "━" not in ln]
            ok = (rc == 2 and len(lines) == 1 and lines[0].startswith("chexcut: error:")
                  and "Traceback" not in err and "internal error" not in err)
            if not ok:
                failed.append((name, rc, err.strip()[-400:]))
                print(f"NOT HANDLED: {name}: exit {rc}: {err.strip()[-400:]}", flush=True)
        leftovers = [str(p) for p in set(t.rglob("*")) - before
                     if p.name.endswith((".tmp", ".part", ".onnx")) or p.name == "x.safetensors"]
        for p in leftovers:
            print(f"LEFT BEHIND: {p}")
        changed = [str(p) for p, h in digest.items() if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != h]
        for p in changed:
            print(f"INPUT CHANGED: {p}")
        print(f"{len(all_cases)} hostile inputs tried, {len(all_cases) - len(failed)} handled (exit 2, one line), "
              f"{len(leftovers)} partial files left, {len(changed)} input files changed")
        case_peak = {name: PEAK[" ".join(map(str, args))] for name, args, _ in all_cases}
        biggest = max(case_peak, key=case_peak.get)
        print(f"largest memory of any case: {case_peak[biggest]:.0f} MiB ({biggest}); slowest case: {slowest[1]} "
              f"({slowest[0]:.1f} s)")
        sys.exit(1 if failed or leftovers or changed else 0)


if __name__ == "__main__":
    main()
