"""Bootstrap speed, measured in one run (targets: >= 100x the sklearn loop at N = 234; N = 200,000 < 60 s).

    python benchmarks/evaluate_speed.py [--big 200000] [--replicates 1000]

1. N = 234 (the CheXpert validation size), 14 labels, 1,000 patient-cluster replicates:
   chexcut's vectorised bootstrap vs the common per-replicate sklearn ``roc_auc_score`` loop
   (timed on 100 replicates and scaled, since the loop is the slow side).
2. N = 200,000 images in ~65,000 patients, 14 labels, 1,000 replicates, with peak memory.
"""

import argparse
import resource
import time

import numpy as np


def data(rng, n, n_labels=14, patients=None):
    y = (rng.random((n, n_labels)) < 0.3).astype(float)
    s = np.clip(y * 0.3 + rng.random((n, n_labels)), 0, None).round(3)  # some ties, like real probabilities
    clusters = rng.integers(0, patients or n, n)
    return y, s, np.unique(clusters, return_inverse=True)[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--replicates", type=int, default=1000)
    a = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    import torch  # noqa: F401  (imported up front: the comparison is about computation)

    from chexcut.metrics import bootstrap_aurocs

    rng = np.random.default_rng(0)
    y, s, cl = data(rng, 234, patients=200)
    m = np.ones_like(y)
    t = time.perf_counter()
    bootstrap_aurocs(y, [s], m, cl, a.replicates, seed=0)
    ours = time.perf_counter() - t
    loop_reps = 100
    t = time.perf_counter()
    k = cl.max() + 1
    for _ in range(loop_reps):
        pick = rng.integers(0, k, k)
        rows = np.concatenate([np.flatnonzero(cl == c) for c in pick])
        for j in range(y.shape[1]):
            if 0 < y[rows, j].sum() < len(rows):
                roc_auc_score(y[rows, j], s[rows, j])
    sk = (time.perf_counter() - t) * a.replicates / loop_reps
    print(f"N=234, 14 labels, {a.replicates} replicates: chexcut {ours:.3f} s, sklearn loop {sk:.1f} s "
          f"(scaled from {loop_reps}) -> {sk / ours:.0f}x (target >= 100x)")

    y, s, cl = data(rng, a.big, patients=int(a.big / 3.1))
    m = np.ones_like(y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    bootstrap_aurocs(y, [s.astype(np.float32)], m, cl, a.replicates, seed=0)
    big = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"N={a.big:,}, 14 labels, {a.replicates} replicates: {big:.1f} s (target < 60 s); "
          f"peak RSS {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB during the bootstrap)")


if __name__ == "__main__":
    main()
