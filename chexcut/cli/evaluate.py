"""``evaluate``: AUROC per label with bootstrap CIs, paired tests against another model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Cluster, Level, Method, Precision, Split, Views, bound
from chexcut.cli.app import CacheOpt, CsvOpt, ImagesOutsideOpt, LabelMapOpt, TrackOpt, app, split_list, split_repeated
from chexcut.errors import ChexcutError


@app.command()
def evaluate(
    model: Annotated[Optional[str], typer.Argument(help="Finetune run dir (evaluated on its own validation set unless data options are given) or model file (with --data); omit with --predictions.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (default: a run's own); SET:DIR for a published set (nih:, padchest:, ...): an external evaluation on the labels both annotate.")] = None,
    split: Annotated[Optional[Split], typer.Option("--split", help="Rows of the data to evaluate on (default: valid).")] = None,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Evaluate even when the set shares images or patients with the run's training rows (flagged).")] = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="With --predictions: evaluate although a competition label's column is missing (the mean says how many it covers).")] = False,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="Predictions CSV (Path + one probability column per label).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated labels to evaluate (default: the model's). (Deprecated: a label CSV here; use --truth FILE.)")] = None,
    truth: Annotated[Optional[Path], typer.Option("--truth", "--label-csv", help="The label CSV for --predictions (CheXpert valid.csv layout).")] = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="Another model, run dir or predictions CSV on the same rows.")] = None,
    ensemble: Annotated[Optional[list[str]], typer.Option("--ensemble", help="Further members averaged with MODEL (runs, model files or predictions CSVs; repeatable or comma list): the ensemble is evaluated and compared with its best member.")] = None,
    ensemble_weights: Annotated[Optional[str], typer.Option("--ensemble-weights", help="One weight per member, MODEL first (default: equal).")] = None,
    average: Annotated[str, typer.Option("--average", help="Average the members' probabilities or logits.")] = "probabilities",
    method: Annotated[Method, typer.Option("--method", help="Paired test per label.")] = Method.bootstrap,
    bootstrap: Annotated[int, typer.Option("--bootstrap", **bound("bootstrap"), help="Bootstrap replicates (0 disables).")] = 1000,
    ci: Annotated[float, typer.Option("--ci", help="Confidence level.")] = 0.95,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level for the verdict.")] = 0.05,
    margin: Annotated[Optional[float], typer.Option("--margin", help="With --compare: non-inferiority margin in AUROC units (e.g. 0.02); tests H0: delta <= -M.")] = None,
    equivalence: Annotated[bool, typer.Option("--equivalence", help="With --margin: also test equivalence within +-M (TOST).")] = False,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"))] = 0,
    cluster: Annotated[Cluster, typer.Option("--cluster", help="Resample by patient, study or none.")] = Cluster.patient,
    level: Annotated[Level, typer.Option("--level", help="study (max over views, official CheXpert) or image.")] = Level.study,
    logits: Annotated[bool, typer.Option("--logits", help="Predictions are logits (any real number): ranked as they are.")] = False,
    key_col: Annotated[Optional[str], typer.Option("--key-col", help="Key column of --predictions, --truth, --compare and --groups (default: Path, else Study).")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Subgroups: comma-separated columns of the truth CSV or --groups (e.g. Sex,AP/PA).")] = None,
    groups: Annotated[Optional[Path], typer.Option("--groups", help="A CSV of subgroup columns keyed like the truth.")] = None,
    age_bins: Annotated[Optional[str], typer.Option("--age-bins", help="With --by Age: interval edges, e.g. 0,40,60,80,200.")] = None,
    calibration: Annotated[bool, typer.Option("--calibration/--no-calibration", help="Brier, ECE and recalibration slope/intercept with CIs.")] = True,
    decision_curve: Annotated[bool, typer.Option("--decision-curve", help="Net benefit of the model, treat-all and treat-none at threshold probabilities 0.01-0.99, with CIs (Vickers & Elkin 2006).")] = False,
    prevalence_matched: Annotated[bool, typer.Option("--prevalence-matched", help="With --by: compare the groups' average precision after matching each group's prevalence to the whole set's.")] = False,
    failures: Annotated[int, typer.Option("--failures", **bound("failures"), help="Per label, list the N most confident false positives and negatives at the operating threshold.")] = 0,
    failure_images: Annotated[Optional[Path], typer.Option("--failure-images", help="With --failures and a MODEL: a contact sheet per label of those cases with their Grad-CAM maps.")] = None,
    at_specificity: Annotated[Optional[list[str]], typer.Option("--at-specificity", help="Operating point per label: the best sensitivity at specificity >= S (repeatable or S1,S2; chosen on this set: optimistic).")] = None,
    at_sensitivity: Annotated[Optional[list[str]], typer.Option("--at-sensitivity", help="Operating point per label: the best specificity at sensitivity >= S (repeatable or S1,S2).")] = None,
    thresholds: Annotated[Optional[str], typer.Option("--thresholds", help="Thresholds chosen on another set, applied here: a finetune RUN (its validation predictions, by --threshold-rule), an evaluation JSON, or a label,threshold CSV.")] = None,
    threshold_rule: Annotated[Optional[str], typer.Option("--threshold-rule", help="How --thresholds RUN|JSON chose them: youden (default), specificity:S or sensitivity:S.")] = None,
    readers: Annotated[Optional[list[str]], typer.Option("--readers", help="Readers' binary reads keyed like the truth (FILE or NAME=FILE; repeatable or comma list): placed against the model's ROC curve.")] = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Folder for per-label ROC (with CI band, readers, operating points), PR and reliability PNGs.")] = None,
    predictions_out: Annotated[Optional[Path], typer.Option("--predictions-out", help="Write MODEL's predictions CSV here.")] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the evaluation JSON to PATH, or - for stdout.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv-out", help="Write per-label results as CSV.")] = None,
    csv: CsvOpt = None,
    path_col: Annotated[Optional[str], typer.Option("--path-col", help="Column of image paths (default: Path, or the run's).")] = None,
    views: Annotated[Optional[Views], typer.Option("--views", help="Which views (default: frontal, or the run's).")] = None,
    uncertain: Annotated[Optional[str], typer.Option("--uncertain", help="Uncertain label policy (default: zeros, or the run's).")] = None,
    blank: Annotated[Optional[Blank], typer.Option("--blank", help="Blank labels (default: zeros, or the run's).")] = None,
    valid_frac: Annotated[Optional[float], typer.Option("--valid-frac", help="Valid share of patients without valid.csv (default: 0.1, or the run's).")] = None,
    label_map: LabelMapOpt = None,
    images_outside: ImagesOutsideOpt = False,
    image_size: Annotated[Optional[int], typer.Option("--image-size", **bound("image_size"), help="Input size (default: the model file's own preprocessing).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", **bound("batch_size"))] = 64,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N (default: cuda if available).")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="Default: auto = bf16 on GPU, fp32 on CPU.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", **bound("workers"), help="DataLoader worker processes (default: 4, at most the CPUs this process may use).")] = None,
    cache: CacheOpt = None,
    track: TrackOpt = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
):
    """AUROC per label and on the 5 competition tasks, with bootstrap CIs and paired tests."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation import orchestrate as evalrun
    from chexcut.evaluation.settings import Inference
    from chexcut.fileio import regular_file

    predictions, truth, groups = regular_file(predictions), regular_file(truth), regular_file(groups)
    compare = str(regular_file(compare)) if compare else compare
    stats = _statistics(locals())  # the command's parameters, by name (--failure-images checked there too)
    infer = Inference(image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                      precision=precision and str(precision), cache_dir=cache)
    _check_outputs(json_path, predictions_out, csv_out, plots,
                   *_inputs(model, data, predictions, truth, compare, groups, readers, thresholds, csv))
    quiet = quiet or "-" in (str(json_path), str(predictions_out), str(csv_out))  # stdout holds that output alone
    label_file, label_list = truth, split_list(labels, "--labels")
    if labels and Path(labels).is_file():  # deprecated: --labels FILE meant --truth FILE
        ui.err.print("[yellow]warning:[/] --labels FILE is deprecated; use --truth FILE")
        label_file, label_list = Path(labels), None
    data, given = _given_data(data, csv, path_col, views, uncertain, blank, valid_frac, label_map, images_outside)
    inputs = evalrun.EvalInputs(
        model=model, data=data, split=split and str(split), options=given, predictions=predictions, truth=label_file,
        labels=tuple(label_list) if label_list else None, compare=compare, logits=logits, allow_overlap=allow_overlap,
        allow_missing=allow_missing, key_col=key_col, groups=groups, readers=tuple(readers or ()),
        thresholds=thresholds, threshold_rule=threshold_rule, **_ensemble(model or predictions, ensemble, ensemble_weights, average))
    run_dir = _tracked_run(model, track)
    result = evalrun.run_evaluation(inputs, stats, infer, predictions_out=predictions_out, plots=plots,
                                    progress=lambda what: ui.progress_bar(what, quiet=quiet))
    if failure_images is not None:
        from chexcut.deploy.failures import failure_sheets

        result["failure_images"] = [str(p) for p in failure_sheets(result, str(model), failure_images)]
    _write(result, json_path, csv_out, quiet)
    if run_dir is not None:  # a tracked run (its mlflow.json) or --track: the evaluation joins its MLflow run
        from chexcut import tracking

        tracking.log_evaluation(run_dir, result, track)


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
    return {"ensemble": listed, "ensemble_weights": w, "average": check_average(average)}


