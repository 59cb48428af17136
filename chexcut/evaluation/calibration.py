"""Beyond AUROC: average precision, and calibration (Brier, ECE, logistic recalibration), with cluster
bootstrap CIs on the same resamples as the AUROC's.

Pure numpy, no torch. A bootstrap replicate is a vector of row weights (its clusters' draw counts, see
:mod:`chexcut.evaluation.metrics`), so every figure here has a *weighted* form that gives the plain one at
weight 1 and is computed for a chunk of replicates at once:

- **average precision** = scikit-learn's ``average_precision_score``: sum over distinct thresholds (scores
  tied are one threshold) of the recall step times the precision there; its chance level is the prevalence.
- **Brier score**: the mean squared difference between probability and outcome.
- **ECE** (expected calibration error) over 10 equal-width bins [0, 0.1), ..., [0.9, 1.0] (a score on an
  inner edge goes to the upper bin) and over 10 equal-mass bins (edges at the deciles of the scores, exactly
  scikit-learn's ``calibration_curve(strategy="quantile")``, where a score on an edge goes to the lower bin;
  the edges are those of the whole set, kept for every replicate): sum over bins of (n_bin / n) x |mean(y_bin) - mean(p_bin)|.
- **calibration intercept and slope**: the logistic recalibration logit P(y) = a + b logit(p) (Cox 1958),
  fitted by maximum likelihood (p clipped to [1e-7, 1 - 1e-7]); a perfectly calibrated model has a = 0,
  b = 1; b < 1 means overconfident predictions. Replicates take 4 Newton steps from the whole set's fit (the
  one-step bootstrap of Davison, Hinkley and Schechtman 1986, iterated); above 50,000 rows one step in float32
  (the replicates then sit so close to the whole set's fit that one step is within 1e-3 of the refit). When positives and negatives are separated (AUROC 0 or 1) no finite slope
  exists: both are null, with the reason.
"""

from __future__ import annotations

import numpy as np

from chexcut.evaluation import figures
from chexcut.evaluation.metrics import descending_ties

