"""Clinical utility and error-rate audits on the evaluation's clustered bootstrap.

Decision curves (Vickers & Elkin, Med Decis Making 2006): at a threshold probability ``t`` a case is treated when
its predicted probability is ``>= t``; the net benefit is ``TP/N - FP/N * t / (1 - t)`` (the ``dcurves``
package's definition, tested equal to it), treat-all's is ``prevalence - (1 - prevalence) * t / (1 - t)`` and
treat-none's 0. Scores given as logits go through a sigmoid first (net benefit needs probabilities).

Error rates by subgroup at the operating threshold (underdiagnosis audits, Seyyed-Kalantari et al., Nat Med 2021):
each group's false-negative rate ``FN / positives`` and false-positive rate ``FP / negatives`` at the label's
operating threshold, and the gaps between groups with paired bootstrap CIs, two-sided p and Holm's adjustment
over each ``--by`` column's gaps.

Prevalence matching (after Glocker et al., 2023): a group's positives and negatives are reweighted so that its
prevalence equals the whole set's before its figures are compared. AUROC does not change under such class-wise
reweighting (it compares positives with negatives only), so a prevalence-matched comparison changes the
prevalence-dependent figures: here average precision (and, at a threshold, PPV). A gap in AP that only the
groups' prevalences created disappears after matching; one that remains is the model's.

Every interval uses the evaluation's resamples (``counts``: cluster draw counts, patients move together) and the
one usable-replicate rule (:func:`chexcut.evaluation.metrics.percentile_interval`). Plain numpy, no torch.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from chexcut.evaluation import metrics

THRESHOLDS = tuple(round(t / 100, 2) for t in range(1, 100))  # 0.01 .. 0.99, dcurves' grid without 0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def net_benefit(y: np.ndarray, p: np.ndarray, w: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Net benefit of the model and of treat-all at ``thresholds``, for each row of weights ``w`` (R, n):
    ((R, T), (R, T)). ``y`` (n,) 0/1, ``p`` (n,) probabilities."""
    t = np.asarray(thresholds, dtype=np.float64)
    order, _ = metrics.descending_ties(p)
    ps, yo = p[order], y[order].astype(bool)
    wo = w[:, order].astype(np.float64)
    ctp = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wo * yo, axis=1)], axis=1)
    cfp = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wo * ~yo, axis=1)], axis=1)
    k = np.searchsorted(-ps, -t, side="right")  # how many rows have p >= t
    n = wo.sum(1, keepdims=True)
    odds = t / (1 - t)
    with np.errstate(invalid="ignore", divide="ignore"):
        model = ctp[:, k] / n - cfp[:, k] / n * odds
        prev = ctp[:, -1:] / n
        treat_all = prev - (1 - prev) * odds
    return model, treat_all


def _chunks(n: int, clusters, bootstrap: int, seed: int, counts=None, chunk=None) -> list:
    """The evaluation's kept cluster counts, or the same resamples drawn again from the seed (none without a
    bootstrap)."""
    if counts is not None:
        return list(counts)
    return list(metrics.replicate_counts(n, clusters, bootstrap, seed, chunk)) if bootstrap else []


def _difference(a: float, b: float, reps_a, reps_b, ci: float) -> dict:
    """Group a minus group b with its paired interval (the subgroup gaps' rule); nothing where a side is undefined."""
    from chexcut.evaluation.subgroups import paired_interval

    delta = a - b
    if not np.isfinite(delta):
        return {"delta": None, "ci_low": None, "ci_high": None, "p": None}
    return {"delta": float(delta), **paired_interval(delta, None if reps_a is None else reps_a - reps_b, ci)}


