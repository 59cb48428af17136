"""AUROC, cluster bootstrap, paired comparison and DeLong's test: pure functions on numpy arrays (no torch).

Conventions: ``y`` is 0/1, ``s`` are scores (any monotone scale), ``mask`` is 1 where a value
counts. AUROC is the Mann-Whitney statistic with ties counted as one half (sklearn's
``roc_auc_score``). A label with a single class among the counted rows is *not evaluable*
(``nan`` here, ``null`` in JSON), never 0.5.

Bootstrap replicates are expressed as integer *weights* per row (how many times the row was
drawn); resampling clusters (patients) gives every row of a cluster its cluster's count, so a
patient's images always move together. A weighted AUROC is then computed for a chunk of
replicates at once with one sort per label (done once, not per replicate), so 1,000 replicates
cost about as much as a few dozen sklearn calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- AUROC

def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank: ``scipy.stats.rankdata(method="average")``."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(x), method="average").astype(np.float64)


def descending_ties(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one curve primitive: (order, ends) with ``order`` the rows by descending score (stable) and ``ends`` the
    last sorted position of each run of equal scores, i.e. the distinct thresholds, descending. Cumulative
    weighted positives and negatives taken at ``ends`` are scikit-learn's ``_binary_clf_curve`` (tps, fps);
    operating points, the ROC plots, average precision and the reliability figures all start from it."""
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True]) if len(ss) else np.zeros(0, dtype=np.int64)
    return order, ends


