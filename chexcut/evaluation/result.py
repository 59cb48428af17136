"""An evaluation's result, typed: :class:`Evaluation` (the eval.json of ``chexcut evaluate``), its schema
(:data:`SCHEMA`, a JSON Schema built from these classes and the figure registry, published in
docs/reference/eval-schema.json) and its one reading (:meth:`Evaluation.from_json`, :func:`read_evaluation`).

The core is typed (counts, the settings, each label's AUROC and CI, the two means); every other section
(calibration, subgroups, operating points, decision curves, ensemble, evaluation set, source, notes, ...) stays
the JSON it is, read through :meth:`Evaluation.section`. :meth:`Evaluation.to_json` gives back the very JSON it
was made from, so an eval.json written through it is byte for byte the one written from the dict.

``python -m chexcut.evaluation.result`` prints the schema (``--markdown``: the reference page)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.evaluation import figures
from chexcut.evaluation.settings import Statistics

NUMBER, INTEGER, STRING = {"type": ["number", "null"]}, {"type": "integer"}, {"type": "string"}
TYPED = ("labels", "calibration")  # the sections a label's figures are read from by label (one row per label)


def _figure_properties(section: str, mean: bool = False) -> dict:
    """Each registered figure of ``section`` (with ``mean``: those averaged) and its CI keys: a number or null."""
    return {k: NUMBER for f in figures.in_section(section) if f.mean or not mean for k in f.keys}


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of an evaluation JSON, from the figure registry in force."""
    interval = {"replicates_used": INTEGER, "replicates_excluded": INTEGER, "warning": STRING, "interval_note": STRING}
    label_row = {"type": "object", "required": ["label", "n_pos", "n_neg", *figures.AUROC.keys],
                 "properties": {"label": STRING, "n_pos": INTEGER, "n_neg": INTEGER, "prevalence": NUMBER,
                                **_figure_properties("labels"), **interval, "not_evaluable": STRING}}
    mean = {"type": ["object", "null"], "required": [*figures.AUROC.keys, "labels"],
            "properties": {**_figure_properties("labels", mean=True), **interval, "labels": INTEGER}}
    calibration_row = {"type": "object", "required": ["label"],
                       "properties": {"label": STRING, **_figure_properties("calibration"),
                                      "not_evaluable": STRING, "recalibration_note": STRING}}
    strings = {"type": "array", "items": STRING}
    rows = {"type": "array", "items": {"type": "object"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://chexcut.readthedocs.io/reference/eval-schema.json",
        "title": "chexcut evaluation (eval.json)",
        "description": "What chexcut evaluate --json writes; keys not listed may be present.",
        "type": "object",
        "required": ["n", "bootstrap", "ci", "seed", "cluster", "labels", "mean_competition", "mean_all",
                     "competition_labels", "warnings", "compare"],
        "properties": {
            "n": INTEGER, "bootstrap": INTEGER, "ci": {"type": "number"}, "seed": INTEGER, "cluster": STRING,
            "labels": {"type": "array", "items": {"$ref": "#/$defs/label"}},
            "mean_competition": {"$ref": "#/$defs/mean"}, "mean_all": {"$ref": "#/$defs/mean"},
            "competition_labels": strings, "warnings": strings, "compare": {"type": ["object", "null"]},
            "calibration": {"type": "object", "properties": {"labels": {"type": "array",
                                                                        "items": {"$ref": "#/$defs/calibration"}}}},
            "subgroups": rows, "subgroup_gaps": rows, "operating_points": rows, "readers": rows,
            "readers_summary": rows, "decision_curve": {"type": ["object", "null"]}, "error_rates": rows,
            "error_rate_gaps": rows, "failures": rows, "ensemble": {"type": "object"},
            "level": STRING, "statistics": {"type": "object"}, "plots": strings, "failure_images": strings,
            "evaluation_set": {"type": "object"}, "notes": strings, "warning_kinds": rows,
            "source": {"type": "object"},
        },
        "$defs": {"label": label_row, "mean": mean, "calibration": calibration_row},
    }


SCHEMA = schema()

_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
               "boolean": bool, "null": type(None)}


def _type_name(value) -> str:
    for name, kind in _JSON_TYPES.items():
        if isinstance(value, kind) and not (isinstance(value, bool) and name in ("integer", "number")):
            return name
    return type(value).__name__


def problem(value, node: dict, root: dict, at: str = "") -> str | None:
    """The first way ``value`` breaks ``node`` (of schema ``root``; the subset used: $ref, type, required,
    properties, items), said in a few words, or None."""
    if "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and _type_name(value) not in types and not (_type_name(value) == "integer" and "number" in types):
        return f"{repr(at) if at else 'the evaluation'} should be {' or '.join(types)}, not {_type_name(value)}"
    if isinstance(value, dict):
        for key in node.get("required", []):
            if key not in value:
                return f"{at!r} has no {key!r}" if at else f"no {key!r}"
        for key, sub in node.get("properties", {}).items():
            if key in value and (why := problem(value[key], sub, root, f"{at}.{key}" if at else key)):
                return why
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            if why := problem(item, node["items"], root, f"{at}[{i}]"):
                return why
    return None


@dataclass(frozen=True)
class Mean:
    """A mean over labels (mean_competition, mean_all): AUROC and its CI, how many labels, and the averaged
    figures (``Figure.mean``) in :meth:`figure`."""

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    labels: int
    raw: dict = field(repr=False, compare=False)

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    def figure(self, fig: figures.Figure) -> dict:
        """``fig``'s keys (value, then CI) -> values (None where absent)."""
        return {k: self.raw.get(k) for k in fig.keys}

    @classmethod
    def of(cls, d: dict | None) -> "Mean | None":
        return None if d is None else cls(d["auroc"], d["ci_low"], d["ci_high"], d["labels"], d)


