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
  one-step bootstrap, iterated). When positives and negatives are separated (AUROC 0 or 1) no finite slope
  exists: both are null, with the reason.
"""

from __future__ import annotations

import numpy as np

N_BINS = 10
WIDTH_EDGES = np.arange(1, N_BINS) / N_BINS  # 0.1 ... 0.9, the floats nearest k/10
CLIP = 1e-7
REPLICATE_NEWTON_STEPS = 4


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # no overflow for large |x|


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
    """One label's counted rows (outcomes ``y``, probabilities ``p``), prepared once for many replicates."""

    def __init__(self, y: np.ndarray, p: np.ndarray, clusters: np.ndarray, calibration: bool = True):
        self.y = np.asarray(y, dtype=np.float64)
        self.p = np.asarray(p, dtype=np.float64)
        self.clusters = clusters
        self.calibration = calibration
        order = np.argsort(-self.p, kind="mergesort")
        self.order = order
        s = self.p[order]
        self.ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=np.int64)
        self.y_sorted = self.y[order]
        if calibration:
            self.bin_width = np.eye(N_BINS)[width_bins(self.p)] if len(s) else np.zeros((0, N_BINS))
            self.bin_mass = np.eye(N_BINS)[mass_bins(self.p)] if len(s) else np.zeros((0, N_BINS))
            self.x = np.log(np.clip(self.p, CLIP, 1 - CLIP) / (1 - np.clip(self.p, CLIP, 1 - CLIP)))
            n_pos = self.y.sum()
            self.separated = n_pos in (0, len(self.y)) or bool(
                self.p[self.y == 1].min() > self.p[self.y == 0].max()
                or self.p[self.y == 1].max() < self.p[self.y == 0].min())
            self.fit = None if self.separated else _fit(self.x, self.y)

    # ------------------------------------------------------------------ weighted figures, (R,) each
    def average_precision(self, w: np.ndarray) -> np.ndarray:
        ws = w[:, self.order]
        tp = np.cumsum(ws * self.y_sorted, axis=1)[:, self.ends]
        fp = np.cumsum(ws * (1 - self.y_sorted), axis=1)[:, self.ends]
        total = tp[:, -1] if tp.shape[1] else np.zeros(len(w))
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            step = np.diff(tp, axis=1, prepend=0.0) / total[:, None]
            out = (step * precision).sum(1)
        out[total <= 0] = np.nan
        return out

    def brier(self, w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return w @ (self.p - self.y) ** 2 / w.sum(1)

    def ece(self, w: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        sy, sp = w @ (onehot * self.y[:, None]), w @ (onehot * self.p[:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(sy - sp).sum(1) / w.sum(1)

    def recalibration(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fit is None:
            nan = np.full(len(w), np.nan)
            return nan, nan
        theta, _ = _newton(self.x, self.y, w, self.fit, REPLICATE_NEWTON_STEPS)
        return theta[:, 0], theta[:, 1]

    def figures(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Every figure for the replicates whose row weights are ``w`` (R, n)."""
        out = {"average_precision": self.average_precision(w)}
        if self.calibration:
            a, b = self.recalibration(w)
            out |= {"brier": self.brier(w), "ece": self.ece(w, self.bin_width),
                    "ece_equal_mass": self.ece(w, self.bin_mass), "intercept": a, "slope": b}
        return out


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
    converged = False
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a degenerate replicate becomes nan
        for _ in range(steps):
            mu = sigmoid(theta[:, :1] + theta[:, 1:] * x)
            resid, var = w * (y - mu), w * mu * (1 - mu)
            g0, g1 = resid.sum(1), resid @ x
            h00, h01, h11 = var.sum(1), var @ x, var @ (x * x)
            det = h00 * h11 - h01 * h01
            d0 = (h11 * g0 - h01 * g1) / det
            d1 = (h00 * g1 - h01 * g0) / det
            theta = theta + np.stack([d0, d1], axis=1)
            step = np.abs(np.stack([d0, d1]))
            if not np.isfinite(step).any() or np.nanmax(step) < 1e-10:
                converged = bool(np.isfinite(step).all())
                break
    return theta, converged


FIGURES = ("average_precision", "brier", "ece", "ece_equal_mass", "intercept", "slope")


def extra_figures(y: np.ndarray, mask: np.ndarray, scores: np.ndarray, clusters: np.ndarray, bootstrap: int,
                  seed: int, calibration: bool, logits: bool = False, chunk: int | None = None):
    """Per label (columns of ``y``): ``(point figures, replicate figures or None, LabelCalibration)``, on the
    resamples of :func:`chexcut.evaluation.metrics.bootstrap_aurocs` with the same ``seed`` (a label with
    fewer than one case of a class gets no figures: ``None``). ``logits``: scores become probabilities by a
    sigmoid for calibration (average precision uses only their order)."""
    from chexcut.evaluation.metrics import replicate_counts

    probs = sigmoid(scores) if logits else np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask) > 0
    per = []
    for j in range(y.shape[1]):
        rows = np.flatnonzero(mask[:, j])
        yj = y[rows, j]
        if len(rows) == 0 or yj.min() == yj.max():
            per.append(None)
            continue
        per.append((rows, LabelCalibration(yj, probs[rows, j], clusters[rows], calibration)))
    points = [None if q is None else _point(q[1]) for q in per]
    reps = [None if q is None else {k: [] for k in FIGURES if k in points[j]} for j, q in enumerate(per)]
    if bootstrap:
        sub = max(1, 2**22 // max(len(y), 1))  # rows x replicates per step: bounded memory
        for counts in replicate_counts(len(y), clusters, bootstrap, seed, chunk):
            for lo in range(0, len(counts), sub):
                c = counts[lo:lo + sub]
                for j, q in enumerate(per):
                    if q is not None:
                        for k, v in q[1].figures(c[:, q[1].clusters]).items():
                            reps[j][k].append(v)
        reps = [None if r is None else {k: np.concatenate(v) for k, v in r.items()} for r in reps]
    else:
        reps = [None] * len(per)
    return points, reps, [None if q is None else q[1] for q in per]


def _point(lc: LabelCalibration) -> dict[str, float]:
    point = {k: float(v[0]) for k, v in lc.figures(np.ones((1, len(lc.y)))).items()}
    if lc.calibration and lc.fit is not None:
        point["intercept"], point["slope"] = float(lc.fit[0, 0]), float(lc.fit[0, 1])
    return point