def _data_set(data, csv):
    """``--data SET:DIR`` -> (DIR, SET); a folder holding a published set's label file -> (folder, its name)."""
    from chexcut.data.datasets import resolve

    return (None, None) if data is None else resolve(data, None, csv)


def _statistics(p: dict):
    """evaluate's statistics options (its parameters, by name) as one checked :class:`Statistics`."""
    from chexcut.evaluation.settings import Statistics

    if p["failure_images"] is not None and (not p["failures"] or p["model"] is None):
        raise ChexcutError("--failure-images needs --failures N and a MODEL (a run or model file)")
    if p["failure_images"] is not None:
        from chexcut.fileio import check_output_folder

        check_output_folder(p["failure_images"], "--failure-images folder")
    bins = None
    if p["age_bins"]:
        try:
            bins = tuple(float(x) for x in split_list(p["age_bins"], "--age-bins"))
        except ValueError:
            raise ChexcutError(f"--age-bins takes numbers separated by commas, not {p['age_bins']!r}") from None
    return Statistics(bootstrap=p["bootstrap"], ci=p["ci"], seed=p["seed"], cluster=str(p["cluster"]),
                      method=str(p["method"]), alpha=p["alpha"], margin=p["margin"], equivalence=p["equivalence"],
                      level=str(p["level"]), by=tuple(split_list(p["by"], "--by") or ()), age_bins=bins,
                      calibration=p["calibration"], at_specificity=_targets(p["at_specificity"], "--at-specificity"),
                      at_sensitivity=_targets(p["at_sensitivity"], "--at-sensitivity"),
                      decision_curve=p["decision_curve"], prevalence_matched=p["prevalence_matched"],
                      failures=p["failures"])