def _rows_weights(counts: np.ndarray, clusters: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return counts[:, clusters[rows]]


def _interval_lists(point: np.ndarray, reps: list[np.ndarray] | None, ci: float) -> tuple[list, list]:
    lo, hi = [], []
    stacked = np.concatenate(reps) if reps else None
    for i, est in enumerate(point):
        if stacked is None:
            lo.append(None), hi.append(None)
            continue
        iv = metrics.percentile_interval(est, stacked[:, i], ci)
        lo.append(float(iv.low) if np.isfinite(iv.low) else None)
        hi.append(float(iv.high) if np.isfinite(iv.high) else None)
    return lo, hi


def decision_curves(y, mask, scores, labels, clusters, draws, logits: bool = False, thresholds=THRESHOLDS) -> dict:
    """The ``decision_curve`` JSON block: per label, the model's and treat-all's net benefit at each threshold with
    percentile CIs, and the thresholds where the model's net benefit beats both treat-all and treat-none."""
    probs = _sigmoid(scores) if logits else np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask) > 0
    chunks = _chunks(len(y), clusters, draws.bootstrap, draws.seed, draws.counts, draws.chunk)
    out = []
    for j, name in enumerate(labels):
        rows = np.flatnonzero(mask[:, j])
        yj, pj = y[rows, j], probs[rows, j]
        if not len(rows) or yj.min() == yj.max():
            out.append({"label": name, "not_evaluable": "no counted rows" if not len(rows) else "one class only"})
            continue
        model, treat_all = (a[0] for a in net_benefit(yj, pj, np.ones((1, len(rows))), thresholds))
        reps = [net_benefit(yj, pj, _rows_weights(c, clusters, rows), thresholds) for c in chunks]
        m_lo, m_hi = _interval_lists(model, [r[0] for r in reps] if reps else None, draws.ci)
        a_lo, a_hi = _interval_lists(treat_all, [r[1] for r in reps] if reps else None, draws.ci)
        better = [t for t, m, a in zip(thresholds, model, treat_all) if m > max(a, 0.0)]
        out.append({"label": name, "prevalence": float(yj.mean()), "model": model.tolist(), "model_ci_low": m_lo,
                    "model_ci_high": m_hi, "treat_all": treat_all.tolist(), "treat_all_ci_low": a_lo,
                    "treat_all_ci_high": a_hi,
                    "beneficial_from": min(better) if better else None, "beneficial_to": max(better) if better else None})
    return {"thresholds": list(thresholds), "treat_none": 0.0, "probabilities": "sigmoid of the logits" if logits
            else "the scores as given", "labels": out}


# ----------------------------------------------------------------------------- error rates by subgroup

def _rates(y: np.ndarray, called: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-negative and false-positive rates for each row of weights ``w`` (R, n)."""
    pos, neg = w @ y.astype(np.float64), w @ (1.0 - y)
    with np.errstate(invalid="ignore", divide="ignore"):
        fnr = (w @ (y * ~called).astype(np.float64)) / pos
        fpr = (w @ ((1 - y) * called).astype(np.float64)) / neg
    return fnr, fpr


def _figure(point: float, reps: np.ndarray | None, ci: float, key: str) -> dict:
    out = {key: None if not np.isfinite(point) else float(point), f"{key}_ci_low": None, f"{key}_ci_high": None}
    if reps is not None and np.isfinite(point):
        iv = metrics.percentile_interval(point, reps, ci)
        if np.isfinite(iv.low):
            out |= {f"{key}_ci_low": float(iv.low), f"{key}_ci_high": float(iv.high)}
    return out


def error_rates(evalrows, scores, thresholds: dict, stats, clusters, counts=None) -> tuple[list, list]:
    """``(error_rates, error_rate_gaps)``: per ``--by`` column, group and label with an operating threshold
    (``thresholds``: label -> (threshold, rule name)), FNR and FPR with CIs; and every pair of groups' differences
    (a - b) with CI, two-sided p and Holm's p over the column's gaps (FNR and FPR of every label)."""
    chunks = _chunks(len(evalrows.y), clusters, stats.bootstrap, stats.seed, counts)
    rates, gaps = [], []
    mask = evalrows.mask > 0
    from chexcut.evaluation.subgroups import group_order

    for column in stats.by:
        values = (evalrows.groups or {}).get(column)
        order = group_order(column, values, stats.age_bins if column == "Age" else None)
        fits: dict = {}
        for g in order:
            in_group = np.array([v == g for v in values], dtype=bool)
            for j, name in enumerate(evalrows.labels):
                if name not in thresholds:
                    continue
                t, rule = thresholds[name]
                rows = np.flatnonzero(mask[:, j] & in_group)
                y, called = evalrows.y[rows, j], scores[rows, j] >= t
                fnr, fpr = (a[0] for a in _rates(y, called, np.ones((1, len(rows)))))
                reps = [_rates(y, called, _rows_weights(c, clusters, rows)) for c in chunks]
                rf = np.concatenate([r[0] for r in reps]) if reps else None
                rp = np.concatenate([r[1] for r in reps]) if reps else None
                fits[(g, name)] = (fnr, fpr, rf, rp)
                rates.append({"by": column, "group": g, "label": name, "threshold": float(t), "rule": rule,
                              "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()),
                              **_figure(fnr, rf, stats.ci, "fnr"), **_figure(fpr, rp, stats.ci, "fpr")})
        family = []
        for a, b in combinations(order, 2):
            for name in evalrows.labels:
                if (a, name) not in fits or (b, name) not in fits:
                    continue
                fa, fb = fits[(a, name)], fits[(b, name)]
                for k, rate in ((0, "fnr"), (1, "fpr")):
                    family.append({"by": column, "groups": [a, b], "label": name, "rate": rate,
                                   **_difference(fa[k], fb[k], fa[k + 2], fb[k + 2], stats.ci)})
        for g, adjusted in zip(family, metrics.holm([g["p"] for g in family])):
            g["p_holm"] = adjusted
        gaps += family
    return rates, gaps


def operating_thresholds(points: list[dict]) -> dict:
    """label -> (threshold, rule) from the operating points: a threshold chosen elsewhere (``given``) first, else
    the first rule asked for."""
    out = {}
    for p in sorted(points or [], key=lambda p: p.get("rule") != "given"):
        if p.get("threshold") is not None and p["label"] not in out:
            out[p["label"]] = (float(p["threshold"]), p["rule"])
    return out


# ----------------------------------------------------------------------------- prevalence matching

def weighted_ap(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's definition, with sample weights) for each row of weights ``w`` (R, n)."""
    order, ends = metrics.descending_ties(s)
    yo, wo = y[order].astype(np.float64), w[:, order].astype(np.float64)
    tp = np.cumsum(wo * yo, axis=1)[:, ends]
    seen = np.cumsum(wo, axis=1)[:, ends]
    total = tp[:, -1] if tp.shape[1] else np.zeros(len(w))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / seen, 0.0)
        out = (np.diff(tp, axis=1, prepend=0.0) * precision).sum(1) / total
    out[total <= 0] = np.nan
    return out


