"""``evaluate``: AUROC per label with bootstrap CIs, paired tests against another model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Cluster, Level, Method, Precision, Split, Views
from chexcut.cli.app import (
    OPT,
    app,
    check_json,
    complete_arch,
    data_options,
    emit_json,
    floats,
    split_list,
    split_repeated,
)
from chexcut.errors import ChexcutError
from chexcut.options import given


@app.command()
def evaluate(  # one parameter per option (declared in chexcut.options), four to a line
    model: Annotated[Optional[str], typer.Argument(help="Finetune run dir (evaluated on its own validation set unless data options are given) or model file (with --data); omit with --predictions.")] = None,
    data: Optional[Path] = OPT.data, split: Optional[Split] = OPT.split, allow_overlap: bool = OPT.allow_overlap,
    allow_missing: bool = OPT.allow_missing, predictions: Optional[Path] = OPT.predictions, labels: Optional[str] = OPT.labels,
    truth: Optional[Path] = OPT.truth, compare: Optional[str] = OPT.compare, ensemble: Optional[list[str]] = OPT.ensemble,
    ensemble_weights: Optional[str] = OPT.ensemble_weights, average: Optional[str] = OPT.average,
    method: Optional[Method] = OPT.method, bootstrap: Optional[int] = OPT.bootstrap, ci: Optional[float] = OPT.ci,
    alpha: Optional[float] = OPT.alpha, margin: Optional[float] = OPT.margin, equivalence: Optional[bool] = OPT.equivalence,
    seed: int = OPT.seed, cluster: Optional[Cluster] = OPT.cluster, level: Optional[Level] = OPT.level,
    logits: bool = OPT.logits, key_col: Optional[str] = OPT.key_col, by: Optional[str] = OPT.by,
    groups: Optional[Path] = OPT.groups, age_bins: Optional[str] = OPT.age_bins, calibration: Optional[bool] = OPT.calibration,
    decision_curve: Optional[bool] = OPT.decision_curve, prevalence_matched: Optional[bool] = OPT.prevalence_matched,
    failures: Optional[int] = OPT.failures, failure_images: Optional[Path] = OPT.failure_images,
    at_specificity: Optional[list[str]] = OPT.at_specificity, at_sensitivity: Optional[list[str]] = OPT.at_sensitivity,
    thresholds: Optional[str] = OPT.thresholds, threshold_rule: Optional[str] = OPT.threshold_rule,
    readers: Optional[list[str]] = OPT.readers, plots: Optional[Path] = OPT.plots,
    predictions_out: Optional[Path] = OPT.predictions_out, json: Optional[str] = OPT.json,
    csv_out: Optional[Path] = OPT.csv_out, csv: Optional[str] = OPT.csv, path_col: Optional[str] = OPT.path_col,
    views: Optional[Views] = OPT.views, uncertain: Optional[str] = OPT.uncertain, blank: Optional[Blank] = OPT.blank,
    valid_frac: Optional[float] = OPT.valid_frac, label_map: Optional[str] = OPT.label_map,
    images_outside: bool = OPT.images_outside, image_size: Optional[int] = OPT.image_size,
    batch_size: Optional[int] = OPT.batch_size, device: Optional[str] = OPT.device,
    precision: Optional[Precision] = OPT.precision, workers: Optional[int] = OPT.workers, cache: Optional[Path] = OPT.cache,
    track: Optional[str] = OPT.track, quiet: bool = OPT.quiet,
):
    """AUROC per label and on the 5 competition tasks, with bootstrap CIs and paired tests."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation import orchestrate as evalrun
    from chexcut.evaluation.settings import Inference, Statistics, check_failure_images
    from chexcut.fileio import regular_file

    predictions, truth, groups, compare = (regular_file(f) for f in (predictions, truth, groups, compare))
    stats = Statistics(**given(
        bootstrap=bootstrap, ci=ci, seed=seed, cluster=cluster, method=method, alpha=alpha, margin=margin,
        equivalence=equivalence, level=level, by=split_list(by, "--by"), age_bins=floats(age_bins, "--age-bins"),
        calibration=calibration, at_specificity=split_repeated(at_specificity, "--at-specificity"),
        at_sensitivity=split_repeated(at_sensitivity, "--at-sensitivity"), decision_curve=decision_curve,
        prevalence_matched=prevalence_matched, failures=failures))
    check_failure_images(failure_images, stats, model)
    infer = Inference(**given(image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                              precision=precision and str(precision), cache_dir=cache))
    _check_outputs(json, predictions_out, csv_out, plots, model, data,
                   [predictions, truth, compare, groups, thresholds, csv], readers)
    quiet = quiet or "-" in (str(json), str(predictions_out), str(csv_out))  # stdout holds that output alone
    label_file, label_list = _labels(truth, labels)
    data, options = _given_data(data, csv, path_col, views, uncertain, blank, valid_frac, label_map, images_outside)
    request = evalrun.EvalInputs(
        model=model, data=data, split=split and str(split), options=options, predictions=predictions, truth=label_file,
        labels=label_list, compare=compare and str(compare), logits=logits, allow_overlap=allow_overlap, allow_missing=allow_missing,
        key_col=key_col, groups=groups, readers=tuple(readers or ()), thresholds=thresholds,
        threshold_rule=threshold_rule, **_ensemble(model or predictions, ensemble, ensemble_weights, average))
    run_dir = _tracked_run(model, track)
    result = evalrun.run_evaluation(request, stats, infer, predictions_out=predictions_out, plots=plots,
                                    progress=lambda what: ui.progress_bar(what, quiet=quiet))
    _write(result, json, csv_out, quiet, failure_images and (str(model), failure_images))
    if run_dir is not None:  # a tracked run (its mlflow.json) or --track: the evaluation joins its MLflow run
        from chexcut import tracking

        tracking.log_evaluation(run_dir, result, track)


