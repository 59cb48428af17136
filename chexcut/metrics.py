"""AUROC, cluster bootstrap, paired comparison and DeLong's test: pure functions on arrays.

Conventions: ``y`` is 0/1, ``s`` are scores (any monotone scale), ``mask`` is 1 where a value
counts. AUROC is the Mann-Whitney statistic with ties counted as one half (sklearn's
``roc_auc_score``). A label with a single class among the counted rows is *not evaluable*
(``nan`` here, ``null`` in JSON), never 0.5.

Bootstrap replicates are expressed as integer *weights* per row (how many times the row was
drawn); resampling clusters (patients) gives every row of a cluster its cluster's count, so a
patient's images always move together. A weighted AUROC is then computed for a chunk of
replicates at once with one sort per label, so 1,000 replicates cost about as much as a few
dozen sklearn calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# ----------------------------------------------------------------------------- AUROC

def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of scores ``s`` for binary ``y`` (midranks for ties); ``nan`` if one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks = midranks
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ----------------------------------------------------------------------------- bootstrap weights

def cluster_ids(groups) -> np.ndarray:
    """Dense integer ids 0..K-1 for arbitrary group labels (one per row)."""
    _, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return inv.astype(np.int64)


def bootstrap_counts(n_clusters: int, n_replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(B, K) float32: how many times each of K clusters is drawn (K draws with replacement)."""
    k = int(n_clusters)
    return rng.multinomial(k, np.full(k, 1.0 / k), size=n_replicates).astype(np.float32)


class _LabelIndex:
    """One label's counted rows sorted by score, with tie groups: reusable across replicates.

    A replicate's row weights are its cluster counts, so ``weighted`` gathers from the small
    (R, K) count matrix directly (the clusters of the sorted rows). The arithmetic runs in
    torch on the CPU: its prefix sum is several times faster than numpy's and multi-threaded.
    Weights and partial sums are float32: counts are small integers and totals stay below
    2^24, so sums are exact; the final products carry ~1e-7 relative rounding, far below any
    bootstrap interval's width (point estimates come from :func:`auroc`, in float64).
    """

    def __init__(self, y: np.ndarray, s: np.ndarray, rows: np.ndarray, clusters: np.ndarray):
        import torch

        order = np.argsort(s[rows], kind="mergesort")
        sorted_rows = rows[order]
        sorted_s = s[sorted_rows]
        self.n = len(sorted_rows)
        self.cl = torch.from_numpy(clusters[sorted_rows].astype(np.int64))
        self.pos = torch.from_numpy(y[sorted_rows].astype(np.float32))
        starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]]) if self.n else np.zeros(0, int)
        self.groups = None
        if len(starts) < self.n:  # ties: sum weights within each group of equal scores
            gid = np.zeros(self.n, dtype=np.int64)
            gid[starts[1:]] = 1
            self.groups = (torch.from_numpy(np.cumsum(gid)), len(starts))

    def weighted(self, counts) -> np.ndarray:
        """AUROC for each replicate's cluster counts (R, K) tensor; ``nan`` where a class has zero weight."""
        import torch

        if self.n == 0:
            return np.full(counts.shape[0], np.nan)
        ws = counts.index_select(1, self.cl)
        wp = ws * self.pos
        wn = ws.sub_(wp)
        if self.groups is not None:
            gid, g = self.groups
            wp = torch.zeros(ws.shape[0], g).index_add_(1, gid, wp)
            wn = torch.zeros(ws.shape[0], g).index_add_(1, gid, wn)
        cum_n = torch.cumsum(wn, 1).sub_(wn, alpha=0.5)
        num = (wp * cum_n).sum(1, dtype=torch.float64).numpy()
        tp = wp.sum(1, dtype=torch.float64).numpy()
        tn = wn.sum(1, dtype=torch.float64).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / (tp * tn)
        out[(tp == 0) | (tn == 0)] = np.nan
        return out


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    valid_replicates: int


def percentile_interval(estimate: float, reps: np.ndarray, ci: float) -> Interval:
    ok = reps[np.isfinite(reps)]
    if not np.isfinite(estimate) or len(ok) == 0:
        return Interval(estimate, float("nan"), float("nan"), int(len(ok)))
    a = (1 - ci) / 2
    lo, hi = np.quantile(ok, [a, 1 - a])
    return Interval(estimate, float(lo), float(hi), int(len(ok)))


def bootstrap_p(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: delta = 0, from the replicate deltas."""
    ok = reps[np.isfinite(reps)]
    if len(ok) == 0:
        return float("nan")
    below = (np.sum(ok <= 0) + 1) / (len(ok) + 1)
    above = (np.sum(ok >= 0) + 1) / (len(ok) + 1)
    return float(min(1.0, 2 * min(below, above)))


def bootstrap_aurocs(y: np.ndarray, scores: list[np.ndarray], mask: np.ndarray, clusters: np.ndarray,
                     n_replicates: int, seed: int = 0, chunk: int | None = None) -> list[np.ndarray]:
    """Replicate AUROCs, (B, L) per score matrix, all on the same resamples (paired).

    ``y``, ``mask``: (N, L); ``scores``: list of (N, L); ``clusters``: (N,) dense ids 0..K-1.
    Replicates are drawn ``chunk`` at a time, so memory stays bounded (a few (chunk, N) float32
    arrays, ~32 MiB each by default). The resamples depend only on ``seed``, ``n_replicates``,
    ``chunk`` and the number of clusters.
    """
    import torch

    n, n_labels = y.shape
    if chunk is None:
        chunk = max(32, min(n_replicates, 2**23 // max(n, 1)))
    k = int(clusters.max()) + 1 if n else 1
    rng = np.random.default_rng(seed)
    jobs = [(m, j, _LabelIndex(y[:, j], s[:, j], np.flatnonzero(mask[:, j]), clusters))
            for m, s in enumerate(scores) for j in range(n_labels)]
    out = [np.empty((n_replicates, n_labels)) for _ in scores]
    for start in range(0, n_replicates, chunk):
        r = min(chunk, n_replicates - start)
        counts = torch.from_numpy(bootstrap_counts(k, r, rng))
        for m, j, li in jobs:
            out[m][start:start + r, j] = li.weighted(counts)
    return out


# ----------------------------------------------------------------------------- DeLong

def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance matrix for several score vectors on the same rows.

    The fast O(n log n) algorithm of Sun & Xu (2014): structural components from midranks.
    """
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        k = len(scores)
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10, v01, aucs = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        x, z = s[y], s[~y]
        tx, tz, t = _midrank(x), _midrank(z), _midrank(np.r_[x, z])
        auc = t[:m].sum() / (m * n) - (m + 1) / (2 * n)
        aucs.append(auc)
        v10.append((t[:m] - tx) / n)
        v01.append(1 - (t[m:] - tz) / m)
    v10, v01 = np.array(v10), np.array(v01)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return np.array(aucs), cov


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """Paired DeLong test of AUROC(a) - AUROC(b): (delta, ci_low, ci_high, p) at 95%."""
    aucs, cov = delong(y, [a, b])
    delta = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not np.isfinite(var):
        return float("nan"), float("nan"), float("nan"), float("nan")
    if var <= 1e-300:
        return delta, delta, delta, (1.0 if delta == 0 else 0.0)
    se = math.sqrt(var)
    z = delta / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return delta, delta - 1.959963984540054 * se, delta + 1.959963984540054 * se, float(p)
