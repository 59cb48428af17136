"""Performance by subgroup (``--by Sex,AP/PA``, ``--age-bins``) and the gaps between groups, with the
clustered bootstrap of the whole set.

Every group is evaluated on the *same* resamples of clusters as the whole set (the draws depend only on the
seed and the clusters, so a group is the whole set's rows with the others masked out): a patient drawn twice
counts twice in every group it has rows in. A gap between two groups of one column is then the difference of
their replicate AUROCs, resample by resample, which keeps the correlation of groups that share patients
(studies of one patient at different ages, or with AP and PA views) in its CI and in its two-sided p.
No torch here.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation import metrics


def age_intervals(values, edges: tuple[float, ...]) -> np.ndarray:
    """Ages as the intervals ``[a, b)`` of ``edges``; None for a blank, non-numeric or out-of-range age."""
    import pandas as pd

    ages = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges), ages, side="right") - 1
    names = [f"[{_edge(a)}, {_edge(b)})" for a, b in zip(edges, edges[1:])]
    out = np.full(len(ages), None, dtype=object)
    ok = np.isfinite(ages) & (idx >= 0) & (idx < len(names))
    out[ok] = [names[i] for i in idx[ok]]
    return out


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def group_order(column: str, values: np.ndarray, age_bins) -> list[str]:
    present = {v for v in values if v is not None}
    if column == "Age" and age_bins:
        names = [f"[{_edge(a)}, {_edge(b)})" for a, b in zip(age_bins, age_bins[1:])]
        return [n for n in names if n in present]
    return sorted(present, key=str)


def _group_result(evalrows, scores, stats, clusters, rows: np.ndarray, logits: bool, chunk, counts=None):
    """One group: its label objects and both means (the whole set's resamples), and its replicate AUROCs."""
    from chexcut.evaluation.calibration import extra_figures
    from chexcut.evaluation.summary import (
        competition_columns,
        figure_means,
        label_aurocs,
        label_rows,
        mean_of,
    )

    mask = (evalrows.mask > 0) & rows[:, None]
    auc = label_aurocs(evalrows.y, mask, scores)
    reps = None
    if stats.bootstrap:
        reps = metrics.bootstrap_aurocs(evalrows.y, [scores], mask, clusters, stats.bootstrap, seed=stats.seed,
                                        chunk=chunk, counts=counts)[0]
    points, ext, _ = extra_figures(evalrows.y, mask, scores, clusters, stats.bootstrap, stats.seed, False,
                                   logits=logits, chunk=chunk, counts=counts)
    labels = label_rows(evalrows, mask, auc, reps, stats.ci, (points, ext))
    comp = competition_columns(evalrows.labels, auc)
    evaluable = [j for j in range(len(auc)) if np.isfinite(auc[j])]
    means = {}
    for key, cols in (("mean_competition", comp), ("mean_all", evaluable)):
        m = mean_of(auc, reps, cols, stats.ci)
        means[key] = None if m is None else m | figure_means((points, ext), cols, stats.ci)
    return labels, means, auc, reps


def paired_interval(delta: float, reps, ci: float) -> dict:
    """``{"ci_low", "ci_high", "p"}`` of a difference between two groups from its replicate differences (paired: the
    same resamples): a percentile interval and a two-sided bootstrap p, None when withheld (the usable-replicate
    rule) or without replicates. Every subgroup gap (AUROC, error rates, prevalence-matched AP) reads it here."""
    out = {"ci_low": None, "ci_high": None, "p": None}
    if reps is not None:
        iv = metrics.percentile_interval(delta, reps, ci)  # withheld on the replicates the AUROC withholds it
        if np.isfinite(iv.low):
            out = {"ci_low": float(iv.low), "ci_high": float(iv.high), "p": metrics.bootstrap_p(reps)}
    return out


def _gap(a_auc, a_reps, b_auc, b_reps, cols: list[int], ci: float) -> dict:
    delta = float(np.mean(a_auc[cols]) - np.mean(b_auc[cols]))
    reps = None if a_reps is None else a_reps[:, cols].mean(1) - b_reps[:, cols].mean(1)
    return {"delta": delta, **paired_interval(delta, reps, ci)}


def evaluate_subgroups(evalrows, scores, stats, clusters, logits: bool = False, chunk=None, counts=None):
    """``(subgroups, subgroup_gaps, notes)`` for every column of ``stats.by`` (see docs/concepts/evaluation.md for the JSON)."""
    from chexcut.labels import COMPETITION_LABELS

    subgroups, gaps, notes = [], [], []
    for column in stats.by:
        values = (evalrows.groups or {}).get(column)
        if values is None:
            raise ChexcutError(f"--by {column}: no such column among the subgroup sources")
        left_out = int(sum(v is None for v in values))
        if left_out:
            notes.append(f"--by {column}: {left_out} of {len(values)} rows have no {column} value and are in none of "
                         f"its groups")
        order = group_order(column, values, stats.age_bins if column == "Age" else None)
        if not order:
            raise ChexcutError(f"--by {column}: no row has a {column} value")
        fits = {}
        for g in order:
            rows = np.array([v == g for v in values], dtype=bool)
            labels, means, auc, reps = _group_result(evalrows, scores, stats, clusters, rows, logits, chunk, counts)
            fits[g] = (auc, reps)
            subgroups.append({"by": column, "group": g, "n": int(rows.sum()), "labels": labels, **means})
            small = [r["label"] for r in labels if r.get("warning")]
            if small:
                notes.append(f"{column}={g} ({int(rows.sum())} rows): {len(small)} labels with few cases or "
                             f"unreliable intervals ({', '.join(small[:4])}{', ...' if len(small) > 4 else ''})")
        for a, b in combinations(order, 2):
            (aa, ra), (ab, rb) = fits[a], fits[b]
            both = [j for j in range(len(evalrows.labels)) if np.isfinite(aa[j]) and np.isfinite(ab[j])]
            for j in both:
                gaps.append({"by": column, "groups": [a, b], "label": evalrows.labels[j],
                             **_gap(aa, ra, ab, rb, [j], stats.ci)})
            comp = [j for j in both if evalrows.labels[j] in COMPETITION_LABELS]
            if comp:
                gaps.append({"by": column, "groups": [a, b], "label": "mean_competition", "labels": len(comp),
                             **_gap(aa, ra, ab, rb, comp, stats.ci)})
        family = [g for g in gaps if g["by"] == column]  # Holm's family: every gap of this --by column
        for g, adjusted in zip(family, metrics.holm([g["p"] for g in family])):
            g["p_holm"] = adjusted
    return subgroups, gaps, notes
