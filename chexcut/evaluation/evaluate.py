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
from chexcut.evaluation.summary import (  # noqa: F401 (re-exported: the training loop and benchmarks use them)
    MAX_EXCLUDED_SHARE,
    MIN_CLASS,
    MIN_USABLE_SHARE,
    competition_columns,
    competition_mean,
    figure_fields,
    figure_means,
    interval_summary,
    label_aurocs,
    label_figure,
    label_rows,
    mean_figure,
    mean_of,
)


@dataclass
class EvalRows:
    """Rows to evaluate: ``y``/``mask`` (N, L), and the ids used for aggregation and clustering."""

    paths: list[str]
    labels: tuple[str, ...]
    y: np.ndarray
    mask: np.ndarray
    patient: np.ndarray
    study: np.ndarray
    not_annotated: tuple[str, ...] = ()  # labels blank in every row of the data set
    groups: dict | None = None  # subgroup column -> (N,) group names (None where a row belongs to none)


def _clinical(evalrows, scores, stats, clusters, draws, logits: bool, result: dict) -> dict:
    """Decision curves, error rates by subgroup at the operating thresholds, prevalence-matched gaps, failures."""
    from chexcut.evaluation import clinical

    out = {}
    if stats.decision_curve:
        out["decision_curve"] = clinical.decision_curves(evalrows.y, evalrows.mask, scores, evalrows.labels, clusters,
                                                         draws, logits)
    thresholds = clinical.operating_thresholds(result.get("operating_points"))
    if stats.by and thresholds:
        out["error_rates"], out["error_rate_gaps"] = clinical.error_rates(evalrows, scores, thresholds, stats,
                                                                          clusters, draws.counts)
    if stats.prevalence_matched:
        out["prevalence_matched"] = clinical.prevalence_matched(evalrows, scores, stats, clusters, draws.counts)
    if stats.failures:
        from chexcut.evaluation.failures import failures

        out["failures"] = failures(evalrows, scores, thresholds, stats.failures)
    return out


# ----------------------------------------------------------------------------- aggregation

def aggregate_by_study(evalrows: EvalRows, scores: list[np.ndarray]) -> tuple[EvalRows, list[np.ndarray]]:
    """One row per study: the max prediction over its views (the official CheXpert evaluation);
    a label counts for the study if it counts for any view, positive if positive in any; a subgroup value
    is its first view's."""
    import pandas as pd

    codes, uniq = pd.factorize(pd.Series(evalrows.study, dtype=object))
    k = len(uniq)

    def group_max(a):
        out = np.full((k, a.shape[1]), -np.inf)
        np.maximum.at(out, codes, a)
        return out

    masked_y = np.where(evalrows.mask > 0, evalrows.y, -np.inf)
    y = group_max(masked_y)
    mask = group_max(evalrows.mask.astype(np.float64))
    y = np.where(np.isfinite(y), y, 0.0)
    first = np.zeros(k, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    groups = None if evalrows.groups is None else {c: g[first] for c, g in evalrows.groups.items()}
    agg = EvalRows(paths=[str(u) for u in uniq], labels=evalrows.labels, y=y, mask=mask,
                  patient=evalrows.patient[first], study=np.asarray(uniq, dtype=object),
                  not_annotated=evalrows.not_annotated, groups=groups)
    return agg, [group_max(s) for s in scores]


# ----------------------------------------------------------------------------- the evaluation

def cluster_rows(evalrows: EvalRows, cluster: str) -> np.ndarray:
    """The id each row resamples (and DeLong clusters) by: patient, study, or the row itself."""
    return {"patient": evalrows.patient, "study": evalrows.study, "none": np.arange(len(evalrows.y))}[cluster]


def evaluate(evalrows: EvalRows, scores: np.ndarray, stats: Statistics | None = None, *,
             compare: np.ndarray | None = None, chunk: int | None = None, logits: bool = False,
             readers: dict | None = None, given: dict | None = None, **settings) -> dict:
    """The evaluation JSON (see docs/concepts/evaluation.md for the schema). ``scores`` (and ``compare``) are (N, L): probabilities,
    or with ``logits`` any real numbers (AUROC and AP use only their order; calibration their sigmoid).
    ``stats`` (or its fields as keywords, e.g. ``bootstrap=2000``) says what to compute. ``readers``: name ->
    (N, L) 0/1 reads (nan where none) placed against the model's ROC curve; ``given``: label -> an
    :class:`~chexcut.evaluation.operating.Rule` with a threshold chosen on another set."""
    from chexcut.evaluation import calibration, operating, paired, subgroups

    stats = stats or Statistics(**settings)
    scores = metrics.check_scores(scores, evalrows.y.shape, "scores")
    if compare is not None:
        compare = metrics.check_scores(compare, evalrows.y.shape, "compare")
    bootstrap, ci, seed, cluster = stats.bootstrap, stats.ci, stats.seed, stats.cluster
    y, mask, labels = evalrows.y, evalrows.mask > 0, evalrows.labels
    clusters = metrics.cluster_ids(cluster_rows(evalrows, cluster))
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
    per_label = label_rows(evalrows, mask, auc, reps, ci, extra)
    evaluable = [j for j in range(len(labels)) if np.isfinite(auc[j])]
    comp = competition_columns(labels, auc)
    means = {}
    for key, cols in (("mean_competition", comp), ("mean_all", evaluable)):
        m = mean_of(auc, reps, cols, ci)
        means[key] = None if m is None else m | figure_means(extra, cols, ci)
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
            evalrows, scores, stats, clusters, logits=logits, chunk=chunk, counts=counts)
        result["warnings"] += notes
    rules = operating.rules_of(stats)
    draws = operating.Draws(bootstrap, seed, ci, chunk, counts)
    if rules or readers or given:
        result |= operating.operating_points(y, mask, scores, labels, clusters, rules, readers, given, draws)
    result |= _clinical(evalrows, scores, stats, clusters, draws, logits, result)
    if compare is not None:
        result["compare"] = paired.compare(
            y, mask, labels, paired.Arm(scores, auc, reps), paired.Arm(compare, auc_b, reps_b), comp=comp,
            evaluable=evaluable, stats=stats, cluster_ids=None if cluster == "none" else cluster_rows(evalrows, cluster))
    return result


def calibration_section(labels, points, reps, fitted, ci: float, logits: bool) -> dict:
    """``{"labels": [{label, brier, ece, ece_equal_mass, slope, intercept (each with its CI), bins}], ...}``."""
    from chexcut.evaluation import figures
    from chexcut.evaluation.calibration import N_BINS, reliability, width_bins

    rows = []
    for j, name in enumerate(labels):
        row = {"label": name}
        for fig in figures.in_section("calibration"):  # as declared
            row |= figure_fields((points, reps), j, fig, ci)
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


def evalrows_from_table(table) -> EvalRows:
    return EvalRows(paths=list(table.paths), labels=tuple(table.labels), y=table.targets.astype(np.float64),
                   mask=table.mask, patient=table.patient, study=table.study,
                   not_annotated=tuple(getattr(table, "not_annotated", ())))
