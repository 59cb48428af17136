"""Failure analysis (CLAIM 2024 item 39): per label, the most confident errors at the operating threshold.

A false positive is a negative whose score is ``>=`` the label's threshold, listed highest score first; a false
negative a positive below it, lowest score first. The threshold is the one the evaluation's operating points
used (a threshold chosen elsewhere first, else the first ``--at-*`` rule); without any, the Youden point of this
set, said so (``rule: "youden (this set)"``). Each case carries its key (path or study), score and the values of
its subgroup columns. No torch here.
"""

from __future__ import annotations

import numpy as np

from chexcut.evaluation import metrics


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float | None:
    """The score at the point of largest sensitivity + specificity - 1 (the highest threshold among ties)."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if not pos or not neg:
        return None
    order, ends = metrics.descending_ties(s)
    tp = np.cumsum(y[order])[ends]
    fp = np.cumsum(1 - y[order])[ends]
    j = tp / pos - fp / neg
    return float(s[order][ends][int(np.argmax(j))])


def failures(evalrows, scores: np.ndarray, thresholds: dict, n: int) -> list[dict]:
    """The ``failures`` JSON block: per label, ``false_positives`` and ``false_negatives`` (``n`` each at most)."""
    out = []
    mask = evalrows.mask > 0
    groups = evalrows.groups or {}
    for j, name in enumerate(evalrows.labels):
        rows = np.flatnonzero(mask[:, j])
        y, s = evalrows.y[rows, j], scores[rows, j]
        if name in thresholds:
            t, rule = thresholds[name]
        else:
            t, rule = youden_threshold(y, s), "youden (this set)"
        if t is None:
            out.append({"label": name, "not_evaluable": "one class only"})
            continue
        fp = [i for i in np.argsort(-s, kind="mergesort") if y[i] == 0 and s[i] >= t][:n]
        fn = [i for i in np.argsort(s, kind="mergesort") if y[i] == 1 and s[i] < t][:n]
        out.append({"label": name, "threshold": float(t), "rule": rule,
                    "n_false_positives": int(((s >= t) & (y == 0)).sum()),
                    "n_false_negatives": int(((s < t) & (y == 1)).sum()),
                    "false_positives": [_case(evalrows, groups, rows[i], s[i], y[i]) for i in fp],
                    "false_negatives": [_case(evalrows, groups, rows[i], s[i], y[i]) for i in fn]})
    return out


def _case(evalrows, groups: dict, row: int, score: float, truth: float) -> dict:
    return {"key": evalrows.paths[row], "score": float(score), "truth": int(truth),
            **{c: v[row] for c, v in groups.items()}}
