"""Paired comparison of two score matrices on the same rows: is model A's AUROC different from B's,
not worse than B's by more than a margin, or equivalent to it?

Per label and for the two means (competition tasks, all labels), with one of two methods:

- ``bootstrap``: the replicate AUROCs of both models come from the same resamples, so the replicate
  deltas carry the pairing; percentile interval; two-sided p from the share of deltas on the other side
  of 0; non-inferiority p = (#{delta* <= -margin} + 1) / (B + 1).
- ``delong``: DeLong's variance from structural components (:func:`chexcut.evaluation.metrics.delong_components`),
  clustered (Obuchowski 1997) when rows share a patient or study; a mean of labels is a linear
  combination of correlated AUROCs, so its variance comes from the same components. No bootstrap needed.

Non-inferiority tests H0: delta <= -margin at level alpha (one-sided); equivalence is TOST (both
H0: delta <= -margin and H0: delta >= +margin rejected; p = the larger p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexcut.evaluation import metrics


def delong_clusters(ids: np.ndarray | None) -> np.ndarray | None:
    """Dense cluster ids when some cluster holds more than one row; None (classic DeLong) otherwise."""
    if ids is None:
        return None
    dense = metrics.cluster_ids(ids)
    return dense if len(dense) and np.bincount(dense).max() > 1 else None


class _DeLongDeltas:
    """Per label, the components of AUROC(a) - AUROC(b): a mean's variance is a sum over them."""

    def __init__(self, y, mask, a, b, cols, clusters):
        n = len(y)
        k = int(clusters.max()) + 1 if clusters is not None else n
        self.phi = {}
        for j in cols:
            rows = np.flatnonzero(mask[:, j])
            cl = None if clusters is None else clusters[rows]
            _, pa = metrics.delong_components(y[rows, j], a[rows, j], cl, k)
            _, pb = metrics.delong_components(y[rows, j], b[rows, j], cl, k)
            if pa is None or pb is None:
                self.phi[j] = None
            elif clusters is None:  # one component per row: place them at the rows' positions
                full = np.zeros(n)
                full[rows] = pa - pb
                self.phi[j] = full
            else:
                self.phi[j] = pa - pb

    def test(self, delta: float, cols: list[int], ci: float, margin: float | None) -> metrics.NormalTest:
        if any(self.phi[j] is None for j in cols):
            return metrics.NormalTest(delta, None, reason="not evaluable by DeLong (a class has fewer than 2 cases)")
        phi = sum(self.phi[j] for j in cols) / len(cols)
        return metrics.normal_test(delta, float(phi @ phi), ci, margin)


def _bootstrap_test(delta: float, dr: np.ndarray, ci: float, margin: float | None) -> dict:
    iv = metrics.percentile_interval(delta, dr, ci)
    out = {"ci_low": metrics.finite_or_none(iv.low), "ci_high": metrics.finite_or_none(iv.high), "p": metrics.finite_or_none(metrics.bootstrap_p(dr))}
    if margin is not None:
        p_ni, p_eq = metrics.bootstrap_margin_p(dr, margin)
        out.update(p_noninferiority=metrics.finite_or_none(p_ni), p_equivalence=metrics.finite_or_none(p_eq))
    return out


@dataclass
class Arm:
    """One model of a paired comparison: its scores (N, L), per-label AUROCs and bootstrap replicates."""

    scores: np.ndarray
    auc: np.ndarray
    reps: np.ndarray | None = None