def _check_outputs(json_path, predictions_out, csv_out, plots, sources: list[Path], folders: list[Path]) -> None:
    """Every output checked before any inference, never onto an input or over a file of a data folder read."""
    from chexcut.fileio import check_outputs

    check_outputs([(json_path, "--json"), (predictions_out, "--predictions-out"), (csv_out, "--csv-out")],
                  inputs=sources, protected=folders)
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


def _inputs(model, data, predictions, truth, compare, groups, readers, thresholds, csv) -> tuple[list, list]:
    """(every file this evaluation reads, the data folders it reads whole): no output may be one of the files or
    replace a file of those folders (a set's metadata, e.g. MIMIC's patients.csv.gz, included)."""
    from chexcut.data.datasets import split_ref
    from chexcut.reading import read_json

    files = [predictions, truth, compare, groups, thresholds, csv, model]
    files += [item.partition("=")[2] or item for item in split_repeated(readers, "--readers")]
    folders = [split_ref(data)[0]] if data else []
    if model and (Path(model) / "config.json").is_file():  # a run directory: its own files and its data set
        files += [Path(model) / name for name in ("config.json", "valid_predictions.csv", "best.safetensors")]
        try:
            folders.append(read_json(Path(model) / "config.json")["data"]["dir"])
        except (ChexcutError, KeyError, TypeError):
            pass
    for folder in folders:
        for pattern in ("*.csv", "*/*.csv"):
            files += list(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    return [Path(f) for f in files if f and Path(f).is_file()], [Path(f) for f in folders if Path(f).is_dir()]


def _targets(values: list[str] | None, flag: str) -> tuple[float, ...]:
    """Repeatable, comma-separated sensitivity/specificity targets, each checked in (0, 1]."""
    from chexcut.evaluation.operating import check_target

    return tuple(check_target(v, flag) for v in split_repeated(values, flag))


def _write(result: dict, json_path: str | None, csv_out: Path | None, quiet: bool) -> None:
    """The evaluation JSON to a file or stdout, the per-label CSV, and the table (unless quiet)."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation.orchestrate import write_results_csv
    from chexcut.fileio import write_json

    if json_path and json_path != "-":
        write_json(Path(json_path), result)
    if csv_out:
        write_results_csv(csv_out, result)
    if json_path == "-":
        ui.print_json(result)
    elif not quiet:
        ui.out.print(ui.evaluation_table(result))
        for table in ui.evaluation_extra_tables(result):
            ui.out.print(table)
        for note in result.get("notes", []):
            ui.err.print(f"[dim]note:[/] {note}")


@app.command("ensemble")
def ensemble_command(
    members: Annotated[list[str], typer.Argument(help="Two or more finetune runs, model files (with --data) or predictions CSVs (with --truth).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for predictions.csv (the ensemble's) and eval.json.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder or SET:DIR (default: the first run's own validation set).")] = None,
    split: Annotated[Optional[Split], typer.Option("--split", help="Which rows of --data.")] = None,
    truth: Annotated[Optional[Path], typer.Option("--truth", help="With predictions CSVs: the truth CSV.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="One weight per member (default: equal).")] = None,
    average: Annotated[str, typer.Option("--average", help="Average the members' probabilities or logits.")] = "probabilities",
    bootstrap: Annotated[int, typer.Option("--bootstrap", **bound("bootstrap"), help="Replicates for CIs and the paired test against the best member.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"))] = 0,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Evaluate even where a member trained on these rows (flagged).")] = False,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
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
        **_ensemble(members[0], members[1:], weights, average))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = evalrun.run_evaluation(inputs, Statistics(bootstrap=bootstrap, seed=seed), Inference(),
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
