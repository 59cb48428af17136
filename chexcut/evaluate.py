"""Evaluation arithmetic: labels + scores -> per-label AUROC, bootstrap CIs, paired comparison -> JSON.

Everything here works on plain arrays: :mod:`chexcut.evalrun` gathers them (running a model, or
reading predictions CSVs through :mod:`chexcut.predictions`), and the CLI renders what
:func:`evaluate` returns. No torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexcut import metrics
from chexcut.choices import Cluster, Level, Method, check
from chexcut.errors import ChexcutError
from chexcut.labels import COMPETITION_LABELS


@dataclass
class EvalSet:
    """Rows to evaluate: ``y``/``mask`` (N, L), and the ids used for aggregation and clustering."""

    paths: list[str]
    labels: tuple[str, ...]
    y: np.ndarray
    mask: np.ndarray
    patient: np.ndarray
    study: np.ndarray


# ----------------------------------------------------------------------------- aggregation

def aggregate_by_study(evalset: EvalSet, scores: list[np.ndarray]) -> tuple[EvalSet, list[np.ndarray]]:
    """One row per study: the max prediction over its views (the official CheXpert evaluation);
    a label counts for the study if it counts for any view, positive if positive in any."""
    import pandas as pd

    codes, uniq = pd.factorize(pd.Series(evalset.study, dtype=object))
    k = len(uniq)

    def group_max(a):
        out = np.full((k, a.shape[1]), -np.inf)
        np.maximum.at(out, codes, a)
        return out

    masked_y = np.where(evalset.mask > 0, evalset.y, -np.inf)
    y = group_max(masked_y)
    mask = group_max(evalset.mask.astype(np.float64))
    y = np.where(np.isfinite(y), y, 0.0)
    first = np.zeros(k, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    agg = EvalSet(paths=[str(u) for u in uniq], labels=evalset.labels, y=y, mask=mask,
                  patient=evalset.patient[first], study=np.asarray(uniq, dtype=object))
    return agg, [group_max(s) for s in scores]


# ----------------------------------------------------------------------------- the evaluation

def check_parameters(bootstrap: int = 1000, ci: float = 0.95, alpha: float = 0.05, cluster: str = "patient",
                     method: str = "bootstrap", level: str = "study") -> None:
    """One-line errors for evaluation parameters, checked before any inference runs."""
    if bootstrap < 0:
        raise ChexcutError(f"--bootstrap must be >= 0, not {bootstrap}")
    if not 0 < ci < 1:
        raise ChexcutError(f"--ci must be in (0, 1), not {ci}")
    if not 0 < alpha < 1:
        raise ChexcutError(f"--alpha must be in (0, 1), not {alpha}")
    check(Cluster, cluster, "--cluster")
    check(Method, method, "--method")
    check(Level, level, "--level")


def _summary(values: np.ndarray, reps: np.ndarray | None, ci: float) -> dict:
    if reps is None:
        return {"auroc": _num(values), "ci_low": None, "ci_high": None}
    iv = metrics.percentile_interval(values, reps, ci)
    return {"auroc": _num(iv.estimate), "ci_low": _num(iv.low), "ci_high": _num(iv.high),
            "replicates_used": iv.valid_replicates, "replicates_excluded": int(len(reps) - iv.valid_replicates)}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _mean_of(auc: np.ndarray, reps: np.ndarray | None, cols: list[int], ci: float) -> dict | None:
    if not cols:
        return None
    point = float(np.mean(auc[cols]))
    mean_reps = None if reps is None else reps[:, cols].mean(1)  # nan if any label has one class
    out = _summary(point, mean_reps, ci)
    out["labels"] = len(cols)
    return out


def label_aurocs(y: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(L,) AUROC of each label's counted rows (``mask`` true); ``nan`` where not evaluable."""
    mask = np.asarray(mask) > 0
    return np.array([metrics.auroc(y[mask[:, j], j], scores[mask[:, j], j]) for j in range(y.shape[1])])


def competition_columns(labels, auc: np.ndarray) -> list[int]:
    """Indices of the evaluable competition labels."""
    return [j for j, name in enumerate(labels) if name in COMPETITION_LABELS and np.isfinite(auc[j])]


def competition_mean(labels, auc: np.ndarray) -> float | None:
    """Mean AUROC over the evaluable competition labels (None when there is none)."""
    cols = competition_columns(labels, auc)
    return float(np.mean(auc[cols])) if cols else None


