"""Operating points and readers: sensitivity, specificity, PPV, NPV and F1 at chosen thresholds, and binary
reads (radiologists) placed against the model's ROC curve, all with the evaluation's clustered bootstrap.

Conventions. A threshold ``t`` calls a case positive when its score is ``>= t``. The empirical ROC curve has
one point per distinct score (no interpolation) plus the point "nothing positive" (threshold above every
score: sensitivity 0, specificity 1). A rule picks one point:

- ``specificity>=S``: the best sensitivity among the points whose specificity is >= S (the lowest such
  threshold);
- ``sensitivity>=S``: the best specificity among the points whose sensitivity is >= S (the highest such
  threshold);
- ``youden``: the point with the largest sensitivity + specificity - 1 (the highest threshold among ties);
- ``given``: a threshold fixed beforehand (chosen on another set), applied as it is.

Readers. A reader is "below the model's curve" when the model's sensitivity at the reader's specificity is
``>=`` the reader's sensitivity: a reader exactly on the curve counts as below (the model matches it there).

Intervals. A rule chosen on the evaluated set is re-applied in every bootstrap replicate (the interval then
holds the choice's own variability); a given threshold stays fixed. A reader's sensitivity and specificity,
and the model's sensitivity at the reader's specificity (and specificity at the reader's sensitivity), are
computed on the same resamples, so the paired difference model - reader has its percentile CI and a
two-sided bootstrap p. Replicates are cluster counts (patients move together) from
:func:`chexcut.evaluation.metrics.replicate_counts`. Plain numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation import figures, metrics

#: The figures of an operating point, as declared (:mod:`chexcut.evaluation.figures`); computed by :func:`figures_at`.
FIGURES = tuple(f.key for f in figures.in_section("operating_points"))
_TOL = 1e-9  # weights are small integers: counts compare exactly, targets (floats) get this slack


@dataclass(frozen=True)
class Rule:
    """How a threshold is chosen: ``kind`` specificity | sensitivity | youden | given; ``target`` for the first
    two; ``threshold`` for given; ``chosen_on`` says where (None: the evaluated set itself, optimistic)."""

    kind: str
    target: float | None = None
    threshold: float | None = None
    chosen_on: str | None = None

    @property
    def name(self) -> str:
        if self.kind in ("specificity", "sensitivity"):
            return f"{self.kind}>={self.target:g}"
        return self.kind

    @property
    def fixed(self) -> bool:
        return self.kind == "given"


def parse_rule(text: str) -> Rule:
    """``youden``, ``specificity:0.9`` or ``sensitivity:0.8`` (the ``--threshold-rule`` syntax)."""
    text = str(text).strip().lower()
    if text == "youden":
        return Rule("youden")
    kind, _, value = text.partition(":")
    if kind in ("specificity", "sensitivity") and value:
        return Rule(kind, check_target(value, f"--threshold-rule {kind}"))
    raise ChexcutError(f"--threshold-rule is youden, specificity:S or sensitivity:S (S in (0, 1]), not {text!r}")


def rules_of(stats) -> list[Rule]:
    """The rules ``--at-specificity`` / ``--at-sensitivity`` ask for (chosen on the evaluated set)."""
    return ([Rule("specificity", s) for s in stats.at_specificity]
            + [Rule("sensitivity", s) for s in stats.at_sensitivity])


def check_target(value, what: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ChexcutError(f"{what} takes numbers in (0, 1], e.g. 0.9; not {value!r}") from None
    if not 0 < s <= 1:
        raise ChexcutError(f"{what} takes numbers in (0, 1], e.g. 0.9; not {value!r}")
    return s


class Curve:
    """One label's counted rows sorted by score once, giving the ROC counts of any cluster weighting."""

    def __init__(self, y: np.ndarray, s: np.ndarray, clusters: np.ndarray):
        order, self.ends = metrics.descending_ties(s)
        self.thresholds = np.asarray(s, dtype=np.float64)[order][self.ends]  # distinct scores, descending
        self.order = order  # the rows' positions in score order (a reader's reads are put in the same order)
        self.cl = np.asarray(clusters)[order]
        self.pos = np.asarray(y)[order] > 0

    def counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(TP, FP), each (R, U + 1): true and false positives at "nothing positive" and at every distinct
        threshold (descending), for cluster weights (R, K); the last column is then P and N."""
        w = weights[:, self.cl].astype(np.float64)
        tp = np.cumsum(np.where(self.pos, w, 0.0), axis=1)[:, self.ends]
        fp = np.cumsum(np.where(self.pos, 0.0, w), axis=1)[:, self.ends]
        zero = np.zeros((len(w), 1))
        return np.hstack([zero, tp]), np.hstack([zero, fp])

    def threshold(self, k: int) -> float | None:
        """The threshold of point ``k`` (None for point 0: above every score, nothing positive)."""
        return None if k == 0 else float(self.thresholds[k - 1])

    def index(self, rule: Rule, tp: np.ndarray, fp: np.ndarray, target=None) -> np.ndarray:
        """(R,) the point each replicate's rule picks; ``target`` (R,) overrides ``rule.target`` (readers)."""
        p, n = tp[:, -1:], fp[:, -1:]
        goal = rule.target if target is None else np.asarray(target, dtype=np.float64)[:, None]
        if rule.kind == "specificity":  # largest k with FP_k <= (1 - S) N
            return (fp <= (1 - goal) * n + _TOL * np.maximum(n, 1)).sum(1) - 1
        if rule.kind == "sensitivity":  # smallest k with TP_k >= S P
            return (tp < goal * p - _TOL * np.maximum(p, 1)).sum(1)
        if rule.kind == "youden":
            with np.errstate(invalid="ignore", divide="ignore"):
                j = tp / p - fp / n
            return np.argmax(np.nan_to_num(j, nan=-np.inf), axis=1)
        if rule.kind == "given":
            return np.full(len(tp), int(np.sum(self.thresholds >= rule.threshold)))
        raise ValueError(f"unknown rule {rule.kind!r}")


