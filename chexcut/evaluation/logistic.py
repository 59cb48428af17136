"""L2-regularised logistic regression for many binary problems at once: every label of a probe, at every C of a grid.

Each problem (a label j at a regularisation C) is scikit-learn's ``LogisticRegression(C=C)`` on standardised
features (sklearn's ``StandardScaler``): minimise ``C * sum_i log-loss_i + 1/2 ||w||^2`` over the rows where the
label counts (``counted[:, j]``; masked rows are unknown), the intercept unpenalised, as sklearn's lbfgs and
newton solvers fit it. One fit of a problem is one convex optimum, so the solver is a free choice; this one is
Newton's method with a backtracking line search, every problem's step from one batched solve, so a block's
14 labels x 5 C cost a few matrix products instead of 70 separate fits (``tests/test_probe.py`` checks the
AUROCs against sklearn's ``LogisticRegression`` per label). A label with one class among its counted rows has
no optimum: its probability is that class's share (0 or 1; 0.5 with no counted row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOL = 1e-8  # stop when every problem's gradient (max-abs, per row of its data) is below this
MAX_ITER = 100


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
    ``cs[k]``. Features standardised over all rows of ``x`` (sklearn's StandardScaler: a constant feature keeps
    scale 1)."""
    import torch
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    n_labels = y.shape[1]
    targets = np.tile(y > 0.5, (1, len(cs))).astype(np.float64)
    weights = np.tile(counted > 0, (1, len(cs))).astype(np.float64)
    c = np.repeat(np.asarray(cs, dtype=np.float64), n_labels)
    positives, rows = (targets * weights).sum(0), weights.sum(0)
    constant = np.where((positives > 0) & (positives < rows), np.nan,
                        np.where(rows > 0, positives / np.maximum(rows, 1), 0.5))
    active = np.flatnonzero(np.isnan(constant))
    theta = np.zeros((x.shape[1] + 1, len(c)))
    stuck = 0
    if len(active):
        design = torch.from_numpy(np.hstack([xs, np.ones((len(xs), 1))]))
        fitted, stuck = newton(design, torch.from_numpy(targets[:, active]), torch.from_numpy(weights[:, active]),
                               torch.from_numpy(c[active]))
        theta[:, active] = fitted.numpy()
    return Heads(scaler.mean_, scaler.scale_, theta, constant, stuck)


def newton(design, targets, weights, c):
    """(theta (features + 1, problems), how many did not converge): Newton's method on each problem's objective
    ``c * sum_i w_i (softplus(z_i) - y_i z_i) + 1/2 ||theta[:-1]||^2`` with ``z = design @ theta``."""
    import torch

    n, d1 = design.shape
    penalty = torch.ones(d1, 1, dtype=design.dtype)
    penalty[-1] = 0.0  # the intercept is not penalised

    def objective(theta):
        z = design @ theta
        loss = (weights * (torch.nn.functional.softplus(z) - targets * z)).sum(0)
        return c * loss + 0.5 * (penalty * theta ** 2).sum(0)

    theta = torch.zeros(d1, targets.shape[1], dtype=design.dtype)
    f = objective(theta)
    scale = c * weights.sum(0).clamp(min=1)  # the gradient's size per counted row
    for _ in range(MAX_ITER):
        p = torch.sigmoid(design @ theta)
        grad = c * (design.T @ (weights * (p - targets))) + penalty * theta
        open_ = grad.abs().amax(0) / scale > TOL
        if not open_.any():
            return theta, 0
        s = c * weights * p * (1 - p)
        hessian = torch.stack([(design * s[:, k:k + 1]).T @ design for k in range(s.shape[1])])
        hessian = hessian + torch.diag_embed(penalty.T.expand(s.shape[1], d1) + 1e-10)
        factor, info = torch.linalg.cholesky_ex(hessian)  # positive definite: Cholesky, per problem
        step = torch.cholesky_solve(grad.T.unsqueeze(-1), factor).squeeze(-1).T
        failed = info != 0  # numerically not positive definite: a diagonally scaled gradient step instead
        if failed.any():
            step[:, failed] = grad[:, failed] / hessian.diagonal(dim1=1, dim2=2)[failed].T
        step = torch.nan_to_num(step) * open_  # converged problems stay where they are
        t = torch.ones_like(f)
        for _ in range(40):  # backtracking (Armijo) per problem
            tried = objective(theta - t * step)
            ok = tried <= f - 1e-4 * t * (grad * step).sum(0)
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        theta = theta - t * step
        f = objective(theta)
    p = torch.sigmoid(design @ theta)
    grad = c * (design.T @ (weights * (p - targets))) + penalty * theta
    return theta, int((grad.abs().amax(0) / scale > TOL).sum())
