"""``chexcut evaluate`` end to end: sources (a model over a dataset, or predictions CSVs) -> arrays
-> :func:`chexcut.evaluation.evaluate.evaluate` -> the evaluation JSON, plus the CSV outputs.

The statistics live in :mod:`chexcut.evaluation.evaluate` and :mod:`chexcut.evaluation.metrics`; this module only
gathers their inputs. Model inference imports torch; the predictions-only path does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.evaluation.evaluate import aggregate_by_study, evalrows_from_table, evaluate
from chexcut.evaluation.evaluation_set import overlaps_training
from chexcut.evaluation.predictions import align, is_image_key, read_predictions, to_studies, write_predictions
from chexcut.evaluation.settings import Inference, Statistics
from chexcut.models.source import ModelSource


def is_predictions_csv(target: str) -> bool:
    p = Path(target)
    return p.is_file() and p.suffix.lower() == ".csv"


def model_predictions(model_path, es, infer: Inference, labels=None, progress=None):
    """Run a model file or run dir over the evaluation set ``es`` with the model's own preprocessing (its
    image size unless ``infer.image_size``, its resize mode): (table, predictions DataFrame, spec)."""
    import dataclasses

    import pandas as pd
    import torch

    from chexcut.data.batches import XrayBatches, batch_order, make_loader
    from chexcut.data.cache import dataset_cache
    from chexcut.data.tables import check_files, load_split
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.infer import pick_device, predict, resolve_precision
    from chexcut.models.modelfile import load_model, read_spec

    path = ModelSource.parse(str(model_path)).require_file("evaluate")  # a file, or a run dir's best model
    spec = read_spec(path)
    want = tuple(labels or spec.labels)
    extra = [label for label in want if label not in spec.labels]
    if extra:
        raise ChexcutError(f"{path} has no head output for: {', '.join(extra)}")
    opts = dataclasses.replace(es.opts, labels=want)
    table = check_files(load_split(es.data, es.split, opts))
    dev = pick_device(infer.device)
    precision = resolve_precision(infer.precision, dev)
    pre = spec.preprocess.with_size(infer.image_size)
    if spec.notes and es.run_dir is not None:  # an older best model: the run's config says how it trained
        pre = pre.with_size(infer.image_size or es.image_size, es.resize)
    size = pre.image_size
    check_image_size(spec.arch, size)
    from chexcut.data.cpus import limit_threads

    limit_threads()
    model = load_model(path, device=str(dev), image_size=size)  # a ViT at another size: resampled by timm
    cache_dir = infer.cache_dir
    if cache_dir is None and es.cache is not None and es.cache.is_dir():
        cache_dir = es.cache  # the cache the run trained from
    cache = dataset_cache(es.data, opts, table.files, size, pre.resize, cache_dir)
    ds = XrayBatches(table, size, pre.resize, cache=cache)
    channels_last = dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(ds, batch_order(len(ds), infer.batch_size, False, 0, 0), infer.workers,
                         pin=dev.type == "cuda")
    probs = predict(model, spec, loader, len(ds), dev, precision, channels_last, progress)
    df = pd.DataFrame(probs, index=table.paths, columns=list(spec.labels))
    return table, df, spec


def write_results_csv(path, result) -> None:
    """Per-label rows (and the two means) with the comparison columns when there is one. The figure columns are
    the declared ones (``Figure.csv``: AUROC and its CI, ...), each with its CI; a mean row has the figures that
    are averaged (``Figure.mean``). ``result``: an :class:`~chexcut.evaluation.result.Evaluation` or its JSON."""
    import pandas as pd

    from chexcut.evaluation import figures
    from chexcut.evaluation.result import Evaluation
    from chexcut.fileio import atomic_path

    ev = Evaluation.of(result)
    figs = [f for f in figures.registry() if f.csv and f.section in ("labels", "calibration")]
    rows = []
    comp = {r["label"]: r for r in (ev.compare or {}).get("labels", [])}
    for r in ev.labels:
        c = comp.get(r.label, {})
        row = {"label": r.label, "n_pos": r.n_pos, "n_neg": r.n_neg}
        for f in figs:
            row |= r.figure(f)
        rows.append(row | {"delta": c.get("delta"), "delta_ci_low": c.get("ci_low"),
                           "delta_ci_high": c.get("ci_high"), "p": c.get("p")})
    for key, m in ev.means:
        c = (ev.compare or {}).get(key) or {}
        row = {"label": key}
        for f in figs:
            row |= (m.figure(f) if m else dict.fromkeys(f.keys)) if f.mean and f.section == "labels" else {}
        rows.append(row | {"delta": c.get("delta"), "delta_ci_low": c.get("ci_low"), "delta_ci_high": c.get("ci_high"),
                           "p": c.get("p")})
    with atomic_path(Path(path)) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def check_sources(model, data, predictions, label_file) -> ModelSource | None:
    """One-line errors for what to evaluate, before any inference or progress output; MODEL, parsed."""
    if (model is None) == (predictions is None):
        raise ChexcutError("give a MODEL (a run directory, or a model file with --data) or --predictions "
                           "(with --truth FILE), not both or neither")
    if model is not None:
        source = ModelSource.parse(str(model))
        source.spec()  # a bad model fails here, not after the data is read
        return source
    if label_file is None:
        raise ChexcutError("--predictions needs the label CSV: --truth FILE")
    return None


#: The kinds of an evaluation's warnings: the evaluated set overlaps training rows; the model is a run's interim
#: best; the evaluation set's own notes (rows left out, groups); a thresholds file's gaps; the statistics' (small
#: samples, excluded replicates, subgroup rows without a value).
WARNING_KINDS = ("overlap", "interim", "evaluation set", "thresholds", "statistics")
SERIOUS = ("overlap", "interim")  # the terminal table's caption shows these in red


@dataclass(frozen=True)
class EvalInputs:
    """What to evaluate: a MODEL (run dir or model file, over ``data``/``split``/``options`` or a run's own
    validation rows) or ``predictions`` with their ``truth`` CSV; optionally ``compare`` on the same rows."""

    model: str | None = None
    data: Path | None = None
    split: str | None = None
    options: dict = field(default_factory=dict)  # data options chosen explicitly (DataOptions fields)
    predictions: Path | None = None
    truth: Path | None = None
    labels: tuple[str, ...] | None = None
    compare: str | None = None
    logits: bool = False
    allow_overlap: bool = False
    allow_missing: bool = False
    key_col: str | None = None  # the key column of --predictions/--truth/--compare/--groups (default: Path or Study)
    groups: Path | None = None  # a CSV of subgroup columns keyed like the truth
    readers: tuple[str, ...] = ()  # reader files (FILE or NAME=FILE), binary reads keyed like the truth
    thresholds: str | None = None  # a run dir, evaluation JSON or label,threshold CSV: thresholds chosen elsewhere
    threshold_rule: str | None = None  # how --thresholds RUN|JSON chose them (default youden; only with them)
    ensemble: tuple[str, ...] = ()  # further members (runs, model files or predictions CSVs) averaged with MODEL
    ensemble_weights: tuple[float, ...] | None = None  # one per member, MODEL first (normalised); None: equal
    average: str = "probabilities"  # probabilities | logits: where the members are averaged


def run_evaluation(inputs: EvalInputs, stats: Statistics = Statistics(), infer: Inference = Inference(),
                   predictions_out=None, progress=None, plots: Path | None = None) -> dict:
    """What ``chexcut evaluate`` does: get predictions (run the model over its evaluation set, or read the
    predictions + truth CSVs), the same for ``compare``, aggregate, evaluate. Returns the JSON dict.

    With a run directory and no data option (nor ``data``/``split``), the set is the run's own validation
    rows. ``progress(description)`` returns a context manager yielding ``update(done, total)``.
    """
    import contextlib

    i = inputs
    if i.compare is None and stats.margin is not None:
        raise ChexcutError("--margin needs --compare OTHER (non-inferiority of this model against OTHER)")
    source = check_sources(i.model, i.data, i.predictions, i.truth)
    from chexcut.evaluation.operating_inputs import check_inputs, given_thresholds, read_readers

    reader_specs, rule = check_inputs(i.readers, i.thresholds, i.threshold_rule)  # before any inference
    progress = progress or (lambda what: contextlib.nullcontext(lambda *a, **k: None))
    es, table, preds, notes, warns, overlap, group_sources = _gather(i, source, infer, progress)
    if i.groups is not None:
        group_sources.insert(0, (Path(i.groups), i.key_col))
    evalrows = evalrows_from_table(table)
    if stats.by:
        from chexcut.evaluation.groups import attach_groups

        evalrows, group_warnings = attach_groups(evalrows, stats, group_sources)
        warns = warns + group_warnings
    mats, members, overlap = _scores(i, es, evalrows, table, preds, notes, overlap, infer, progress,
                                     predictions_out)
    reads = read_readers(reader_specs, evalrows, i.key_col)
    n_scores = len(mats)
    mats += list(reads.values())
    if stats.level == "study":
        evalrows, mats = aggregate_by_study(evalrows, mats)
    given, given_warnings = given_thresholds(i.thresholds, rule, evalrows.labels, stats.level,
                                             i.logits and i.model is None) if i.thresholds else (None, [])
    compare, best = (mats[1] if n_scores > 1 else None), None
    if members:
        from chexcut.evaluation.ensemble import best_member

        best = best_member(evalrows, [n for n, _ in members], mats[1:n_scores])
        compare = mats[1 + best["index"]]
    result = evaluate(evalrows, mats[0], stats, compare=compare,
                      logits=i.logits and i.model is None, readers=dict(zip(reads, mats[n_scores:])), given=given)
    if members:
        result["ensemble"] = {"members": [n for n, _ in members], "weights": _weights(i, len(members)),
                              "average": i.average, "best_member": best["name"], "member_auroc": best["aurocs"],
                              "compare": "the ensemble (model) minus its best member on these rows (compare)"}
    result["level"] = stats.level
    result["statistics"] = stats.to_json()  # every setting asked for (a study's runs: the plan's and the run's seed)
    if plots is not None:
        result["plots"] = _plots(evalrows, mats[0], result, plots, stats)
    _provenance(result, i, es, source, notes, overlap, warns, given_warnings)
    return result


def _scores(i: EvalInputs, es, evalrows, table, preds, notes, overlap, infer: Inference, progress, predictions_out):
    """``(mats, members, overlap)``: the model's scores (an ensemble's: the combined ones, then each member's) and
    --compare's, aligned with ``evalrows``; the predictions CSV written once nothing was refused."""
    mats = [align(evalrows, preds, notes=notes)]
    if i.compare:
        other, compare_overlap = _compare_scores(i, es, evalrows, table, infer, progress)
        mats.append(other)
        overlap = {"model": overlap, "compare": compare_overlap} if compare_overlap is not None else overlap
    members = []
    if i.ensemble:
        from chexcut.evaluation.ensemble import combine, member_scores

        members, member_overlaps = member_scores(i, es, evalrows, table, infer, progress, mats[0], _other_scores)
        mats = [combine([m for _, m in members], i.ensemble_weights, i.average, i.logits and i.model is None),
                *(m for _, m in members)]
        if any(o is not None for o in member_overlaps):
            overlap = {"members": member_overlaps}
    if predictions_out and members:  # the ensemble's own predictions, image level
        write_predictions(predictions_out, list(evalrows.paths), tuple(evalrows.labels), mats[0])
    elif predictions_out and i.model is not None:  # only after every refusal: no output for a refused evaluation
        write_predictions(predictions_out, table.paths, tuple(preds.columns), preds.to_numpy())
    return mats, members, overlap


