"""`chexcut evaluate --predictions` speed as a user meets it: from the shell, import included.

    python benchmarks/evaluate_speed.py [--big 200000] [--replicates 1000] [--repeats 5]

1. N = 234 images (CheXpert's validation size, ~200 patients), 14 labels, as CSV files:
   `chexcut evaluate --predictions P --truth L --bootstrap 1000 --json -` vs the same with `--bootstrap 0`,
   each a fresh process (median of --repeats). Cost of the bootstrap = the difference. Beside it, in the
   same run, the common per-replicate sklearn `roc_auc_score` loop (timed on 100 replicates, scaled).
   Target: cost <= 1/100 of the sklearn loop.
2. The same N = 234 command while two CPU-bound processes load both cores (no thread collapse).
3. N = 200,000 images (~65,000 patients), 14 labels, 1,000 replicates, one process, with its peak RSS.
   Target: < 60 s.
"""

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
          "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
          "Fracture", "Support Devices")


def write_case(folder: Path, n: int, patients: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, patients, n)
    paths = [f"CheXpert-v1.0-small/valid/patient{p:06d}/study1/view{i}_frontal.jpg" for i, p in enumerate(pid)]
    y = (rng.random((n, len(LABELS))) < 0.3).astype(int)
    s = np.clip(y * 0.3 + rng.random((n, len(LABELS))), 0, 1).round(4)  # ties, like real probabilities
    pd.DataFrame({"Path": paths, **{c: s[:, j] for j, c in enumerate(LABELS)}}).to_csv(folder / "pred.csv", index=False)
    pd.DataFrame({"Path": paths, "Frontal/Lateral": "Frontal", **{c: y[:, j] for j, c in enumerate(LABELS)}}
                 ).to_csv(folder / "valid.csv", index=False)
    return folder / "pred.csv", folder / "valid.csv"


def run_cli(pred: Path, truth: Path, replicates: int) -> float:
    cmd = [sys.executable, "-m", "chexcut", "evaluate", "--predictions", str(pred), "--truth", str(truth),
           "--bootstrap", str(replicates), "--json", "-"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def median_time(pred, truth, replicates, repeats) -> float:
    return statistics.median(run_cli(pred, truth, replicates) for _ in range(repeats))


def sklearn_loop(pred: Path, truth: Path, replicates: int, loop_reps: int = 100) -> float:
    from sklearn.metrics import roc_auc_score

    s = pd.read_csv(pred)[list(LABELS)].to_numpy()
    lab = pd.read_csv(truth)
    y = lab[list(LABELS)].to_numpy()
    cl = pd.factorize(lab["Path"].str.extract(r"(patient\d+)")[0])[0]
    rng = np.random.default_rng(0)
    k = cl.max() + 1
    t = time.perf_counter()
    for _ in range(loop_reps):
        pick = rng.integers(0, k, k)
        rows = np.concatenate([np.flatnonzero(cl == c) for c in pick])
        for j in range(y.shape[1]):
            if 0 < y[rows, j].sum() < len(rows):
                roc_auc_score(y[rows, j], s[rows, j])
    return (time.perf_counter() - t) * replicates / loop_reps


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "small").mkdir()
        pred, truth = write_case(tmp / "small", 234, 200)
        run_cli(pred, truth, 0)  # warm the file cache
        t0 = median_time(pred, truth, 0, a.repeats)
        t1 = median_time(pred, truth, a.replicates, a.repeats)
        sk = sklearn_loop(pred, truth, a.replicates)
        cost = max(t1 - t0, 1e-3)
        print(f"N=234, 14 labels, from the shell (median of {a.repeats}): --bootstrap 0 {t0:.2f} s, "
              f"--bootstrap {a.replicates} {t1:.2f} s -> bootstrap cost {t1 - t0:.3f} s; sklearn loop {sk:.1f} s "
              f"(scaled from 100 replicates) -> cost is 1/{sk / cost:.0f} of it (target <= 1/100)")
        stop = time.time() + 60
        burners = [mp.Process(target=_burn, args=(stop,)) for _ in range(os.cpu_count() or 2)]
        for b in burners:
            b.start()
        try:
            l0 = median_time(pred, truth, 0, 3)
            l1 = median_time(pred, truth, a.replicates, 3)
        finally:
            for b in burners:
                b.terminate()
        print(f"  under load ({len(burners)} busy processes): --bootstrap 0 {l0:.2f} s, --bootstrap "
              f"{a.replicates} {l1:.2f} s -> cost {l1 - l0:.3f} s")
        (tmp / "big").mkdir()
        pred, truth = write_case(tmp / "big", a.big, int(a.big / 3.1))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        big = run_cli(pred, truth, a.replicates)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"N={a.big:,}, 14 labels, {a.replicates} replicates, from the shell: {big:.1f} s (target < 60 s); "
              f"peak RSS of the process {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
