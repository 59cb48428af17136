"""How long `chexcut evaluate --predictions P --truth T --by Sex` takes from the shell, with calibration and
average precision, 1,000 replicates (targets: N = 500 studies x 5 labels well under 3 s; 200,000 rows under
60 s), and whether that path imports torch.

    python benchmarks/published_speed.py [--repeat 3] [--big 200000]

It also times 3 readers' files (--readers) with operating points at N = 500 (target: well under 5 s).

Files are shaped like the public CheXpert test set (a Study key, the 5 competition columns) plus a groups CSV
with Sex. Prints the median wall time of each size, measured in this one run.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TASKS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def make(folder: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    patients = max(1, n // 3) if n > 500 else n
    study = [f"CheXpert-v1.0/test/patient{rng.integers(patients):06d}/study{i}" for i in range(n)]
    truth, preds = pd.DataFrame({"Study": study}), pd.DataFrame({"Study": study})
    for t in TASKS:
        y = (rng.random(n) < 0.25).astype(int)
        truth[t] = y
        preds[t] = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, n))))
    truth.to_csv(folder / "truth.csv", index=False)
    preds.to_csv(folder / "preds.csv", index=False)
    pd.DataFrame({"Study": study, "Sex": rng.choice(["Female", "Male"], n)}).to_csv(folder / "groups.csv", index=False)
    for k in range(3):  # benchmark radiologists' binary reads (bc4/bc6/bc8 in the public repository)
        reads = pd.DataFrame({"Study": study})
        for t in TASKS:
            reads[t] = ((1.5 * truth[t] + rng.normal(0, 1, n)) > 0.8 + 0.2 * k).astype(int)
        reads.to_csv(folder / f"bc{4 + 2 * k}.csv", index=False)
    return ["evaluate", "--predictions", str(folder / "preds.csv"), "--truth", str(folder / "truth.csv"),
            "--groups", str(folder / "groups.csv"), "--by", "Sex", "--bootstrap", "1000", "--json",
            str(folder / "out.json"), "--quiet"]


def readers_args(folder: Path) -> list[str]:
    """3 readers, operating points at specificity 0.9 and sensitivity 0.8, calibration and AP, 1,000 replicates."""
    return ["evaluate", "--predictions", str(folder / "preds.csv"), "--truth", str(folder / "truth.csv"),
            "--readers", ",".join(str(folder / f"bc{k}.csv") for k in (4, 6, 8)), "--at-specificity", "0.9",
            "--at-sensitivity", "0.8", "--bootstrap", "1000", "--json", str(folder / "readers.json"), "--quiet"]


def wall(args, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chexcut", *args], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big", type=int, default=200_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n, repeat in ((500, a.repeat), (a.big, 1)):
            d = Path(tmp) / str(n)
            d.mkdir()
            args = make(d, n)
            print(f"N = {n:>7,} x 5 labels, 1,000 replicates, --by Sex, calibration + AP: "
                  f"{wall(args, repeat):6.2f} s (median of {repeat})", flush=True)
            if n == 500:
                print(f"N = {n:>7,} x 5 labels, 1,000 replicates, 3 readers + 2 operating points, calibration + AP: "
                      f"{wall(readers_args(d), repeat):6.2f} s (median of {repeat})", flush=True)
        code = ("import sys; from typer.testing import CliRunner; from chexcut.cli import app; "
                f"CliRunner().invoke(app, {make(Path(tmp) / '500', 500)!r}); print('torch' in sys.modules)")
        print("torch imported on the --predictions path:",
              subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
