"""The pieces of an evaluation's JSON shared by the whole set and its subgroups: per-label objects (AUROC,
average precision, counts, prevalence, reasons, small-sample warnings) and the means. Plain numpy."""

from __future__ import annotations

import numpy as np

from chexcut.evaluation import figures, metrics
from chexcut.labels import COMPETITION_LABELS

MIN_CLASS = 10  # fewer positives or negatives than this in a label: its interval carries a warning
MIN_USABLE_SHARE = metrics.MIN_USABLE_SHARE  # the one rule (metrics.usable): fewer usable replicates, no interval
MAX_EXCLUDED_SHARE = 0.01  # more excluded replicates than this: a warning


def interval_summary(estimate: float, reps: np.ndarray | None, ci: float) -> dict:
    """Point estimate and percentile interval; the interval is null (with the reason) when too few
    replicates were usable, and a warning says when more than a few were excluded."""
    if reps is None:
        return {"auroc": metrics.finite_or_none(estimate), "ci_low": None, "ci_high": None}
    iv = metrics.percentile_interval(estimate, reps, ci)
    excluded = int(len(reps) - iv.valid_replicates)
    out = {"auroc": metrics.finite_or_none(iv.estimate), "ci_low": metrics.finite_or_none(iv.low), "ci_high": metrics.finite_or_none(iv.high),
           "replicates_used": iv.valid_replicates, "replicates_excluded": excluded}
    if np.isfinite(estimate) and len(reps) and metrics.usable(reps) is None:  # the one rule withholds it
        out["ci_low"] = out["ci_high"] = None
        out["interval_note"] = (f"no interval: only {iv.valid_replicates} of {len(reps)} replicates drew both "
                                f"classes (at least {MIN_USABLE_SHARE:.0%} are needed)")
    elif np.isfinite(estimate) and excluded > MAX_EXCLUDED_SHARE * len(reps):
        out["warning"] = f"{excluded} of {len(reps)} replicates excluded (one class drawn)"
    return out


def _small_sample_warning(row: dict) -> None:
    """Add to ``row["warning"]`` when a class has fewer than MIN_CLASS cases (the interval undercovers)."""
    if row.get("auroc") is None or min(row["n_pos"], row["n_neg"]) >= MIN_CLASS:
        return
    msg = (f"{row['n_pos']} positives, {row['n_neg']} negatives: fewer than {MIN_CLASS} in a class, "
           f"the interval may not reach its nominal coverage")
    row["warning"] = f"{msg}; {row['warning']}" if row.get("warning") else msg


def mean_of(auc: np.ndarray, reps: np.ndarray | None, cols: list[int], ci: float) -> dict | None:
    if not cols:
        return None
    point = float(np.mean(auc[cols]))
    mean_reps = None if reps is None else reps[:, cols].mean(1)  # nan if any label has one class
    out = interval_summary(point, mean_reps, ci)
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


def label_rows(evalrows, mask: np.ndarray, auc: np.ndarray, reps: np.ndarray | None, ci: float,
               extra=None) -> list[dict]:
    """The per-label objects of the JSON: counts, prevalence, AUROC and CI, average precision and CI, reasons
    and warnings. ``extra``: (points, replicates) of :func:`chexcut.evaluation.calibration.extra_figures`."""
    y = evalrows.y
    rows = []
    for j, name in enumerate(evalrows.labels):
        yj = y[mask[:, j], j]
        n_pos, n_neg = int(yj.sum()), int(len(yj) - yj.sum())
        row = {"label": name, "n_pos": n_pos, "n_neg": n_neg,
               "prevalence": n_pos / len(yj) if len(yj) else None,
               **interval_summary(auc[j], None if reps is None else reps[:, j], ci)}
        if extra is not None:
            for fig in figures.computed(False):  # the labels section's (average precision, ...)
                row |= figure_fields(extra, j, fig, ci)
        if name in evalrows.not_annotated:
            row["not_evaluable"] = "not annotated in this data set (blank in every row)"
        elif not np.isfinite(auc[j]):
            row["not_evaluable"] = (f"only {'positives' if n_pos else 'negatives'}" if len(yj) else "no counted rows")
        _small_sample_warning(row)
        rows.append(row)
    return rows


def label_figure(extra, j: int, key: str, ci: float) -> dict:
    """``{key, key_ci_low, key_ci_high}`` of label ``j`` from extra_figures' (points, replicates)."""
    points, reps = extra
    point = (points[j] or {}).get(key)
    out = {key: metrics.finite_or_none(point) if point is not None else None, f"{key}_ci_low": None, f"{key}_ci_high": None}
    r = (reps[j] or {}).get(key) if reps[j] is not None else None
    if point is not None and r is not None and np.isfinite(point):
        iv = metrics.percentile_interval(point, r, ci)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = metrics.finite_or_none(iv.low), metrics.finite_or_none(iv.high)
    return out


def figure_fields(extra, j: int, fig, ci: float) -> dict:
    """A declared figure's fields in label ``j``'s JSON row: its value, and its CI when it is resampled."""
    return _named(label_figure(extra, j, fig.key, ci), fig)


def figure_means(extra, cols: list[int], ci: float) -> dict:
    """The means (with CIs) over the labels ``cols`` of the labels section's figures declared ``mean``."""
    out = {}
    for fig in figures.computed(False):
        if fig.mean:
            out |= _named(mean_figure(extra, cols, fig.key, ci), fig)
    return out


def _named(fields: dict, fig) -> dict:
    """``{key, key_ci_low, key_ci_high}`` under the figure's declared CI names (none when it is not resampled)."""
    if not fig.resampled:
        return {fig.key: fields[fig.key]}
    low, high = fig.ci_keys
    return {fig.key: fields[fig.key], low: fields[f"{fig.key}_ci_low"], high: fields[f"{fig.key}_ci_high"]}


def mean_figure(extra, cols: list[int], key: str, ci: float) -> dict:
    points, reps = extra
    vals = [points[j].get(key) if points[j] else None for j in cols]
    if not cols or any(v is None for v in vals):
        return {key: None, f"{key}_ci_low": None, f"{key}_ci_high": None}
    point = float(np.mean(vals))
    out = {key: point, f"{key}_ci_low": None, f"{key}_ci_high": None}
    if all(reps[j] is not None for j in cols):
        iv = metrics.percentile_interval(point, np.mean([reps[j][key] for j in cols], axis=0), ci)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = metrics.finite_or_none(iv.low), metrics.finite_or_none(iv.high)
    return out
