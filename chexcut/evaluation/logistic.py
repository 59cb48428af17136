"""L2-regularised logistic regression for many binary problems: every label of a probe, at every C of a grid.

Each problem (a label j at a regularisation C) is scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, its default
tolerance) on standardised features (sklearn's ``StandardScaler`` over all the fit rows): minimise
``C * sum_i log-loss_i + 1/2 ||w||^2`` over the rows where the label counts (``counted[:, j]``; masked rows are
unknown), the intercept unpenalised. A label with one class among its counted rows has no optimum: its
probability is that class's share (0 or 1; 0.5 with no counted row). (A batched Newton solver of the same
objective was tried and measured 17x slower than these per-label lbfgs fits on the 2-core CPU.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MAX_ITER = 1000


@dataclass
class Heads:
    """Fitted probes: the standardiser, per problem the weights and intercept (``theta``: (features + 1, problems))
    and the constant probability of a problem without both classes (nan where it was fit)."""

    mean: np.ndarray
    scale: np.ndarray
    theta: np.ndarray
    constant: np.ndarray
    unconverged: int = 0

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(rows, problems) probabilities for features ``x`` (not standardised)."""
        xs = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        z = xs @ self.theta[:-1] + self.theta[-1]
        p = 1.0 / (1.0 + np.exp(-z))
        fixed = np.isfinite(self.constant)
        p[:, fixed] = self.constant[fixed]
        return p


def fit_logistic(x: np.ndarray, y: np.ndarray, counted: np.ndarray, cs) -> Heads:
    """Heads for every label of ``y`` (rows, labels) at every C of ``cs``: problem ``k * labels + j`` is label j at
    ``cs[k]``, scikit-learn's ``LogisticRegression(C=cs[k])`` (lbfgs) over the rows where label j counts. Features
    standardised over all rows of ``x`` (sklearn's StandardScaler: a constant feature keeps scale 1)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    targets = np.tile(y > 0.5, (1, len(cs)))
    weights = np.tile(counted > 0, (1, len(cs)))
    c = np.repeat(np.asarray(cs, dtype=np.float64), y.shape[1])
    positives, rows = (targets & weights).sum(0), weights.sum(0)
    constant = np.where((positives > 0) & (positives < rows), np.nan,
                        np.where(rows > 0, positives / np.maximum(rows, 1), 0.5))
    theta = np.zeros((x.shape[1] + 1, len(c)))
    stuck = 0
    for k in np.flatnonzero(np.isnan(constant)):
        counted_rows = weights[:, k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # counted: Heads.unconverged
            fit = LogisticRegression(C=c[k], max_iter=MAX_ITER).fit(xs[counted_rows], targets[counted_rows, k])
        theta[:-1, k], theta[-1, k] = fit.coef_[0], fit.intercept_[0]
        stuck += int(fit.n_iter_.max() >= MAX_ITER)
    return Heads(scaler.mean_, scaler.scale_, theta, constant, stuck)
