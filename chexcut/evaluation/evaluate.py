"""Evaluation arithmetic: labels + scores -> per-label AUROC, bootstrap CIs, paired comparison -> JSON.

Everything here works on plain arrays: :mod:`chexcut.evaluation.orchestrate` gathers them (running a model, or
reading predictions CSVs through :mod:`chexcut.evaluation.predictions`), and the CLI renders what
:func:`evaluate` returns. No torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexcut.evaluation import metrics
from chexcut.evaluation.settings import Statistics, check_parameters  # noqa: F401 (check_parameters: re-exported)
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
    not_annotated: tuple[str, ...] = ()  # labels blank in every row of the data set
    groups: dict | None = None  # subgroup column -> (N,) group names (None where a row belongs to none)


# ----------------------------------------------------------------------------- aggregation

def aggregate_by_study(evalset: EvalSet, scores: list[np.ndarray]) -> tuple[EvalSet, list[np.ndarray]]:
    """One row per study: the max prediction over its views (the official CheXpert evaluation);
    a label counts for the study if it counts for any view, positive if positive in any; a subgroup value
    is its first view's."""
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
    groups = None if evalset.groups is None else {c: g[first] for c, g in evalset.groups.items()}
    agg = EvalSet(paths=[str(u) for u in uniq], labels=evalset.labels, y=y, mask=mask,
                  patient=evalset.patient[first], study=np.asarray(uniq, dtype=object),
                  not_annotated=evalset.not_annotated, groups=groups)
    return agg, [group_max(s) for s in scores]


# ----------------------------------------------------------------------------- the evaluation

MIN_CLASS = 10  # fewer positives or negatives than this in a label: its interval carries a warning
MIN_USABLE_SHARE = 0.9  # an interval from a smaller share of usable replicates is null, with the reason
MAX_EXCLUDED_SHARE = 0.01  # more excluded replicates than this: a warning


def _summary(estimate: float, reps: np.ndarray | None, ci: float) -> dict:
    """Point estimate and percentile interval; the interval is null (with the reason) when too few
    replicates were usable, and a warning says when more than a few were excluded."""
    if reps is None:
        return {"auroc": _num(estimate), "ci_low": None, "ci_high": None}
    iv = metrics.percentile_interval(estimate, reps, ci)
    excluded = int(len(reps) - iv.valid_replicates)
    out = {"auroc": _num(iv.estimate), "ci_low": _num(iv.low), "ci_high": _num(iv.high),
           "replicates_used": iv.valid_replicates, "replicates_excluded": excluded}
    if np.isfinite(estimate) and len(reps) and iv.valid_replicates < MIN_USABLE_SHARE * len(reps):
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


def cluster_rows(evalset: EvalSet, cluster: str) -> np.ndarray:
    """The id each row resamples (and DeLong clusters) by: patient, study, or the row itself."""
    return {"patient": evalset.patient, "study": evalset.study, "none": np.arange(len(evalset.y))}[cluster]


def label_rows(evalset: EvalSet, mask: np.ndarray, auc: np.ndarray, reps: np.ndarray | None, ci: float,
               extra=None) -> list[dict]:
    """The per-label objects of the JSON: counts, prevalence, AUROC and CI, average precision and CI, reasons
    and warnings. ``extra``: (points, replicates) of :func:`chexcut.evaluation.calibration.extra_figures`."""
    y = evalset.y
    rows = []
    for j, name in enumerate(evalset.labels):
        yj = y[mask[:, j], j]
        n_pos, n_neg = int(yj.sum()), int(len(yj) - yj.sum())
        row = {"label": name, "n_pos": n_pos, "n_neg": n_neg,
               "prevalence": n_pos / len(yj) if len(yj) else None,
               **_summary(auc[j], None if reps is None else reps[:, j], ci)}
        if extra is not None:
            row |= _figure(extra, j, "average_precision", ci)
        if name in evalset.not_annotated:
            row["not_evaluable"] = "not annotated in this data set (blank in every row)"
        elif not np.isfinite(auc[j]):
            row["not_evaluable"] = (f"only {'positives' if n_pos else 'negatives'}" if len(yj) else "no counted rows")
        _small_sample_warning(row)
        rows.append(row)
    return rows


def _figure(extra, j: int, key: str, ci: float) -> dict:
    """``{key, key_ci_low, key_ci_high}`` of label ``j`` from extra_figures' (points, replicates)."""
    points, reps = extra
    point = (points[j] or {}).get(key)
    out = {key: _num(point) if point is not None else None, f"{key}_ci_low": None, f"{key}_ci_high": None}
    r = (reps[j] or {}).get(key) if reps[j] is not None else None
    if point is not None and r is not None and np.isfinite(point):
        iv = metrics.percentile_interval(point, r, ci)
        if iv.valid_replicates >= MIN_USABLE_SHARE * len(r):
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = _num(iv.low), _num(iv.high)
    return out