def _provenance(result: dict, i: EvalInputs, es, source, notes, overlap, warns, given_warnings) -> None:
    """The JSON's evaluation_set, notes, warnings and source."""
    result["evaluation_set"] = {**(es.to_json() if es else {"kind": "predictions", "labels": str(i.truth)}),
                                "description": es.describe() if es else f"the rows of {i.truth}",
                                "overlap": overlap}
    result["notes"] = notes
    _warnings(result, warns, given_warnings, source.interim if source is not None else None,
              overlaps_training(overlap))
    result["source"] = {"model": str(i.model) if i.model else None,
                        "predictions": str(i.predictions) if i.predictions else None, "compare": i.compare,
                        "data": str(Path(es.data).resolve()) if es else None, "split": es.split if es else "valid",
                        "options": (es.opts if es else _options(dict(i.options))).to_json()}


def _weights(i: EvalInputs, k: int) -> list[float]:
    w = list(i.ensemble_weights) if i.ensemble_weights else [1.0] * k
    return [x / sum(w) for x in w]


def _warnings(result: dict, warns: list[str], given_warnings: list[str], interim: str | None, overlap: bool):
    """``result["warnings"]``: every message, the serious first; ``result["warning_kinds"]``: the same in order, each
    with its kind (:data:`WARNING_KINDS`), so a reader (the terminal table, a script) selects by kind, never by
    matching a message's words."""
    kinds = [("evaluation set", w) for w in warns] + [("thresholds", w) for w in given_warnings] + [
        ("statistics", w) for w in result["warnings"]]
    if interim:
        kinds.insert(0, ("interim", f"interim model: the run is {interim}; this is its best model so far"))
    if overlap:
        kinds.insert(0, ("overlap", "the evaluation set overlaps training rows (--allow-overlap): AUROC is inflated"))
    result["warnings"] = [w for _, w in kinds]
    result["warning_kinds"] = [{"kind": k, "message": w} for k, w in kinds]