def _matched(y: np.ndarray, w: np.ndarray, target: float) -> np.ndarray:
    """Weights ``w`` (R, n) with positives and negatives rescaled so each row's weighted prevalence is ``target``."""
    pos = (w * y).sum(1, keepdims=True)
    neg = (w * (1 - y)).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(y > 0, target * (pos + neg) / pos, (1 - target) * (pos + neg) / neg)
    return w * np.nan_to_num(scale)


def prevalence_matched(evalrows, scores, stats, clusters, counts=None) -> list[dict]:
    """Per ``--by`` column and label: each group's AP as it is and after matching its prevalence to the whole set's,
    with CIs, and the gap between every pair of groups before and after (a - b, CI, p)."""
    chunks = _chunks(len(evalrows.y), clusters, stats.bootstrap, stats.seed, counts)
    from chexcut.evaluation.subgroups import group_order

    out = []
    mask = evalrows.mask > 0
    for column in stats.by:
        values = (evalrows.groups or {}).get(column)
        order = group_order(column, values, stats.age_bins if column == "Age" else None)
        for j, name in enumerate(evalrows.labels):
            every = np.flatnonzero(mask[:, j])
            if not len(every) or evalrows.y[every, j].min() == evalrows.y[every, j].max():
                continue
            target = float(evalrows.y[every, j].mean())
            fits = {}
            for g in order:
                rows = np.flatnonzero(mask[:, j] & np.array([v == g for v in values], dtype=bool))
                y, s = evalrows.y[rows, j], scores[rows, j]
                one = np.ones((1, len(rows)))
                raw, matched = weighted_ap(y, s, one)[0], weighted_ap(y, s, _matched(y, one, target))[0]
                reps = [(weighted_ap(y, s, w), weighted_ap(y, s, _matched(y, w, target)))
                        for w in (_rows_weights(c, clusters, rows) for c in chunks)]
                fits[g] = (raw, matched, np.concatenate([r[0] for r in reps]) if reps else None,
                           np.concatenate([r[1] for r in reps]) if reps else None, float(y.mean()) if len(y) else None)
            for a, b in combinations(order, 2):
                row = {"by": column, "groups": [a, b], "label": name, "target_prevalence": target,
                       "prevalence": [fits[a][4], fits[b][4]]}
                for k, key in ((0, "ap_gap"), (1, "ap_gap_matched")):
                    row[key] = _difference(fits[a][k], fits[b][k], fits[a][k + 2], fits[b][k + 2], stats.ci)
                out.append(row)
    return out