@dataclass(frozen=True)
class LabelResult:
    """One label's row: counts, AUROC and its CI, the reasons; any registered figure through :meth:`figure`."""

    label: str
    n_pos: int
    n_neg: int
    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    prevalence: float | None = None
    warning: str | None = None
    interval_note: str | None = None
    not_evaluable: str | None = None
    rows: Mapping[str, dict] = field(default_factory=dict, repr=False, compare=False)  # section -> its row

    def get(self, key: str, default=None):
        """Another key of the label's row in the labels section."""
        return self.rows.get("labels", {}).get(key, default)

    def figure(self, fig: figures.Figure) -> dict:
        """``fig``'s keys (value, then CI) -> values, from the row of its section (None where absent)."""
        if fig.section not in TYPED:
            raise ValueError(f"{fig.key} has a row per label and rule: read Evaluation.section({fig.section!r})")
        row = self.rows.get(fig.section) or {}
        return {k: row.get(k) for k in fig.keys}

    def interval(self, fig: figures.Figure) -> tuple:
        """``(value, CI low, CI high)`` of ``fig`` (the CI None when it is not resampled)."""
        got = list(self.figure(fig).values())
        return tuple(got + [None, None])[:3]


@dataclass(frozen=True)
class Evaluation:
    """The evaluation JSON's core, typed; its other sections as JSON (:meth:`section`)."""

    n: int
    bootstrap: int
    ci: float
    seed: int
    cluster: str
    level: str | None
    labels: tuple[LabelResult, ...]
    mean_competition: Mean | None
    mean_all: Mean | None
    competition_labels: tuple[str, ...]
    warnings: tuple[str, ...]
    compare: dict | None
    statistics: Statistics | None
    raw: dict = field(repr=False, compare=False)  # the JSON it was read from: to_json gives it back as it is

    @classmethod
    def from_json(cls, d, where: str = "eval.json") -> "Evaluation":
        """The evaluation in ``d`` (what :func:`chexcut.evaluation.orchestrate.run_evaluation` returns, or an
        eval.json read); a key missing or of the wrong type is one line naming ``where``."""
        why = problem(d, schema(), schema())
        if why:
            raise ChexcutError(f"damaged {where}: {why}")
        try:
            stats = Statistics.from_json(d["statistics"]) if "statistics" in d else None
        except (ChexcutError, TypeError) as e:
            raise ChexcutError(f"damaged {where}: 'statistics': {e}") from None
        by_section = {s: {r.get("label"): r for r in figures.section_rows(d, s) if isinstance(r, dict)} for s in TYPED}
        labels = tuple(LabelResult(
            r["label"], r["n_pos"], r["n_neg"], r["auroc"], r["ci_low"], r["ci_high"], r.get("prevalence"),
            r.get("warning"), r.get("interval_note"), r.get("not_evaluable"),
            rows={s: by_section[s].get(r["label"]) or {} for s in TYPED} | {"labels": r}) for r in d["labels"])
        return cls(d["n"], d["bootstrap"], d["ci"], d["seed"], d["cluster"], d.get("level"), labels,
                   Mean.of(d["mean_competition"]), Mean.of(d["mean_all"]), tuple(d["competition_labels"]),
                   tuple(d["warnings"]), d["compare"], stats, d)

    @classmethod
    def of(cls, result, where: str = "evaluation result") -> "Evaluation":
        """``result`` as an :class:`Evaluation` (one already is)."""
        return result if isinstance(result, cls) else cls.from_json(result, where)

    def to_json(self) -> dict:
        """The JSON it was made from: the same keys, order and values (the very dict, not a copy)."""
        return self.raw

    def section(self, name: str, default=None):
        """A section kept as JSON (``calibration``, ``subgroups``, ``operating_points``, ``evaluation_set``, ...)."""
        return self.raw.get(name, default)

    @property
    def means(self) -> tuple[tuple[str, Mean | None], ...]:
        """``(("mean_competition", ...), ("mean_all", ...))``: the two means by their JSON names."""
        return ("mean_competition", self.mean_competition), ("mean_all", self.mean_all)

    @property
    def evaluation_set(self) -> dict:
        return self.raw.get("evaluation_set") or {}

    @property
    def source(self) -> dict:
        return self.raw.get("source") or {}

    @property
    def notes(self) -> list[str]:
        return self.raw.get("notes") or []

    def label(self, name: str) -> LabelResult | None:
        return next((r for r in self.labels if r.label == name), None)


def read_evaluation(path) -> Evaluation:
    """An eval.json (or external/NAME.json) read and checked: unreadable or damaged, one line naming it."""
    from chexcut.reading import read_json

    return Evaluation.from_json(read_json(Path(path)), where=str(path))


def markdown() -> str:
    """docs/reference/evaluation-json.md: the schema, published."""
    return ("# The evaluation JSON\n\n"
            "What `chexcut evaluate --json` writes (a run's `eval.json`, `external/NAME.json`), as a JSON Schema "
            "(draft 2020-12) generated from `chexcut.evaluation.result` and the figure registry "
            "(`chexcut.evaluation.figures`): [eval-schema.json](eval-schema.json). Keys not listed may be present; "
            "[Evaluation sets, leakage, statistics](../concepts/evaluation.md) says what they mean. Python reads "
            "it with `chexcut.evaluation.result.read_evaluation(path)`.\n\n"
            "Regenerate with `python -m chexcut.evaluation.result > docs/reference/eval-schema.json` and "
            "`python -m chexcut.evaluation.result --markdown > docs/reference/evaluation-json.md`.\n\n"
            f"```json\n{schema_text()}```\n")


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown() if "--markdown" in sys.argv[1:] else schema_text())