def _labels(truth: Path | None, labels: str | None) -> tuple[Path | None, tuple[str, ...] | None]:
    """(the truth CSV, the labels to evaluate): ``--labels FILE`` is the deprecated spelling of ``--truth FILE``."""
    if labels and Path(labels).is_file():
        import chexcut.cli.ui as ui

        ui.err.print("[yellow]warning:[/] --labels FILE is deprecated; use --truth FILE")
        return Path(labels), None
    label_list = split_list(labels, "--labels")
    return truth, tuple(label_list) if label_list else None


def _given_data(data, csv, path_col, views, uncertain, blank, valid_frac, label_map, images_outside) -> tuple:
    """(the data folder, the data options given explicitly, by DataOptions field)."""
    data, dataset = _data_set(data, csv)
    return data, {k: (str(v) if k in ("views", "blank") else v) for k, v in (
        ("csv", csv), ("path_col", path_col), ("views", views), ("uncertain", uncertain), ("blank", blank),
        ("valid_frac", valid_frac), ("dataset", dataset), ("label_map", label_map and str(Path(label_map).resolve())),
        ("images_outside", images_outside or None)) if v is not None}


def _ensemble(first, members, weights, average) -> dict:
    """``--ensemble`` / ``--ensemble-weights`` / ``--average`` as EvalInputs fields, checked (``first``: MODEL or
    the predictions CSV, the first member) before any inference."""
    from chexcut.evaluation.ensemble import check_average, check_members

    listed = tuple(split_repeated(members, "--ensemble"))
    if listed:
        check_members([str(first), *listed])
    if weights is not None and not listed:
        raise ChexcutError("--ensemble-weights needs --ensemble MEMBER...")
    try:
        w = tuple(float(x) for x in split_list(weights, "--ensemble-weights")) if weights is not None else None
    except ValueError:
        raise ChexcutError(f"--ensemble-weights takes numbers separated by commas, not {weights!r}") from None
    return {"ensemble": listed, "ensemble_weights": w, **given(average=average and check_average(average))}


def _data_set(data, csv):
    """``--data SET:DIR`` -> (DIR, SET); a folder holding a published set's label file -> (folder, its name)."""
    from chexcut.data.datasets import resolve

    return (None, None) if data is None else resolve(data, None, csv)


def _check_outputs(json, predictions_out, csv_out, plots, model, data, files: list, readers) -> None:
    """Every output checked before any inference, never onto a file the evaluation reads (MODEL's, ``files``,
    the readers') or over a file of a data folder it reads."""
    from chexcut.evaluation.evaluation_set import files_read

    sources, folders = files_read(model, data, files, readers)
    check_json(json, sources, folders, others=[(predictions_out, "--predictions-out"), (csv_out, "--csv-out")])
    if plots is not None:
        from chexcut.fileio import check_output_folder

        check_output_folder(plots, "--plots folder")