def figures_at(tp: np.ndarray, fp: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, F1 (each (R,)) at the points ``k``; nan where undefined."""
    r = np.arange(len(k))
    t, f = tp[r, k], fp[r, k]
    p, n = tp[:, -1], fp[:, -1]
    fn, tn = p - t, n - f
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": t / p, "specificity": tn / n, "ppv": t / (t + f), "npv": tn / (tn + fn),
                "f1": 2 * t / (2 * t + f + fn)}


def _interval(point: float, reps: list[np.ndarray] | None, ci: float, key: str) -> dict:
    out = {key: metrics.finite_or_none(point), f"{key}_ci_low": None, f"{key}_ci_high": None}
    if reps and np.isfinite(point):
        r = np.concatenate(reps)
        iv = metrics.percentile_interval(point, r, ci)  # the one usable-replicate rule
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = metrics.finite_or_none(iv.low), metrics.finite_or_none(iv.high)
    return out


def _p(reps: list[np.ndarray] | None) -> float | None:
    if not reps:
        return None
    r = np.concatenate(reps)
    return metrics.finite_or_none(metrics.bootstrap_p(r)) if np.isfinite(r).any() else None


@dataclass
class _Job:
    """One label's work: its curve and what to compute on it (operating points, readers)."""

    j: int
    curve: Curve
    rows: np.ndarray
    rules: list[Rule]
    readers: list[tuple[str, np.ndarray]]  # (name, 0/1 reads of the curve's rows)


def _reader_counts(job: _Job, read: np.ndarray, weights: np.ndarray):
    """A reader's (TP, FP, P, N) per replicate (R,), from per-cluster sums of its reads."""
    cl, y = job.curve.cl, job.curve.pos

    def per_cluster(m):
        return weights @ np.bincount(cl, weights=m.astype(np.float64), minlength=weights.shape[1])

    return per_cluster(y & read), per_cluster(~y & read), per_cluster(y), per_cluster(~y)


def _reader_figures(job: _Job, read: np.ndarray, weights: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> dict:
    tp_r, fp_r, p, n = _reader_counts(job, read, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp_r / p, (n - fp_r) / n
    at_spec = figures_at(tp, fp, job.curve.index(Rule("specificity"), tp, fp, target=spec))
    at_sens = figures_at(tp, fp, job.curve.index(Rule("sensitivity"), tp, fp, target=sens))
    return {"sensitivity": sens, "specificity": spec,
            "model_sensitivity_at_reader_specificity": at_spec["sensitivity"],
            "model_specificity_at_reader_sensitivity": at_sens["specificity"]}


@dataclass(frozen=True)
class Draws:
    """The bootstrap an operating-point analysis shares with the evaluation: replicates, seed, CI level, and the
    evaluation's kept cluster counts (None: drawn again from the seed, the same resamples)."""

    bootstrap: int = 0
    seed: int = 0
    ci: float = 0.95
    chunk: int | None = None
    counts: list | None = None


def operating_points(y: np.ndarray, mask: np.ndarray, scores: np.ndarray, labels, clusters: np.ndarray,
                     rules: list[Rule], readers: dict[str, np.ndarray] | None = None,
                     given: dict[str, Rule] | None = None, draws: Draws = Draws()) -> dict:
    """``{"operating_points": [...], "readers": [...], "readers_summary": [...]}`` (see docs/guides/operating-points-readers.md).

    ``y``, ``mask``, ``scores``: (N, L); ``clusters``: (N,) dense ids; ``rules``: chosen on this set, for every
    label; ``given``: label -> a fixed-threshold rule chosen elsewhere; ``readers``: name -> (N, L) 0/1 reads
    (nan where a reader gave none); ``draws``: the bootstrap (:class:`Draws`)."""
    readers = readers or {}
    given = given or {}
    mask = np.asarray(mask) > 0
    jobs = []
    for j, name in enumerate(labels):
        wanted = list(rules) + ([given[name]] if name in given else [])
        reads = [(r, m[:, j]) for r, m in readers.items() if np.isfinite(m[:, j]).any()]
        rows = np.flatnonzero(mask[:, j])
        read_rows = np.flatnonzero(mask[:, j] & np.all([np.isfinite(m) for _, m in reads], axis=0)) if reads else rows
        if wanted and (not reads or not np.array_equal(rows, read_rows)):
            jobs.append(_Job(j, Curve(y[rows, j], scores[rows, j], clusters[rows]), rows, wanted, []))
            wanted = []
        if reads:
            curve = Curve(y[read_rows, j], scores[read_rows, j], clusters[read_rows])
            jobs.append(_Job(j, curve, read_rows, wanted, [(r, m[read_rows][curve.order] > 0.5) for r, m in reads]))
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 1
    point_w = np.ones((1, n_clusters), dtype=np.float32)
    reps: dict = {}
    if draws.bootstrap:
        chunks = draws.counts if draws.counts is not None else metrics.replicate_counts(
            len(y), clusters, draws.bootstrap, draws.seed, draws.chunk)
        for c in chunks:
            for job in jobs:
                _accumulate(job, c, reps)
    return _results(jobs, labels, point_w, reps, draws.ci)


def _accumulate(job: _Job, weights: np.ndarray, reps: dict) -> None:
    tp, fp = job.curve.counts(weights)
    for rule in job.rules:
        for key, v in figures_at(tp, fp, job.curve.index(rule, tp, fp)).items():
            reps.setdefault((job.j, "rule:" + rule.name, key), []).append(v)
    for name, read in job.readers:
        for key, v in _reader_figures(job, read, weights, tp, fp).items():
            reps.setdefault((job.j, "reader:" + name, key), []).append(v)


def _provenance(rule: Rule) -> dict:
    """Where a threshold was chosen; one chosen on the evaluated set itself is optimistic."""
    return {"chosen_on": rule.chosen_on or "the evaluated set itself", "optimistic": rule.chosen_on is None}


def _results(jobs: list[_Job], labels, point_w, reps: dict, ci: float) -> dict:
    points, readers, summary = [], [], []
    for job in jobs:
        label = labels[job.j]
        tp, fp = job.curve.counts(point_w)
        n_pos, n_neg = int(tp[0, -1]), int(fp[0, -1])
        if n_pos == 0 or n_neg == 0:
            why = f"only {'positives' if n_pos else 'negatives'} among the counted rows"
            points += [{"label": label, "rule": rule.name, "not_evaluable": why, **_provenance(rule)}
                       for rule in job.rules]
            readers += [{"reader": name, "label": label, "not_evaluable": why} for name, _ in job.readers]
            continue
        for rule in job.rules:
            k = job.curve.index(rule, tp, fp)
            fig = figures_at(tp, fp, k)
            row = {"label": label, "rule": rule.name, "target": rule.target,
                   "threshold": metrics.finite_or_none(rule.threshold) if rule.fixed else job.curve.threshold(int(k[0])),
                   "n_pos": n_pos, "n_neg": n_neg}
            for key in FIGURES:
                row |= _interval(fig[key][0], reps.get((job.j, "rule:" + rule.name, key)), ci, key)
            row |= _provenance(rule)
            if rule.threshold is None and not rule.fixed and int(k[0]) == 0:
                row["note"] = "no threshold reaches the target below every score: nothing is called positive"
            points.append(row)
        below = []
        for name, read in job.readers:
            fig = _reader_figures(job, read, point_w, tp, fp)
            row = {"reader": name, "label": label, "n_pos": n_pos, "n_neg": n_neg}
            for key in ("sensitivity", "specificity"):
                row |= _interval(fig[key][0], reps.get((job.j, "reader:" + name, key)), ci, key)
            for model_key, reader_key, short in (("model_sensitivity_at_reader_specificity", "sensitivity", "sensitivity"),
                                                 ("model_specificity_at_reader_sensitivity", "specificity", "specificity")):
                row |= _interval(fig[model_key][0], reps.get((job.j, "reader:" + name, model_key)), ci, model_key)
                delta_reps = None
                key_m, key_r = (job.j, "reader:" + name, model_key), (job.j, "reader:" + name, reader_key)
                if key_m in reps:
                    delta_reps = [a - b for a, b in zip(reps[key_m], reps[key_r])]
                d = _interval(fig[model_key][0] - fig[reader_key][0], delta_reps, ci, f"delta_{short}")
                row |= d | {f"p_{short}": _p(delta_reps)}
            row["below_model_curve"] = bool(fig["model_sensitivity_at_reader_specificity"][0] >= fig["sensitivity"][0])
            below.append(row)
        readers += below
        if below:
            sens = float(np.mean([r["sensitivity"] for r in below]))
            spec = float(np.mean([r["specificity"] for r in below]))
            at = figures_at(tp, fp, job.curve.index(Rule("specificity", spec), tp, fp))["sensitivity"][0]
            summary.append({"label": label, "below_model_curve": sum(r["below_model_curve"] for r in below),
                            "of": len(below), "mean_sensitivity": sens, "mean_specificity": spec,
                            "model_sensitivity_at_mean_specificity": metrics.finite_or_none(at)})
    return {"operating_points": points, "readers": readers, "readers_summary": summary}