def _plots(evalrows, scores, result: dict, folder: Path, stats: Statistics) -> list[str]:
    from chexcut.evaluation.evaluate import cluster_rows
    from chexcut.evaluation.metrics import cluster_ids
    from chexcut.evaluation.plots import write_plots

    clusters = cluster_ids(cluster_rows(evalrows, stats.cluster))
    return [str(f) for f in write_plots(evalrows, scores, result, folder, stats, clusters)]


def _gather(i: EvalInputs, source, infer: Inference, progress):
    """The rows and the predictions to evaluate: (evaluation set or None, truth table, predictions, notes,
    warnings, overlap record, where subgroup columns can be read)."""
    from chexcut.evaluation import evaluation_set as sets

    es, notes, warns = None, [], []
    if i.model is not None:
        es = sets.which_rows(source.run_dir, i.data, i.split, dict(i.options))
        with progress("inference") as update:
            table, preds, spec = model_predictions(source.file, es, infer, labels=i.labels, progress=update)
        warns = list(spec.notes)
        overlap = sets.check_overlap(table, es, i.allow_overlap)
        group_sources = [(f, table_key(es)) for f in dataset_csvs(es)]
    else:
        table, preds, notes = _predictions_and_labels(i.predictions, i.truth, dict(i.options), i.logits,
                                                      i.allow_missing, i.labels, i.key_col)
        overlap = None
        group_sources = [(Path(i.truth), i.key_col or dict(i.options).get("path_col"))]
    return es, table, preds, notes, warns, overlap, group_sources