def _mean_figure(extra, cols: list[int], key: str, ci: float) -> dict:
    points, reps = extra
    vals = [points[j].get(key) if points[j] else None for j in cols]
    if not cols or any(v is None for v in vals):
        return {key: None, f"{key}_ci_low": None, f"{key}_ci_high": None}
    point = float(np.mean(vals))
    out = {key: point, f"{key}_ci_low": None, f"{key}_ci_high": None}
    if all(reps[j] is not None for j in cols):
        iv = metrics.percentile_interval(point, np.mean([reps[j][key] for j in cols], axis=0), ci)
        if iv.valid_replicates:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = _num(iv.low), _num(iv.high)
    return out


def evaluate(evalset: EvalSet, scores: np.ndarray, stats: Statistics | None = None, *,
             compare: np.ndarray | None = None, chunk: int | None = None, logits: bool = False,
             **settings) -> dict:
    """The evaluation JSON (see the README for the schema). ``scores`` (and ``compare``) are (N, L): probabilities,
    or with ``logits`` any real numbers (AUROC and AP use only their order; calibration their sigmoid).
    ``stats`` (or its fields as keywords, e.g. ``bootstrap=2000``) says what to compute."""
    from chexcut.evaluation import calibration, paired, subgroups

    stats = stats or Statistics(**settings)
    scores = metrics.check_scores(scores, evalset.y.shape, "scores")
    if compare is not None:
        compare = metrics.check_scores(compare, evalset.y.shape, "compare")
    bootstrap, ci, seed, cluster = stats.bootstrap, stats.ci, stats.seed, stats.cluster
    y, mask, labels = evalset.y, evalset.mask > 0, evalset.labels
    clusters = metrics.cluster_ids(cluster_rows(evalset, cluster))
    auc = label_aurocs(y, mask, scores)
    auc_b = None if compare is None else label_aurocs(y, mask, compare)
    reps = reps_b = None
    counts = metrics.kept_counts(len(y), clusters, bootstrap, seed, chunk) if bootstrap else None
    if bootstrap:  # a replicate where a label has one class is excluded for it (nan)
        mats = [scores] + ([compare] if compare is not None else [])
        got = metrics.bootstrap_aurocs(y, mats, mask, clusters, bootstrap, seed=seed, chunk=chunk, counts=counts)
        reps, reps_b = got[0], (got[1] if compare is not None else None)
    points, ext_reps, fitted = calibration.extra_figures(y, mask, scores, clusters, bootstrap, seed,
                                                         stats.calibration, logits=logits, chunk=chunk,
                                                         counts=counts)
    extra = (points, ext_reps)
    per_label = label_rows(evalset, mask, auc, reps, ci, extra)
    evaluable = [j for j in range(len(labels)) if np.isfinite(auc[j])]
    comp = competition_columns(labels, auc)
    means = {}
    for key, cols in (("mean_competition", comp), ("mean_all", evaluable)):
        m = _mean_of(auc, reps, cols, ci)
        means[key] = None if m is None else m | _mean_figure(extra, cols, "average_precision", ci)
    result = {
        "n": int(len(y)), "bootstrap": int(bootstrap), "ci": ci, "seed": seed, "cluster": cluster,
        "labels": per_label, **means,
        "competition_labels": [labels[j] for j in comp],
        "warnings": [f"{r['label']}: {r['warning']}" for r in per_label if r.get("warning")],
        "compare": None,
    }
    if stats.calibration:
        result["calibration"] = calibration_section(labels, points, ext_reps, fitted, ci, logits)
    if stats.by:
        result["subgroups"], result["subgroup_gaps"], notes = subgroups.evaluate_subgroups(
            evalset, scores, stats, clusters, logits=logits, chunk=chunk, counts=counts)
        result["warnings"] += notes
    if compare is not None:
        result["compare"] = paired.compare(
            y, mask, labels, paired.Arm(scores, auc, reps), paired.Arm(compare, auc_b, reps_b), comp=comp,
            evaluable=evaluable, stats=stats, cluster_ids=None if cluster == "none" else cluster_rows(evalset, cluster))
    return result


def calibration_section(labels, points, reps, fitted, ci: float, logits: bool) -> dict:
    """``{"labels": [{label, brier, ece, ece_equal_mass, slope, intercept (each with its CI), bins}], ...}``."""
    from chexcut.evaluation.calibration import N_BINS, reliability, width_bins

    rows = []
    for j, name in enumerate(labels):
        row = {"label": name}
        for key in ("brier", "ece", "ece_equal_mass", "intercept", "slope"):
            row |= _figure((points, reps), j, key, ci)
        lc = fitted[j]
        if lc is None:
            row["not_evaluable"] = "one class only among the counted rows"
        else:
            if lc.fit is None:
                row["recalibration_note"] = "positives and negatives are separated: no finite slope or intercept"
            row["bins"] = reliability(lc.y, lc.p, width_bins(lc.p))
        rows.append(row)
    return {"labels": rows, "n_bins": N_BINS,
            "probabilities": "sigmoid of the given logits" if logits else "as given",
            "recalibration": "logit P(y) = intercept + slope * logit(p): perfect calibration is 0 and 1"}


def evalset_from_table(table) -> EvalSet:
    return EvalSet(paths=list(table.paths), labels=tuple(table.labels), y=table.targets.astype(np.float64),
                   mask=table.mask, patient=table.patient, study=table.study,
                   not_annotated=tuple(getattr(table, "not_annotated", ())))
