"""How honest are percentile-bootstrap intervals with few positives? Coverage measured by simulation.

    python benchmarks/small_sample_coverage.py [--datasets 300] [--replicates 500]

Binormal data (negatives N(0,1), positives N(d,1), true AUROC = Phi(d / sqrt 2) = 0.80), 200 negatives and
1-50 positives, rows independent. For each size: the share of datasets whose 95% interval (as `chexcut
evaluate` reports it) contains the true AUROC, among those that got an interval, and the share left
without one (too few usable replicates). This is what the README's small-sample paragraph quotes.
"""

import argparse
import math
from statistics import NormalDist

import numpy as np

from chexcut.evaluation.evaluate import MIN_CLASS, EvalRows, evaluate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=300)
    ap.add_argument("--replicates", type=int, default=500)
    a = ap.parse_args()
    d = math.sqrt(2) * NormalDist().inv_cdf(0.80)
    true_auc = NormalDist().cdf(d / math.sqrt(2))
    rng = np.random.default_rng(0)
    print(f"true AUROC {true_auc:.3f}; 200 negatives; {a.datasets} datasets x {a.replicates} replicates each; "
          f"warning below {MIN_CLASS} positives")
    print("positives | coverage of the 95% interval | intervals withheld")
    for n_pos in (1, 2, 3, 5, 8, 10, 20, 50):
        n = n_pos + 200
        covered = shown = 0
        for k in range(a.datasets):
            y = np.r_[np.ones(n_pos), np.zeros(200)]
            s = rng.normal(0, 1, n) + d * y
            es = EvalRows([str(i) for i in range(n)], ("Edema",), y[:, None], np.ones((n, 1)), np.arange(n),
                         np.arange(n))
            row = evaluate(es, s[:, None], bootstrap=a.replicates, cluster="none", seed=k)["labels"][0]
            if row["ci_low"] is not None:
                shown += 1
                covered += row["ci_low"] <= true_auc <= row["ci_high"]
        cov = f"{covered / shown:.2f}" if shown else "-"
        print(f"{n_pos:9d} | {cov:>28} | {1 - shown / a.datasets:.2f}")


if __name__ == "__main__":
    main()