def _options(options: dict):
    from chexcut.data.tables import DataOptions

    return DataOptions(**options)


def _predictions_and_labels(predictions, label_file, options: dict, logits: bool, allow_missing: bool = False,
                            labels: tuple[str, ...] | None = None, key_col: str | None = None):
    """A predictions CSV and its truth CSV, each keyed by Path or Study (or ``key_col``): (truth table,
    predictions DataFrame, notes). Only ``labels`` when given; a competition label the truth has but the
    predictions lack is an error (the 5-task mean would quietly become a 4-task one), unless
    ``allow_missing``; image-level predictions against study-level truth are aggregated to studies."""
    import dataclasses

    from chexcut.data.tables import read_csv_table
    from chexcut.evaluation.predictions import is_image_key, key_column, to_studies
    from chexcut.labels import COMPETITION_LABELS
    from chexcut.reading import csv_header

    preds = read_predictions(predictions, logits=logits, key_col=key_col)
    label_file = Path(label_file)
    if not label_file.is_file():
        raise ChexcutError(f"truth CSV not found: {label_file}")
    if labels:
        missing = [c for c in labels if c not in preds.columns]
        if missing:
            raise ChexcutError(f"--labels: {Path(predictions).name} has no column {', '.join(missing)}")
        attrs = dict(preds.attrs)
        preds = preds[list(labels)]
        preds.attrs.update(attrs)
    header = csv_header(label_file)
    lacking = [c for c in COMPETITION_LABELS if c in header and c not in preds.columns]
    if lacking and not allow_missing and not labels:
        import difflib

        near = [n[0] for c in lacking if (n := difflib.get_close_matches(c, [str(x) for x in preds.columns], n=1,
                                                                           cutoff=0.6))]
        hint = f" (near: {', '.join(map(repr, near))}?)" if near else ""
        raise ChexcutError(f"{Path(predictions).name} lacks the competition label column(s) {', '.join(lacking)}{hint} "
                           f"that {label_file.name} has; add them, or pass --allow-missing to evaluate without them "
                           f"(the competition mean then covers the others and says how many)")
    key = key_column(header, key_col or options.get("path_col"), label_file.name)
    opts = dataclasses.replace(_options({**options, "path_col": key}), labels=tuple(preds.columns))
    table = read_csv_table(label_file, label_file.parent, opts, "valid")
    if not len(table.paths):
        raise ChexcutError(f"{label_file.name}: no rows to evaluate (only a header, or none selected by --views)")
    notes = []
    truth_level = "image" if table.paths and is_image_key(table.paths[0]) else "study"
    if truth_level == "study" and preds.attrs.get("level") == "image":
        preds = to_studies(preds)
        notes.append(f"{Path(predictions).name} is per image and {label_file.name} per study: each study's "
                     f"prediction is the max over its images (the CheXpert convention)")
    return table, preds, notes


