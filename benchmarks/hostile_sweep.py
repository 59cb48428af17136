"""A hostile user's sweep over every command: bad inputs must end in one clear line and exit 2.

    python benchmarks/hostile_sweep.py [--keep DIR]

Builds a small phantom dataset, a model file, a short run and a predictions CSV, then tries each bad input
as a fresh `python -m chexcut` process. A case is *handled* when it exits 2 with exactly one stderr line
starting "chexcut: error:" (no traceback, no "internal error") and leaves no partial output behind. Prints
every case that is not, and the counts.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None):
    e = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", **(env or {}))
    p = subprocess.run([sys.executable, "-m", "chexcut", *map(str, args)], capture_output=True, text=True, env=e,
                       cwd=cwd, timeout=600)
    return p.returncode, p.stdout, p.stderr


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
    return {"t": t, "ph": t / "ph", "valid": base / "valid.csv", "run": t / "run", "m": t / "m.safetensors"}


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
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = a.keep or Path(tmp)
        d = setup(t)
        before = {p for p in t.rglob("*")}
        failed = []
        all_cases = cases(d)
        for name, args, env in all_cases:
            rc, out, err = cli(*args, env=env)
            lines = [ln for ln in err.splitlines() if ln.strip() and "━" not in ln]
            ok = (rc == 2 and len(lines) == 1 and lines[0].startswith("chexcut: error:")
                  and "Traceback" not in err and "internal error" not in err)
            if not ok:
                failed.append((name, rc, err.strip()[-400:]))
        leftovers = [str(p) for p in set(t.rglob("*")) - before
                     if p.name.endswith((".tmp", ".part", ".onnx")) or p.name == "x.safetensors"]
        for name, rc, err in failed:
            print(f"NOT HANDLED: {name}: exit {rc}: {err}")
        for p in leftovers:
            print(f"LEFT BEHIND: {p}")
        print(f"{len(all_cases)} hostile inputs tried, {len(all_cases) - len(failed)} handled (exit 2, one line), "
              f"{len(leftovers)} partial files left")
        sys.exit(1 if failed or leftovers else 0)


if __name__ == "__main__":
    main()