def _tracked_run(model, track) -> Path | None:
    """The run directory whose MLflow run the evaluation joins (None for a model file or predictions); a
    missing extra fails here, before any inference."""
    run_dir = Path(model) if model and (Path(model) / "config.json").is_file() else None
    if track and run_dir is None:
        raise ChexcutError("--track logs an evaluation to its run's MLflow run: give a run directory as MODEL")
    if run_dir is not None:
        from chexcut import tracking

        tracking.resumed(run_dir, track)
    return run_dir


def _write(result: dict, json: str | None, csv_out: Path | None, quiet: bool, failure_images=None) -> None:
    """The evaluation JSON to a file or stdout, the per-label CSV, and the table (unless quiet); first, with
    ``failure_images`` ``(MODEL, FOLDER)``, the failures' contact sheets (listed in the JSON)."""
    if failure_images:
        from chexcut.deploy.failures import failure_sheets

        result["failure_images"] = [str(p) for p in failure_sheets(result, *failure_images)]
    import chexcut.cli.ui as ui
    from chexcut.evaluation.orchestrate import write_results_csv
    from chexcut.evaluation.result import Evaluation

    evaluation = Evaluation.from_json(result)  # what is written conforms to the schema
    if csv_out:
        write_results_csv(csv_out, evaluation)
    emit_json(json, evaluation.to_json())
    if json != "-" and not quiet:
        ui.out.print(ui.evaluation_table(evaluation))
        for table in ui.evaluation_extra_tables(result):
            ui.out.print(table)
        for note in evaluation.notes:
            ui.err.print(f"[dim]note:[/] {note}")