N_BINS = 10
WIDTH_EDGES = np.arange(1, N_BINS) / N_BINS  # 0.1 ... 0.9, the floats nearest k/10
CLIP = 1e-7
REPLICATE_NEWTON_STEPS = 4
LARGE = 50_000  # more counted rows than this: replicates take one Newton step, in float32


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    x = x if x.dtype == np.float32 else x.astype(np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|; float32 stays float32


def width_bins(p: np.ndarray) -> np.ndarray:
    return np.searchsorted(WIDTH_EDGES, p, side="right")


def mass_bins(p: np.ndarray) -> np.ndarray:
    edges = np.percentile(p, np.linspace(0.0, 1.0, N_BINS + 1) * 100)
    return np.searchsorted(edges[1:-1], p, side="left")  # as scikit-learn: a score on an edge goes below it


def reliability(y: np.ndarray, p: np.ndarray, bins: np.ndarray) -> list[dict]:
    """Per non-empty bin: its count, the mean score and the observed rate (the reliability diagram)."""
    out = []
    for b in range(N_BINS):
        sel = bins == b
        if sel.any():
            out.append({"bin": b, "n": int(sel.sum()), "mean_p": float(p[sel].mean()), "rate": float(y[sel].mean())})
    return out


class LabelCalibration:
    """One label's counted rows (outcomes ``y``, probabilities ``p``, cluster ids ``clusters``), prepared once
    for many replicates. A replicate is given by its cluster draw counts (R, K); with one cluster per row
    (``clusters = arange(n)``) those are row weights. Brier and ECE reduce to per-cluster sums (a (R, K) matrix
    product); average precision needs the rows in score order; recalibration a Newton step over the rows."""

    def __init__(self, y: np.ndarray, p: np.ndarray, clusters: np.ndarray, calibration: bool = True,
                 n_clusters: int | None = None):
        self.y = np.asarray(y, dtype=np.float64)
        self.p = np.asarray(p, dtype=np.float64)
        self.clusters = np.asarray(clusters, dtype=np.int64)
        self.k = n_clusters or (int(self.clusters.max()) + 1 if len(self.clusters) else 1)
        self.calibration = calibration
        self._recalibrated = None  # (counts, (intercept, slope)): the last replicates' recalibration
        order, ends = descending_ties(self.p)  # the one curve primitive
        s, ys = self.p[order], self.y[order]
        self.cl_sorted = self.clusters[order]
        pos = np.flatnonzero(ys == 1)
        self.cl_pos = self.cl_sorted[pos]
        # the end of each row's tie group (a threshold), and the thresholds that add positives
        end_of = ends[np.searchsorted(ends, np.arange(len(s)), side="left")] if len(s) else ends
        self.pos_ends = np.unique(end_of[pos])
        self.pos_upto = np.searchsorted(pos, self.pos_ends, side="right")  # positives at or above each threshold
        self.n_k = np.bincount(self.clusters, minlength=self.k).astype(np.float64)
        if calibration:
            self.brier_k = np.bincount(self.clusters, (self.p - self.y) ** 2, minlength=self.k)
            self.bins_width = self._per_cluster_bins(width_bins(self.p))
            self.bins_mass = self._per_cluster_bins(mass_bins(self.p))
            self.x = np.log(np.clip(self.p, CLIP, 1 - CLIP) / (1 - np.clip(self.p, CLIP, 1 - CLIP)))
            n_pos = self.y.sum()
            self.separated = n_pos in (0, len(self.y)) or bool(
                self.p[self.y == 1].min() > self.p[self.y == 0].max()
                or self.p[self.y == 1].max() < self.p[self.y == 0].min())
            self.fit = None if self.separated else _fit(self.x, self.y)
            self.x32, self.y32 = self.x.astype(np.float32), self.y.astype(np.float32)

    def _per_cluster_bins(self, bins: np.ndarray) -> np.ndarray:
        """(K, 2 * N_BINS): per cluster and bin, the sum of outcomes minus the sum of probabilities, and the count."""
        diff, count = np.zeros((self.k, N_BINS)), np.zeros((self.k, N_BINS))
        np.add.at(diff, (self.clusters, bins), self.y - self.p)
        np.add.at(count, (self.clusters, bins), 1.0)
        return np.hstack([diff, count])

    # ------------------------------------------------------------------ figures per replicate, (R,) each
    def average_precision(self, counts: np.ndarray) -> np.ndarray:
        r = len(counts)
        if not len(self.cl_pos):
            return np.full(r, np.nan)
        seen = np.cumsum(counts[:, self.cl_sorted], axis=1)[:, self.pos_ends]  # weight at or above each threshold
        tpc = np.cumsum(counts[:, self.cl_pos], axis=1)
        tp = tpc[:, self.pos_upto - 1]
        step = np.diff(tp, axis=1, prepend=0.0)
        total = tpc[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tp / seen, 0.0)
            out = np.einsum("ij,ij->i", step, precision, dtype=np.float64) / total
        out[total <= 0] = np.nan
        return out

    def brier(self, counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (counts @ self.brier_k) / (counts @ self.n_k)

    def ece(self, counts: np.ndarray, per_cluster: np.ndarray) -> np.ndarray:
        sums = counts @ per_cluster
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(sums[:, :N_BINS]).sum(1) / sums[:, N_BINS:].sum(1)

    def recalibration(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(intercept, slope) per replicate; the last ``counts``' fit is kept, so the two figures share one."""
        if self._recalibrated is not None and self._recalibrated[0] is counts:
            return self._recalibrated[1]
        if self.fit is None:
            nan = np.full(len(counts), np.nan)
            return nan, nan
        big = len(self.y) > LARGE
        theta, _ = _newton(self.x32 if big else self.x, self.y32 if big else self.y, counts[:, self.clusters],
                           self.fit, 1 if big else REPLICATE_NEWTON_STEPS)
        self._recalibrated = (counts, (theta[:, 0], theta[:, 1]))
        return self._recalibrated[1]

    def weights(self, counts: np.ndarray) -> np.ndarray:
        """(R, n) row weights of the replicates whose cluster draw counts are ``counts`` (R, K)."""
        return np.asarray(counts, dtype=np.float64)[:, self.clusters]

    def figures(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every computed figure (:mod:`chexcut.evaluation.figures`) for the replicates whose cluster draw counts
        are ``counts`` (R, K)."""
        return {f.key: f.compute(self, counts) for f in figures.computed(self.calibration)}


def _loglik(theta, x, y) -> float:
    z = theta[0] + theta[1] * x
    return float(np.sum(y * z - np.logaddexp(0.0, z)))


def _fit(x: np.ndarray, y: np.ndarray, steps: int = 100) -> np.ndarray | None:
    """The whole set's maximum-likelihood (intercept, slope), (1, 2): Newton with step halving from the
    intercept-only fit, so an overconfident model (slope far from 1) converges too; None if it does not."""
    ybar = float(np.clip(y.mean(), 1e-9, 1 - 1e-9))
    theta = np.array([np.log(ybar / (1 - ybar)), 0.0])
    ll = _loglik(theta, x, y)
    for _ in range(steps):
        mu = sigmoid(theta[0] + theta[1] * x)
        r, v = y - mu, mu * (1 - mu)
        g = np.array([r.sum(), r @ x])
        h = np.array([[v.sum(), v @ x], [v @ x, v @ (x * x)]])
        try:
            d = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            return None
        t = 1.0
        while t > 1e-8:
            cand = theta + t * d
            new = _loglik(cand, x, y)
            if new >= ll - 1e-12:
                break
            t /= 2
        theta, ll = cand, new
        if np.abs(t * d).max() < 1e-12:
            return theta[None, :]
    return theta[None, :] if np.isfinite(theta).all() else None


def _newton(x: np.ndarray, y: np.ndarray, w: np.ndarray, start, steps: int) -> tuple[np.ndarray, bool]:
    """Weighted logistic regression of ``y`` on [1, x] for each row of weights ``w`` (R, n): (R, 2) estimates
    (intercept, slope) after at most ``steps`` Newton steps from ``start`` (or 0, 1), and whether it converged."""
    r = len(w)
    theta = np.tile(np.array([0.0, 1.0]) if start is None else np.asarray(start, dtype=np.float64), (r, 1))
    theta = theta.astype(x.dtype)
    converged = False
    x2 = x * x
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a degenerate replicate becomes nan
        for _ in range(steps):
            mu = np.multiply(x, theta[:, 1:])  # in place from here on: (R, n) passes dominate the cost
            mu += theta[:, :1]
            mu *= 0.5  # the sigmoid as 0.5 (1 + tanh(z / 2)): no overflow, and 10x faster than scipy's expit
            np.tanh(mu, out=mu)
            mu += 1
            mu *= 0.5
            var = np.subtract(1, mu)
            var *= mu
            var *= w
            resid = np.subtract(y, mu, out=mu)
            resid *= w
            g0, g1 = resid.sum(1), resid @ x
            h00, h01, h11 = var.sum(1), var @ x, var @ x2
            det = h00 * h11 - h01 * h01
            d0 = (h11 * g0 - h01 * g1) / det
            d1 = (h00 * g1 - h01 * g0) / det
            theta = theta + np.stack([d0, d1], axis=1)
            step = np.abs(np.stack([d0, d1]))
            if not np.isfinite(step).any() or np.nanmax(step) < 1e-10:
                converged = bool(np.isfinite(step).all())
                break
    return theta, converged


def extra_figures(y: np.ndarray, mask: np.ndarray, scores: np.ndarray, clusters: np.ndarray, bootstrap: int,
                  seed: int, calibration: bool, logits: bool = False, chunk: int | None = None, counts=None):
    """Per label (columns of ``y``): ``(point figures, replicate figures or None, LabelCalibration)``, on the
    resamples of :func:`chexcut.evaluation.metrics.bootstrap_aurocs` with the same ``seed`` (a label with
    fewer than one case of a class gets no figures: ``None``). ``logits``: scores become probabilities by a
    sigmoid for calibration (average precision uses only their order)."""
    from chexcut.evaluation.metrics import replicate_counts

    probs = sigmoid(scores) if logits else np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask) > 0
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 1
    per = []
    for j in range(y.shape[1]):
        rows = np.flatnonzero(mask[:, j])
        yj = y[rows, j]
        if len(rows) == 0 or yj.min() == yj.max():
            per.append(None)
            continue
        per.append((rows, LabelCalibration(yj, probs[rows, j], clusters[rows], calibration, n_clusters)))
    points = [None if q is None else _point(q[1]) for q in per]
    reps = [None if q is None else {k: [] for k in points[j]} for j, q in enumerate(per)]
    if bootstrap:
        sub = max(1, 2**22 // max(len(y), 1))  # rows x replicates per step: bounded memory
        for drawn in counts if counts is not None else replicate_counts(len(y), clusters, bootstrap, seed, chunk):
            for lo in range(0, len(drawn), sub):
                c = drawn[lo:lo + sub]
                for j, q in enumerate(per):
                    if q is not None:
                        for k, v in q[1].figures(c).items():
                            reps[j][k].append(v)
        reps = [None if r is None else {k: np.concatenate(v) for k, v in r.items()} for r in reps]
    else:
        reps = [None] * len(per)
    return points, reps, [None if q is None else q[1] for q in per]


def _point(lc: LabelCalibration) -> dict[str, float]:
    """The whole set's value of every computed figure."""
    return {f.key: f.whole_set(lc) for f in figures.computed(lc.calibration)}
