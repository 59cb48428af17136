"""A report's inputs: the evaluated run directories of studies (or given one by one), read and checked.

Input: finetune run directories that ``chexcut evaluate`` completed (``eval.json`` and ``predictions.csv``
inside). A run that cannot be used (not evaluated, damaged files) is listed with the reason, never dropped
silently."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chexcut import rundir
from chexcut.errors import ChexcutError
from chexcut.evaluation.result import Evaluation
from chexcut.rundir import RunDir
from chexcut.study.plan import PLAN, load_plan
from chexcut.study.probes import is_probe_folder


@dataclass
class RunResult:
    run_dir: Path
    arch: str
    family: str
    weights: str  # imagenet | none | file
    drop: int
    seed: int
    params: int
    macs: int | None
    top1: float | None
    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    labels: tuple[str, ...]
    eval_n: int
    eval_key: str  # what was evaluated: data, split, level, options
    predictions: Path | None
    overlap: bool = False  # evaluated with --allow-overlap on rows shared with its training set
    bench: dict | None = None  # this run's level from `chexcut bench RUN --json RUN/bench.json`
    subgroups: list[dict] | None = None  # eval.json's subgroups: by, group, n, 5-task AUROC and CI
    calibration: dict | None = None  # the 5 tasks' mean of the calibration figures the report shows (eval.json)
    figures: dict | None = None  # the 5 tasks' mean of the labels section's figures the report shows (if any)
    readers: list[dict] | None = None  # eval.json's readers: per label and reader, the model minus reader deltas
    eval_file: Path | None = None  # the evaluation JSON read (eval.json, or external/NAME.json)
    label_figures: dict = field(default_factory=dict)  # figure key -> label -> (value, CI low, CI high), that JSON
    label_fraction: float = 1.0  # the share of training patients it trained on (finetune --label-fraction)
    adapt: str = "full"  # what it trained (finetune --adapt)
    trainable_params: int | None = None  # the parameters --adapt trained (config.json resolved; None: not recorded)
    train_patients: int | None = None  # the labelled patients it learnt from (None: not recorded)

    @property
    def arm(self) -> tuple[str, float]:
        """(adaptation, label fraction): how much of the model was trained, on how many labels."""
        return self.adapt, self.label_fraction


@dataclass
class Collected:
    runs: list[RunResult] = field(default_factory=list)
    incomplete: list[dict] = field(default_factory=list)


def find_run_dirs(targets: list[Path]) -> list[Path]:
    out = []
    for t in targets:
        t = Path(t)
        if not t.exists():
            raise ChexcutError(f"{t} does not exist")
        if RunDir(t).is_run():
            out.append(t)
        elif is_probe_folder(t):
            continue  # chexcut probe's depth curve: read by chexcut.study.probes, not a run
        elif (t / PLAN).is_file() or (t / "runs").is_dir():
            if (t / PLAN).is_file():
                out += [t / r["run_dir"] for r in load_plan(t)["runs"]]
            else:
                out += sorted(p.parent for p in (t / "runs").glob(f"*/{rundir.CONFIG}"))
        else:
            found = sorted(p.parent for p in t.glob(f"*/{rundir.CONFIG}"))
            if not found:
                raise ChexcutError(f"{t} is neither a run directory nor a study folder")
            out += found
    unique = {}  # one run once: `report RUN RUN`, or a run inside a study also named, is not two seeds
    for d in out:
        unique.setdefault(Path(d).resolve(), d)
    return list(unique.values())


def collect(targets: list[Path], external: str | None = None) -> Collected:
    """Every run under ``targets`` with its evaluation: eval.json, or with ``external`` its evaluation on that
    external set (``external/NAME.json`` and ``NAME-predictions.csv``)."""
    res = Collected()
    for d in find_run_dirs(targets):
        rd = RunDir(d)
        if not rd.is_run():
            res.incomplete.append({"run_dir": str(d), "reason": "not started (no config.json)"})
            continue
        ev_file = rd.eval if external is None else rd.external_eval(external)
        if external is not None and not ev_file.is_file():
            res.incomplete.append({"run_dir": str(d), "reason": f"not evaluated on the external set {external}"})
            continue
        if not rd.eval.is_file():
            state = rd.read_state()
            status = state.get("status") if isinstance(state, dict) and isinstance(state.get("status"), str) else None
            res.incomplete.append({"run_dir": str(d), "reason": f"no eval.json (finetune {status or 'not finished'})"})
            continue
        cfg, ev = rd.read_config(), rd.read_eval(external)
        ev_name = str(ev_file.relative_to(rd.path))
        if cfg is None or ev is None:
            res.incomplete.append({"run_dir": str(d), "reason": f"unreadable {'config.json' if cfg is None else ev_name}"})
            continue
        ev, damage = checked(cfg, ev, ev_name)
        if damage:
            res.incomplete.append({"run_dir": str(d), "reason": damage})
            continue
        res.runs.append(run_result(rd, cfg, ev, ev_file, external))
    return res


def run_result(rd: RunDir, cfg: dict, ev: Evaluation, ev_file: Path, external: str | None) -> RunResult:
    """One evaluated run as the report reads it: its configuration (model, weights, drop, adaptation, label
    budget), its evaluation (``ev``, read from ``ev_file``: eval.json or the ``external`` set's) and what it cost."""
    from chexcut.evaluation.evaluation_set import rows_key
    from chexcut.models.anatomy_cache import cached_anatomy
    from chexcut.models.libraries import weights_meta
    from chexcut.models.registry import get_arch
    from chexcut.models.spec import weights_label

    spec = cfg["model"]
    arch = get_arch(spec["arch"])
    weights = weights_label(spec["weights"])
    size = int(cfg["train"]["image_size"])
    try:
        anat = cached_anatomy(arch.name, size, len(spec["labels"]))
        macs = anat["truncations"][int(spec["drop"])]["macs"]
    except ChexcutError:
        macs = None
    mc, src = ev.mean_competition, ev.source
    key = rows_key(src.get("data"), src.get("split"), ev.level, ev.n, src.get("options"))
    preds = rd.predictions if external is None else rd.external_predictions(external)
    adapt = str(cfg["train"].get("adapt", "full"))
    return RunResult(
        run_dir=rd.path, arch=arch.name, family=arch.family.name, weights=weights, drop=int(spec["drop"]),
        seed=int(cfg["train"]["seed"]), params=int(spec["params"]), macs=macs, top1=weights_meta(arch)["top1"],
        auroc=mc and mc.auroc, ci_low=mc and mc.ci_low, ci_high=mc and mc.ci_high,
        labels=tuple(r.label for r in ev.labels), eval_n=ev.n, eval_key=key,
        predictions=preds if preds.is_file() else None, overlap=_overlapping(ev), bench=rd.read_bench(),
        subgroups=_subgroups(ev), calibration=figure_means(ev, "calibration"), figures=figure_means(ev, "labels"),
        readers=_readers(ev), eval_file=ev_file, label_figures=label_figures(ev),
        label_fraction=float(cfg["train"].get("label_fraction", 1.0)), adapt=adapt,
        trainable_params=_count((cfg.get("resolved") or {}).get("trainable_params"),
                                int(spec["params"]) if adapt == "full" else None),  # (recorded since --adapt)
        train_patients=_count((cfg.get("data") or {}).get("train_patients"), None))


def _count(value, otherwise: int | None) -> int | None:
    """A count config.json records (an int, not a bool), or ``otherwise`` (a run from before it was recorded)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else otherwise


def _subgroups(ev: Evaluation) -> list[dict] | None:
    rows = []
    for g in ev.section("subgroups") or []:
        m = g.get("mean_competition") or {}
        rows.append({"by": g.get("by"), "group": g.get("group"), "n": g.get("n"), "auroc": m.get("auroc"),
                     "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high")})
    return rows or None


def _readers(ev: Evaluation) -> list[dict] | None:
    keys = ("label", "reader", "sensitivity", "specificity", "model_sensitivity_at_reader_specificity",
            "delta_sensitivity", "p_sensitivity", "below_model_curve")
    rows = [{k: x.get(k) for k in keys} for x in ev.section("readers") or [] if x.get("sensitivity") is not None]
    return rows or None


def figure_means(ev: Evaluation, section: str) -> dict | None:
    """The mean of each figure of ``section`` the report shows (``Figure.report_mean``: Brier, ECE and slope in
    calibration's) over the competition labels that have it, and how many competition labels the section has;
    None without them."""
    from chexcut.evaluation import figures
    from chexcut.labels import COMPETITION_LABELS

    shown = [f for f in figures.in_section(section) if f.report_mean]
    rows = [r.rows[section] for r in ev.labels if r.label in COMPETITION_LABELS and r.rows.get(section)]
    if not shown or not rows:
        return None
    out = {}
    for f in shown:
        vals = [r[f.key] for r in rows if r.get(f.key) is not None]
        out[f.key] = sum(vals) / len(vals) if vals else None
    out["labels"] = len(rows)
    return out


def label_figures(ev: Evaluation) -> dict:
    """figure key -> label -> (value, CI low, CI high) of the figures the report lists per label
    (``Figure.report_labels``: AUROC)."""
    from chexcut.evaluation import figures

    out = {}
    for f in figures.registry():
        if f.report_labels and f.section in ("labels", "calibration"):
            out[f.key] = {r.label: r.interval(f) for r in ev.labels if r.rows.get(f.section)}
    return out


def damaged(cfg: dict, ev: dict, ev_name: str = "eval.json") -> str | None:
    """Why a run's config.json / evaluation JSON (``ev_name``: eval.json or external/NAME.json) cannot be used (the
    run is then listed, not used), or None."""
    for where, obj, keys in (("config.json", cfg, ("model", "train")), (ev_name, ev, ("labels", "n"))):
        missing = [k for k in keys if k not in obj]
        if missing:
            return f"damaged {where}: no {', '.join(map(repr, missing))}"
    spec = cfg["model"]
    if not isinstance(spec, dict) or not all(k in spec for k in ("arch", "drop", "labels", "params", "weights")):
        return "damaged config.json: its 'model' lacks arch, drop, labels, params or weights"
    from chexcut.models.registry import get_arch

    try:
        get_arch(spec["arch"])
        int(spec["drop"]), int(spec["params"]), int(cfg["train"]["seed"]), int(cfg["train"]["image_size"])
        from chexcut.data.fractions import check_fraction
        from chexcut.training.adapt import parse_adapt

        check_fraction(cfg["train"].get("label_fraction", 1.0), "label_fraction")
        parse_adapt(cfg["train"].get("adapt", "full"))
    except (ChexcutError, KeyError, TypeError, ValueError) as e:
        return f"damaged config.json: {e}"
    import math

    def number(x) -> bool:
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x))

    mc = ev.get("mean_competition")
    if mc is not None and (not isinstance(mc, dict) or not all(number(mc.get(k)) for k in ("auroc", "ci_low", "ci_high"))):
        return f"damaged {ev_name}: 'mean_competition' holds a value that is not a finite number"
    labels = ev["labels"]
    if not isinstance(labels, list) or not all(isinstance(r, dict) and isinstance(r.get("label"), str)
                                               and number(r.get("auroc")) for r in labels):
        return f"damaged {ev_name}: 'labels' must list each label's name and AUROC (a finite number or null)"
    return None


def checked(cfg: dict, ev: dict, ev_name: str = "eval.json") -> tuple[Evaluation | None, str | None]:
    """``(the Evaluation, None)`` of a run's evaluation JSON (``ev_name``), or ``(None, why it cannot be used)``:
    :func:`damaged`, then the schema (:meth:`Evaluation.from_json`)."""
    why = damaged(cfg, ev, ev_name)
    if why:
        return None, why
    try:
        return Evaluation.from_json(ev, where=ev_name), None
    except ChexcutError as e:
        return None, str(e)


def _overlapping(ev: Evaluation) -> bool:
    """Whether an eval.json records rows shared with the training set (allowed with --allow-overlap)."""
    from chexcut.evaluation.evaluation_set import overlaps_training

    return overlaps_training(ev.evaluation_set.get("overlap"))


def check_comparable(runs: list[RunResult]) -> None:
    """Runs compared in one report must share the label set and the evaluation set."""
    if not runs:
        return
    labels = {r.labels for r in runs}
    if len(labels) > 1:
        a, b = list(labels)[:2]
        raise ChexcutError(f"the runs were evaluated on different label sets ({len(a)} vs {len(b)} labels, e.g. "
                           f"{sorted(set(a) ^ set(b))[:3]}); report them separately")
    keys = {r.eval_key for r in runs}
    if len(keys) > 1:
        a, b = (json.loads(k) for k in list(keys)[:2])
        diff = [k for k in a if a[k] != b[k]]
        raise ChexcutError(f"the runs were evaluated on different evaluation sets (differing in {', '.join(diff)}); "
                           f"report them separately")
