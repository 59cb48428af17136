"""Every per-label figure of an evaluation, declared once (see docs/guides/adding-a-figure.md).

A :class:`Figure` says what a figure is called in the evaluation JSON and where it sits there, how it is computed
from one label's counted rows (and, when resampled, from each bootstrap replicate's cluster draw counts), and
where it shows: the per-label CSV (``evaluate --csv-out``), a terminal table, MLflow, the study report.
:data:`PER_LABEL` lists them in the order they sit in the JSON; the consumers list their figures from it.

A figure's ``compute(label, counts)`` gets the label's counted rows prepared once
(:class:`chexcut.evaluation.calibration.LabelCalibration`: ``label.y`` 0/1, ``label.p`` the probabilities,
``label.weights(counts)`` the (R, n) row weights of the replicates whose cluster draw counts are ``counts``,
(R, K)) and returns the (R,) values, nan where undefined; the whole set's value is the same at weight 1 (or
``point(label)``). A resampled figure's CI is the percentile interval of its replicates on the evaluation's
resamples (the one usable-replicate rule, :func:`chexcut.evaluation.metrics.percentile_interval`).

AUROC and the operating-point figures are declared here too (names, formats, where they show) but keep their
own machinery (``compute`` None): AUROC its bootstrap, DeLong and paired tests (:mod:`chexcut.evaluation.metrics`),
the operating points the ROC counts at a rule's threshold (:func:`chexcut.evaluation.operating.figures_at`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Where a figure sits in the evaluation JSON: ``labels``: ``result["labels"][j]`` (and each subgroup's labels);
#: ``calibration``: ``result["calibration"]["labels"][j]`` (computed with ``--calibration`` only);
#: ``operating_points``: each ``result["operating_points"]`` row (one per label and rule).
SECTIONS = ("labels", "calibration", "operating_points")
INTERVALS = ("percentile",)


@dataclass(frozen=True)
class Figure:
    """One per-label figure: ``key`` in the JSON (with ``key_ci_low``/``key_ci_high``, or ``ci``'s names, when
    resampled), ``name`` its column header and ``fmt`` its number format (a format spec) in tables."""

    key: str
    name: str
    fmt: str = ".3f"
    compute: Callable | None = None  # (label, counts (R, K)) -> (R,); None: computed by its own machinery
    point: Callable | None = None  # (label) -> the whole set's value; None: compute at weight 1
    resampled: bool = True  # a percentile CI on the evaluation's bootstrap
    interval: str = "percentile"
    section: str = "labels"  # one of SECTIONS
    mean: bool = False  # also averaged in mean_competition / mean_all (and each subgroup's), with its CI
    ci: tuple[str, str] | None = None  # the CI's JSON keys when not key_ci_low / key_ci_high
    table: str | None = "figures"  # the terminal table it is a column of (None: in none)
    table_ci: bool = True  # that table shows its CI beside it
    rank: int = 0  # its column's place in that table, before the registry order
    none: str | None = None  # how a null shows ("separated"); None: the place's own ("-", "n/a")
    csv: bool = True  # columns of the per-label CSV (the figure and its CI)
    tracked: bool = True  # logged to MLflow per label as eval_KEY/LABEL
    report_mean: bool = True  # the study report: its mean over the 5 competition labels, per run
    report_labels: bool = True  # the study report's results: label_KEY, per label [value, CI low, CI high]
    report_name: str | None = None  # its header in the report (None: name)
    report_fmt: str | None = None  # its number format in the report (None: fmt)

    def __post_init__(self):
        if self.section not in SECTIONS:
            raise ValueError(f"{self.key}: section is one of {SECTIONS}, not {self.section!r}")
        if self.interval not in INTERVALS:
            raise ValueError(f"{self.key}: interval is one of {INTERVALS}, not {self.interval!r}")

    @property
    def ci_keys(self) -> tuple[str, str]:
        return self.ci or (f"{self.key}_ci_low", f"{self.key}_ci_high")

    @property
    def keys(self) -> tuple[str, ...]:
        """Its keys in a JSON row: the figure, then its CI when resampled."""
        return (self.key, *self.ci_keys) if self.resampled else (self.key,)

    def text(self, value, fmt: str | None = None, none: str = "-") -> str:
        """``value`` as a table shows it."""
        if value is None:
            return self.none if self.none is not None else none
        return format(value, fmt or self.fmt)

    def whole_set(self, label) -> float:
        """The whole set's value on ``label``'s counted rows."""
        if self.point is not None:
            return float(self.point(label))
        return float(self.compute(label, np.ones((1, label.k)))[0])


def _fitted(label, i: int) -> float:
    """The whole set's recalibration fit (intercept 0, slope 1): nan where positives and negatives are separated."""
    return float(label.fit[0, i]) if label.fit is not None else float("nan")