def table_key(es) -> str:
    return es.opts.path_col


def dataset_csvs(es) -> list:
    """Where a data set's subgroup columns are read: ``--csv``, train.csv and valid.csv, or a published set's
    harmonised index (in memory: Sex, Age, AP/PA, PadChest's MethodLabel, ...)."""
    from chexcut.data.datasets import read_index, resolve
    from chexcut.data.tables import find_dataset_dir

    name = resolve(es.data, es.opts.dataset, es.opts.csv)[1]
    if name and name != "chexpert":
        frame = read_index(Path(es.data), name, es.opts.label_map)[0]
        frame.attrs["name"] = f"the {name} index"
        return [frame]
    if es.opts.csv:
        csv = Path(es.opts.csv)
        return [csv if csv.is_file() else Path(es.data) / csv]
    ddir = find_dataset_dir(Path(es.data))
    return [f for f in (ddir / "valid.csv", ddir / "train.csv") if f.is_file()]


def _compare_scores(i: EvalInputs, es, evalrows, table, infer: Inference, progress):
    """The other model's scores on the same rows (a predictions CSV, or a model run on the same set)."""
    return _other_scores(i.compare, "--compare", i, es, evalrows, table, infer, progress)


def _other_scores(compare: str, what: str, i: EvalInputs, es, evalrows, table, infer: Inference, progress):
    """Another model's scores on the evaluated rows: a predictions CSV, or a run / model file run over the same set
    (its training rows checked for overlap when it is a run). ``what`` names it in messages."""
    from chexcut.evaluation import evaluation_set as sets
    if is_predictions_csv(compare):
        other = read_predictions(compare, logits=i.logits, key_col=i.key_col)
        if other.attrs.get("level") == "image" and evalrows.paths and not is_image_key(evalrows.paths[0]):
            other = to_studies(other)
        return align(evalrows, other, name=f"{what} {compare}"), None
    if es is None:
        raise ChexcutError(f"{what} with a model needs MODEL too (run on the same data), not --predictions")
    source = ModelSource.parse(str(compare))
    with progress(f"inference ({what.lstrip('-')})") as update:
        _, other, _ = model_predictions(source.require_file(f"evaluate {what}"), es, infer, labels=evalrows.labels,
                                        progress=update)
    other_run = source.run_dir
    overlap = sets.check_overlap(table, es, i.allow_overlap, run_dir=other_run, what=f"{what} {compare}") \
        if other_run else None
    return align(evalrows, other, name=f"{what} {compare}"), overlap