def evaluate(evalset: EvalSet, scores: np.ndarray, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
             cluster: str = "patient", compare: np.ndarray | None = None, method: str = "bootstrap",
             alpha: float = 0.05, chunk: int | None = None) -> dict:
    """The evaluation JSON (see the README for the schema)."""
    check_parameters(bootstrap=bootstrap, ci=ci, alpha=alpha, cluster=cluster, method=method)
    y, mask, labels = evalset.y, evalset.mask > 0, evalset.labels
    n_labels = len(labels)
    auc = label_aurocs(y, mask, scores)
    auc_b = None if compare is None else label_aurocs(y, mask, compare)
    reps = reps_b = None
    if bootstrap:
        ids = {"patient": evalset.patient, "study": evalset.study, "none": np.arange(len(y))}[cluster]
        clusters = metrics.cluster_ids(ids)
        mats = [scores] + ([compare] if compare is not None else [])
        got = metrics.bootstrap_aurocs(y, mats, mask, clusters, bootstrap, seed=seed, chunk=chunk)
        reps = got[0]
        reps_b = got[1] if compare is not None else None
        # a replicate where the full data is not evaluable for a label stays excluded
    per_label = []
    for j, name in enumerate(labels):
        yj = y[mask[:, j], j]
        n_pos, n_neg = int(yj.sum()), int(len(yj) - yj.sum())
        row = {"label": name, "n_pos": n_pos, "n_neg": n_neg, **_summary(auc[j], None if reps is None else reps[:, j], ci)}
        if not np.isfinite(auc[j]):
            row["not_evaluable"] = (f"only {'positives' if n_pos else 'negatives'}" if len(yj) else "no counted rows")
        per_label.append(row)
    evaluable = [j for j in range(n_labels) if np.isfinite(auc[j])]
    comp = competition_columns(labels, auc)
    result = {
        "n": int(len(y)), "bootstrap": int(bootstrap), "ci": ci, "seed": seed, "cluster": cluster,
        "labels": per_label,
        "mean_competition": _mean_of(auc, reps, comp, ci),
        "mean_all": _mean_of(auc, reps, evaluable, ci),
        "competition_labels": [labels[j] for j in comp],
        "compare": None,
    }
    if compare is not None:
        result["compare"] = _compare(y, mask, labels, auc, auc_b, reps, reps_b, compare, scores, comp, evaluable,
                                     method, ci, alpha)
    return result


def _compare(y, mask, labels, auc, auc_b, reps, reps_b, compare, scores, comp, evaluable, method, ci, alpha):
    both = [j for j in evaluable if np.isfinite(auc_b[j])]
    rows = []
    for j, name in enumerate(labels):
        d = auc[j] - auc_b[j]
        if j not in both:
            rows.append({"label": name, "delta": None, "ci_low": None, "ci_high": None, "p": None})
            continue
        if method == "delong":
            m = mask[:, j]
            delta, lo, hi, p = metrics.delong_test(y[m, j], scores[m, j], compare[m, j])
            rows.append({"label": name, "delta": _num(delta), "ci_low": _num(lo), "ci_high": _num(hi), "p": _num(p),
                         "method": "delong"})
        elif reps is not None:
            dr = reps[:, j] - reps_b[:, j]
            iv = metrics.percentile_interval(d, dr, ci)
            rows.append({"label": name, "delta": _num(d), "ci_low": _num(iv.low), "ci_high": _num(iv.high),
                         "p": _num(metrics.bootstrap_p(dr)), "method": "bootstrap"})
        else:
            rows.append({"label": name, "delta": _num(d), "ci_low": None, "ci_high": None, "p": None})

    def mean_delta(cols):
        cols = [j for j in cols if j in both]
        if not cols:
            return None
        d = float(np.mean(auc[cols]) - np.mean(auc_b[cols]))
        if reps is None:
            return {"delta": d, "ci_low": None, "ci_high": None, "p": None, "labels": len(cols)}
        dr = reps[:, cols].mean(1) - reps_b[:, cols].mean(1)
        iv = metrics.percentile_interval(d, dr, ci)
        return {"delta": d, "ci_low": _num(iv.low), "ci_high": _num(iv.high), "p": _num(metrics.bootstrap_p(dr)),
                "labels": len(cols), "method": "bootstrap"}

    mc = mean_delta(comp)
    out = {"labels": rows, "mean_competition": mc, "mean_all": mean_delta(evaluable), "alpha": alpha,
           "method": method}
    out["verdict"] = verdict(mc, alpha)
    out["significant"] = bool(mc and mc["p"] is not None and mc["p"] < alpha)
    return out


def verdict(mc: dict | None, alpha: float) -> str:
    if not mc:
        return "no competition label is evaluable in both: no verdict"
    if mc["p"] is None:
        return f"mean competition AUROC differs by {mc['delta']:+.4f}; no test without --bootstrap"
    sig = mc["p"] < alpha
    direction = "higher" if mc["delta"] > 0 else "lower"
    if sig:
        return (f"significant at alpha={alpha}: mean competition AUROC is {abs(mc['delta']):.4f} {direction} "
                f"(p={mc['p']:.3g})")
    return f"no significant difference at alpha={alpha} (delta {mc['delta']:+.4f}, p={mc['p']:.3g})"


def evalset_from_table(table) -> EvalSet:
    return EvalSet(paths=list(table.paths), labels=tuple(table.labels), y=table.targets.astype(np.float64),
                   mask=table.mask, patient=table.patient, study=table.study)