@app.command("ensemble")
def ensemble_command(
    members: Annotated[list[str], typer.Argument(help="Two or more finetune runs, model files (with --data) or predictions CSVs (with --truth).")],
    out: Optional[Path] = OPT.out, data: Optional[Path] = OPT.data, split: Optional[Split] = OPT.split,
    truth: Optional[Path] = OPT.truth, ensemble_weights: Optional[str] = OPT.ensemble_weights,
    average: Optional[str] = OPT.average, bootstrap: Optional[int] = OPT.bootstrap, seed: int = OPT.seed,
    allow_overlap: bool = OPT.allow_overlap, quiet: bool = OPT.quiet,
):
    """Average the members' predictions on the same rows and evaluate the ensemble against its best member."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation import orchestrate as evalrun
    from chexcut.evaluation.ensemble import check_ensemble_folder
    from chexcut.evaluation.settings import Inference, Statistics
    from chexcut.fileio import check_output_folder, write_json

    if len(members) < 2:
        raise ChexcutError("an ensemble needs at least two members")
    csvs = [m for m in members if evalrun.is_predictions_csv(m)]
    if csvs and len(csvs) != len(members):
        raise ChexcutError("ensemble members are all models (runs or model files) or all predictions CSVs, not a mix")
    if csvs and truth is None:
        raise ChexcutError("predictions CSVs as members need --truth FILE")
    check_output_folder(out, "ensemble folder")
    check_ensemble_folder(out, members, truth)
    data, dataset = _data_set(data, None)
    inputs = evalrun.EvalInputs(
        model=None if csvs else members[0], predictions=Path(members[0]) if csvs else None, truth=truth, data=data,
        split=split and str(split), options={"dataset": dataset} if dataset else {}, allow_overlap=allow_overlap,
        **_ensemble(members[0], members[1:], ensemble_weights, average))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = evalrun.run_evaluation(inputs, Statistics(**given(bootstrap=bootstrap), seed=seed), Inference(),
                                        predictions_out=out / "predictions.csv",
                                        progress=lambda what: ui.progress_bar(what, quiet=quiet))
    except BaseException:
        if created and not any(out.iterdir()):  # a refused ensemble leaves nothing behind
            out.rmdir()
        raise
    write_json(out / "eval.json", result)
    _write(result, None, None, quiet)
    if not quiet:
        e = result["ensemble"]
        ui.err.print(f"ensemble of {len(e['members'])} ({e['average']}); best member {e['best_member']}; "
                     f"wrote {out}/predictions.csv and eval.json")


@app.command()
def probe(  # one parameter per option (declared in chexcut.options), four to a line
    model: Annotated[str, typer.Argument(help="Model file from `truncate`, a finetune run dir (its best model), or an architecture name (with --drop/--keep/--weights).", autocompletion=complete_arch)],
    data: Optional[Path] = OPT.data, out: Optional[Path] = OPT.out, split: Optional[Split] = OPT.split,
    drop: Optional[int] = OPT.drop, keep: Optional[int] = OPT.keep, weights: Optional[str] = OPT.weights,
    in_chans: Optional[int] = OPT.in_chans, seed: int = OPT.seed, label_fraction: Optional[float] = OPT.label_fraction,
    bootstrap: Optional[int] = OPT.bootstrap, ci: Optional[float] = OPT.ci, alpha: Optional[float] = OPT.alpha,
    method: Optional[Method] = OPT.method, cluster: Optional[Cluster] = OPT.cluster, level: Optional[Level] = OPT.level,
    image_size: Optional[int] = OPT.image_size, batch_size: Optional[int] = OPT.batch_size,
    device: Optional[str] = OPT.device, precision: Optional[Precision] = OPT.precision,
    workers: Optional[int] = OPT.workers, cache: Optional[Path] = OPT.cache, csv: Optional[str] = OPT.csv,
    path_col: Optional[str] = OPT.path_col, labels: Optional[str] = OPT.labels, views: Optional[Views] = OPT.views,
    uncertain: Optional[str] = OPT.uncertain, blank: Optional[Blank] = OPT.blank,
    valid_frac: Optional[float] = OPT.valid_frac, label_map: Optional[str] = OPT.label_map,
    images_outside: bool = OPT.images_outside, json: Optional[str] = OPT.json, quiet: bool = OPT.quiet,
):
    """A linear probe at every depth: one forward pass, a logistic head per block, each block against the best."""
    import chexcut.cli.ui as ui
    from chexcut.cli.ui_models import probe_table
    from chexcut.data.datasets import split_ref
    from chexcut.data.fractions import check_fraction
    from chexcut.evaluation.evaluation_set import files_read
    from chexcut.evaluation.probe import ProbeInputs, run_probe, write_outputs
    from chexcut.evaluation.settings import Inference, Statistics
    from chexcut.fileio import check_output_folder
    from chexcut.models.source import ModelSource

    source = ModelSource.parse(model, drop=drop, keep=keep, weights=weights or "imagenet", in_chans=in_chans, seed=seed)
    if source.file is not None:
        source.spec()  # a file that is no chexcut model fails here, before the data is read
    opts = data_options(data, csv, path_col, labels, views, uncertain, blank, valid_frac, label_map, images_outside)
    folder = split_ref(data)[0]
    if not folder.exists():
        raise ChexcutError(f"--data {folder} does not exist")
    check_output_folder(out, "--out folder")
    check_json(json, *files_read(str(source.file) if source.file else None, folder, [csv, label_map], ()))
    stats = Statistics(**given(bootstrap=bootstrap, ci=ci, alpha=alpha, method=method, cluster=cluster, level=level,
                               seed=seed), calibration=False)
    infer = Inference(**given(image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                              precision=precision and str(precision), cache_dir=cache))
    inputs = ProbeInputs(source=source, model=model, data=folder, out=out, opts=opts, split=str(split or "valid"),
                         label_fraction=check_fraction(label_fraction if label_fraction is not None else 1.0), seed=seed)
    quiet = quiet or json == "-"
    result = run_probe(inputs, stats, infer, progress=lambda what: ui.progress_bar(what, quiet=quiet))
    write_outputs(result, out)
    emit_json(json, result)
    if not quiet:
        ui.out.print(probe_table(result))
        for line in result["notes"] + [f"[yellow]warning:[/] {w}" for w in result["warnings"]]:
            ui.err.print(f"[dim]note:[/] {line}" if not line.startswith("[yellow]") else line)
        ui.err.print(f"wrote {out}/probe.json and {out}/probe.png")