def _recalibrated(i: int) -> Callable:
    """The recalibration's intercept (0) or slope (1) per replicate (one fit per replicate serves both)."""
    return lambda lab, counts: lab.recalibration(counts)[i]


AUROC = Figure("auroc", "AUROC", ".4f", ci=("ci_low", "ci_high"), mean=True, table="auroc", report_mean=False)
PR, CAL, OPS = "precision-recall", "calibration", "operating"
_OP = dict(section="operating_points", table=OPS, table_ci=False, csv=False, tracked=False, report_mean=False,
           report_labels=False)

#: Every per-label figure, in the order it sits in the evaluation JSON.
PER_LABEL: tuple[Figure, ...] = (
    AUROC,
    Figure("average_precision", "AP", compute=lambda lab, c: lab.average_precision(c), mean=True, table=PR,
           csv=False, tracked=False, report_mean=False, report_labels=False),
    Figure("brier", "Brier", compute=lambda lab, c: lab.brier(c), section="calibration", table=CAL, table_ci=False,
           csv=False, tracked=False, report_labels=False, report_fmt=".4f"),
    Figure("ece", "ECE", compute=lambda lab, c: lab.ece(c, lab.bins_width), section="calibration", table=CAL,
           csv=False, tracked=False, report_labels=False, report_fmt=".4f"),
    Figure("ece_equal_mass", "ECE (equal mass)", compute=lambda lab, c: lab.ece(c, lab.bins_mass),
           section="calibration", table=None, csv=False, tracked=False, report_mean=False, report_labels=False),
    Figure("intercept", "recal. intercept a", ".2f", compute=_recalibrated(0), point=lambda lab: _fitted(lab, 0),
           section="calibration", table=CAL, table_ci=False, rank=1, none="separated", csv=False, tracked=False,
           report_mean=False, report_labels=False),
    Figure("slope", "recal. slope b", ".2f", compute=_recalibrated(1), point=lambda lab: _fitted(lab, 1),
           section="calibration", table=CAL, table_ci=False, none="separated", csv=False, tracked=False,
           report_labels=False, report_name="slope"),
    Figure("sensitivity", "sens", **_OP),
    Figure("specificity", "spec", **_OP),
    Figure("ppv", "PPV", **_OP),
    Figure("npv", "NPV", **_OP),
    Figure("f1", "F1", **_OP),
)


def registry() -> tuple[Figure, ...]:
    """The figures in force (:data:`PER_LABEL`, read at call time: a test may add one)."""
    return PER_LABEL


def in_section(section: str) -> list[Figure]:
    return [f for f in registry() if f.section == section]


def computed(calibration: bool) -> list[Figure]:
    """The figures computed from a label's counted rows (calibration's only with ``calibration``)."""
    return [f for f in registry() if f.compute is not None
            and (f.section == "labels" or (f.section == "calibration" and calibration))]


def in_table(table: str) -> list[Figure]:
    """A terminal table's figure columns, in order."""
    shown = [(f.rank, i, f) for i, f in enumerate(registry()) if f.table == table]
    return [f for _, _, f in sorted(shown, key=lambda t: t[:2])]


def tables() -> list[str]:
    """Every terminal table a figure names, in registry order."""
    return list(dict.fromkeys(f.table for f in registry() if f.table is not None))


def section_rows(result: dict, section: str) -> list[dict]:
    """The per-label rows of an evaluation JSON that hold a section's figures."""
    if section == "labels":
        return result.get("labels") or []
    if section == "calibration":
        return (result.get("calibration") or {}).get("labels") or []
    return result.get(section) or []


def by_label(result: dict, figure: Figure) -> dict[str, dict]:
    """label -> the row of ``result`` that holds ``figure`` (labels and calibration sections)."""
    return {r["label"]: r for r in section_rows(result, figure.section)}