def compare(y: np.ndarray, mask: np.ndarray, labels, model_a: Arm, model_b: Arm, *, comp: list[int],
            evaluable: list[int], stats, cluster_ids: np.ndarray | None = None) -> dict:
    """The ``compare`` block of the evaluation JSON (A minus B); ``stats``: the
    :class:`~chexcut.evaluation.settings.Statistics` (method, ci, alpha, margin, equivalence)."""
    a, b, auc_a, auc_b, reps_a, reps_b = model_a.scores, model_b.scores, model_a.auc, model_b.auc, model_a.reps, model_b.reps
    method, ci, alpha, margin, equivalence = stats.method, stats.ci, stats.alpha, stats.margin, stats.equivalence
    both = [j for j in evaluable if np.isfinite(auc_b[j])]
    dl = _DeLongDeltas(y, mask, a, b, both, delong_clusters(cluster_ids)) if method == "delong" else None

    def test(cols: list[int]) -> dict:
        delta = float(np.mean(auc_a[cols]) - np.mean(auc_b[cols]))
        out = {"delta": delta, "ci_low": None, "ci_high": None, "p": None, "method": method}
        if dl is not None:
            t = dl.test(delta, cols, ci, margin)
            out.update(ci_low=metrics.finite_or_none(t.ci_low), ci_high=metrics.finite_or_none(t.ci_high), p=metrics.finite_or_none(t.p),
                       p_noninferiority=metrics.finite_or_none(t.p_noninferiority), p_equivalence=metrics.finite_or_none(t.p_equivalence))
            if t.reason:
                out["reason"] = t.reason
        elif reps_a is not None:
            dr = reps_a[:, cols].mean(1) - reps_b[:, cols].mean(1)
            out.update(_bootstrap_test(delta, dr, ci, margin))
        else:
            out["reason"] = "no test without --bootstrap (or use --method delong)"
        if margin is not None:
            p_ni = out.get("p_noninferiority")
            out.update(margin=margin, noninferior=None if p_ni is None else bool(p_ni < alpha))
            if equivalence:
                p_eq = out.get("p_equivalence")
                out["equivalent"] = None if p_eq is None else bool(p_eq < alpha)
            else:
                out.pop("p_equivalence", None)
        else:
            out.pop("p_noninferiority", None)
            out.pop("p_equivalence", None)
        return out

    rows = [{"label": name, **test([j])} if j in both else
            {"label": name, "delta": None, "ci_low": None, "ci_high": None, "p": None}
            for j, name in enumerate(labels)]
    mean = {}
    for key, cols in (("mean_competition", comp), ("mean_all", evaluable)):
        cols = [j for j in cols if j in both]
        mean[key] = {**test(cols), "labels": len(cols)} if cols else None
    mc = mean["mean_competition"]
    return {"labels": rows, **mean, "alpha": alpha, "method": method, "margin": margin,
            "equivalence": bool(equivalence), "verdict": verdict(mc, alpha),
            "significant": bool(mc and mc["p"] is not None and mc["p"] < alpha)}


def verdict(mc: dict | None, alpha: float) -> str:
    """One line on the mean competition AUROC: the two-sided test, and non-inferiority with a margin."""
    if not mc:
        return "no competition label is evaluable in both: no verdict"
    if mc["p"] is None:
        return f"mean competition AUROC differs by {mc['delta']:+.4f}; {mc.get('reason', 'no test')}"
    direction = "higher" if mc["delta"] > 0 else "lower"
    if mc["p"] < alpha:
        line = (f"significant at alpha={alpha}: mean competition AUROC is {abs(mc['delta']):.4f} {direction} "
                f"(p={mc['p']:.3g})")
    else:
        line = f"no significant difference at alpha={alpha} (delta {mc['delta']:+.4f}, p={mc['p']:.3g})"
    if mc.get("margin") is not None and mc.get("p_noninferiority") is not None:
        m = mc["margin"]
        ni = ("non-inferior" if mc["noninferior"] else "non-inferiority not shown")
        line += f"; {ni} at margin {m:g} (p={mc['p_noninferiority']:.3g})"
        if "equivalent" in mc:
            line += f"; {'equivalent' if mc['equivalent'] else 'equivalence not shown'} within +-{m:g} (TOST p={mc['p_equivalence']:.3g})"
    return line