def check_scores(s, shape: tuple, name: str = "scores") -> np.ndarray:
    """``s`` as float64 of ``shape``, every value finite; ValueError naming what is wrong (as scikit-learn
    validates at its boundary: a silent NaN or a misaligned array would give a wrong AUROC, not an error)."""
    s = np.asarray(s, dtype=np.float64)
    if s.shape != tuple(shape):
        raise ValueError(f"{name} has shape {s.shape}, the labels {tuple(shape)}")
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite values (first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])})")
    return s


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of scores ``s`` for binary ``y`` (1-D, same length; midranks for ties); ``nan`` if one class only.

    Raises ValueError for mismatched lengths, labels other than 0/1, or non-finite scores."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, not of shape {y.shape}")
    s = check_scores(s, y.shape, "s")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold binary labels (0/1 or booleans)")
    y = y.astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = midranks(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ----------------------------------------------------------------------------- bootstrap weights

def cluster_ids(groups) -> np.ndarray:
    """Dense integer ids 0..K-1 for arbitrary group labels (one per row)."""
    _, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return inv.astype(np.int64)


def bootstrap_counts(n_clusters: int, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(B, K) float32: how many times each of K clusters is drawn (K draws with replacement)."""
    k = int(n_clusters)
    return rng.multinomial(k, np.full(k, 1.0 / k), size=bootstrap).astype(np.float32)


class _LabelIndex:
    """One label's counted rows, prepared once for any number of replicates.

    A replicate's row weights are its cluster counts, so :meth:`weighted` gathers from the small
    (R, K) count matrix directly. With negatives sorted by score, a positive's credit is the
    weight of the negatives below it plus half the tied ones: ``0.5 * (CN[lo] + CN[hi])`` with
    ``CN`` the running sum of negative weights and ``lo``/``hi`` the positive's place among the
    negatives (no per-replicate sort). Weights and running sums are float32: counts are small
    integers and totals stay below 2^24, so they are exact; the numerator is summed in float64.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray, rows: np.ndarray, clusters: np.ndarray):
        y = y[rows].astype(bool)
        neg_rows, pos_rows = rows[~y], rows[y]
        order = np.argsort(s[neg_rows], kind="mergesort")
        neg_sorted = s[neg_rows][order]
        self.cl_neg = clusters[neg_rows][order]
        self.cl_pos = clusters[pos_rows]
        self.lo = np.searchsorted(neg_sorted, s[pos_rows], side="left")
        self.hi = np.searchsorted(neg_sorted, s[pos_rows], side="right")
        self.n = len(rows)

    def weighted(self, counts: np.ndarray) -> np.ndarray:
        """AUROC for each replicate's cluster counts (R, K); ``nan`` where a class has zero weight."""
        r = counts.shape[0]
        if self.n == 0 or len(self.cl_pos) == 0 or len(self.cl_neg) == 0:
            return np.full(r, np.nan)
        cn = np.zeros((r, len(self.cl_neg) + 1), dtype=np.float32)
        np.cumsum(counts[:, self.cl_neg], axis=1, out=cn[:, 1:])
        wp = counts[:, self.cl_pos]
        credit = cn[:, self.lo]
        credit += cn[:, self.hi]
        num = np.einsum("ij,ij->i", wp, credit, dtype=np.float64) * 0.5
        tp = wp.sum(1, dtype=np.float64)
        tn = cn[:, -1].astype(np.float64)
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


#: The one usable-replicate rule of every bootstrap estimate (AUROC, AP, operating points, paired deltas,
#: subgroup gaps, calibration): an interval and a p-value come from the finite replicates, and are withheld (nan,
#: null in the JSON) when fewer than this share of all replicates is finite (e.g. a resample drew one class).
MIN_USABLE_SHARE = 0.9


def usable(reps: np.ndarray) -> np.ndarray | None:
    """The finite replicates, or None when they are fewer than :data:`MIN_USABLE_SHARE` of all."""
    reps = np.asarray(reps, dtype=float)
    ok = reps[np.isfinite(reps)]
    return ok if len(ok) and len(ok) >= MIN_USABLE_SHARE * len(reps) else None


def percentile_interval(estimate: float, reps: np.ndarray, ci: float) -> Interval:
    """The point estimate and its percentile interval from the replicates, under the one rule (:func:`usable`):
    ``valid_replicates`` counts the finite ones; low/high are nan when the interval is withheld."""
    reps = np.asarray(reps, dtype=float)
    n_ok = int(np.isfinite(reps).sum())
    ok = usable(reps)
    if not np.isfinite(estimate) or ok is None:
        return Interval(estimate, float("nan"), float("nan"), n_ok)
    a = (1 - ci) / 2
    lo, hi = np.quantile(ok, [a, 1 - a])
    return Interval(estimate, float(lo), float(hi), n_ok)


def bootstrap_p(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: delta = 0, from the replicate deltas (nan when withheld)."""
    ok = usable(reps)
    if ok is None:
        return float("nan")
    below = (np.sum(ok <= 0) + 1) / (len(ok) + 1)
    above = (np.sum(ok >= 0) + 1) / (len(ok) + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(pvalues) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None and is not counted): the k-th
    smallest of m becomes max over j <= k of min(1, (m - j + 1) p_(j)). Controls the family-wise error rate."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def bootstrap_margin_p(reps: np.ndarray, margin: float) -> tuple[float, float]:
    """Bootstrap p-values at a margin from replicate deltas: non-inferiority (H0: delta <= -margin)
    and TOST equivalence (the larger of that and H0: delta >= +margin)."""
    ok = usable(reps)
    if ok is None:
        return float("nan"), float("nan")
    p_ni = (np.sum(ok <= -margin) + 1) / (len(ok) + 1)
    p_upper = (np.sum(ok >= margin) + 1) / (len(ok) + 1)
    return float(p_ni), float(max(p_ni, p_upper))


def bootstrap_aurocs(y: np.ndarray, scores: list[np.ndarray], mask: np.ndarray, clusters: np.ndarray,
                     bootstrap: int, seed: int = 0, chunk: int | None = None, counts=None) -> list[np.ndarray]:
    """Replicate AUROCs, (B, L) per score matrix, all on the same resamples (paired).

    ``y``, ``mask``: (N, L); ``scores``: list of (N, L); ``clusters``: (N,) dense ids 0..K-1.
    Replicates are drawn ``chunk`` at a time, so memory stays bounded (a few (chunk, N) float32
    arrays, ~32 MiB each by default). The resamples depend only on ``seed``, ``bootstrap``,
    ``chunk`` and the number of clusters.
    """
    n, n_labels = y.shape
    jobs = [(m, j, _LabelIndex(y[:, j], s[:, j], np.flatnonzero(mask[:, j]), clusters))
            for m, s in enumerate(scores) for j in range(n_labels)]
    out = [np.empty((bootstrap, n_labels)) for _ in scores]
    start = 0
    for c in counts if counts is not None else replicate_counts(n, clusters, bootstrap, seed, chunk):
        r = len(c)
        for m, j, li in jobs:
            out[m][start:start + r, j] = li.weighted(c)
        start += r
    return out


MAX_KEPT_COUNTS = 2**29  # bytes of draw counts kept for reuse by every figure (512 MiB); beyond, drawn again


def kept_counts(n: int, clusters: np.ndarray, bootstrap: int, seed: int = 0, chunk: int | None = None):
    """The chunks of :func:`replicate_counts` as a list, drawn once for the AUROC, AP, calibration and every
    subgroup (the draws cost as much as the figures at 200,000 rows); None when they would not fit."""
    k = int(clusters.max()) + 1 if n else 1
    if bootstrap * k * 4 > MAX_KEPT_COUNTS:
        return None
    return list(replicate_counts(n, clusters, bootstrap, seed, chunk))


def replicate_counts(n: int, clusters: np.ndarray, bootstrap: int, seed: int = 0, chunk: int | None = None):
    """The cluster draw counts of :func:`bootstrap_aurocs`'s replicates, a (R, K) chunk at a time: every figure
    computed from them (average precision, calibration, subgroup AUROCs) sits on the same resamples."""
    if chunk is None:
        chunk = max(32, min(bootstrap, 2**23 // max(n, 1)))
    k = int(clusters.max()) + 1 if n else 1
    rng = np.random.default_rng(seed)
    for start in range(0, bootstrap, chunk):
        yield bootstrap_counts(k, min(chunk, bootstrap - start), rng)


# ----------------------------------------------------------------------------- DeLong



def delong_components(y: np.ndarray, s: np.ndarray, clusters: np.ndarray | None = None,
                      n_clusters: int | None = None) -> tuple[float, np.ndarray | None]:
    """AUROC and its *components* ``phi``: ``var(auc) = phi @ phi``, ``cov(a, b) = phi_a @ phi_b``.

    Without ``clusters``: classic DeLong (DeLong et al. 1988, Sun & Xu's fast midrank algorithm),
    one component per row: ``(V10_i - auc) / sqrt(m (m - 1))`` for positives and
    ``(V01_j - auc) / sqrt(n (n - 1))`` for negatives, so ``phi @ phi`` is exactly DeLong's
    ``S10 / m + S01 / n`` (pROC's figures). With ``clusters`` (dense ids < ``n_clusters``): the
    clustered-data extension of Obuchowski (1997): the structural components are summed per cluster,
    ``phi_k = sqrt(K / (K - 1)) * (sum_k (V10 - auc) / m + sum_k (V01 - auc) / n)``, K the clusters
    present, so images of one patient count as one correlated unit. Components of several score
    vectors (or labels) over the same rows or clusters give their covariance by dot products.
    ``(nan, None)`` when a class has fewer than 2 cases (or fewer than 2 clusters).
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan"), None
    x, z = s[y], s[~y]
    tx, tz, t = midranks(x), midranks(z), midranks(np.r_[x, z])
    auc = float(t[:m].sum() / (m * n) - (m + 1) / (2 * n))
    v10 = (t[:m] - tx) / n  # share of negatives below each positive (ties count half)
    v01 = 1 - (t[m:] - tz) / m  # share of positives above each negative
    if clusters is None:
        phi = np.empty(len(y))
        phi[y] = (v10 - auc) / math.sqrt(m * (m - 1))
        phi[~y] = (v01 - auc) / math.sqrt(n * (n - 1))
        return auc, phi
    clusters = np.asarray(clusters)
    k_total = int(n_clusters if n_clusters is not None else clusters.max() + 1)
    k = len(np.unique(clusters))
    if k < 2:
        return auc, None
    phi = (np.bincount(clusters[y], weights=v10 - auc, minlength=k_total) / m
           + np.bincount(clusters[~y], weights=v01 - auc, minlength=k_total) / n)
    return auc, phi * math.sqrt(k / (k - 1))


def delong(y: np.ndarray, scores: list[np.ndarray], clusters: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance matrix for several score vectors on the same rows
    (clustered when ``clusters`` is given; see :func:`delong_components`)."""
    parts = [delong_components(y, s, clusters) for s in scores]
    k = len(scores)
    if any(phi is None for _, phi in parts):
        return np.full(k, np.nan), np.full((k, k), np.nan)
    phi = np.stack([p for _, p in parts])
    return np.array([a for a, _ in parts]), phi @ phi.T


@dataclass
class NormalTest:
    """A z-test of ``delta`` with standard error ``se``: CI, two-sided p and, given a margin, one-sided
    non-inferiority (H0: delta <= -margin) and TOST equivalence p-values. ``reason`` when undefined."""

    delta: float
    se: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    p_noninferiority: float | None = None
    p_equivalence: float | None = None
    reason: str | None = None


def normal_test(delta: float, var: float, ci: float = 0.95, margin: float | None = None) -> NormalTest:
    """Wald inference for a difference of AUROCs with DeLong variance ``var``.

    Zero (or non-finite) variance is *undefined*, never p = 0: every figure is None, with the reason."""
    from statistics import NormalDist

    if not np.isfinite(delta) or not np.isfinite(var):
        return NormalTest(float(delta), None, reason="not evaluable (a class has fewer than 2 cases or clusters)")
    if var <= 1e-18:
        return NormalTest(float(delta), 0.0, reason="zero DeLong variance (the two scores rank every pair alike): "
                                                    "no test is defined")
    nd = NormalDist()
    se = math.sqrt(var)
    zq = nd.inv_cdf(0.5 + ci / 2)
    out = NormalTest(float(delta), se, delta - zq * se, delta + zq * se, math.erfc(abs(delta / se) / math.sqrt(2)))
    if margin is not None:
        p_ni = 1 - nd.cdf((delta + margin) / se)  # H0: delta <= -margin
        p_upper = nd.cdf((delta - margin) / se)  # H0: delta >= +margin
        out.p_noninferiority, out.p_equivalence = float(p_ni), float(max(p_ni, p_upper))
    return out


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None,
                ci: float = 0.95, margin: float | None = None) -> NormalTest:
    """Paired DeLong test of AUROC(a) - AUROC(b) (clustered when ``clusters`` is given)."""
    aucs, cov = delong(y, [a, b], clusters)
    return normal_test(float(aucs[0] - aucs[1]), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), ci, margin)


def finite_or_none(x) -> float | None:
    """``x`` as a float, or None when it is None, NaN or infinite: how every figure a JSON holds is written."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
