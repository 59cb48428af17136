"""``finetune``: a run directory from a model and a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, LogFormat, Views, bound
from chexcut.cli.app import (
    BlankOpt,
    CacheOpt,
    CsvOpt,
    DataDir,
    ImagesOutsideOpt,
    LabelMapOpt,
    LabelsOpt,
    PathColOpt,
    SkipMissingOpt,
    TrackOpt,
    UncertainOpt,
    ValidFracOpt,
    ViewsOpt,
    app,
    complete_arch,
    data_options,
    with_declared_options,
)
from chexcut.errors import ChexcutError
from chexcut.training.config import TRAIN_OPTIONS, train_config_from


@app.command()
@with_declared_options(TRAIN_OPTIONS, before="seed")
def finetune(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(help="Model file from `truncate`, or an architecture name (with --drop/--keep/--weights).", autocompletion=complete_arch)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help=DataDir.__metadata__[0].help)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to create.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory exactly where it stopped.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a --out that holds a finished or stopped run.")] = False,
    drop: Annotated[Optional[int], typer.Option("--drop", **bound("drop"), help="With an architecture name: final blocks to remove.")] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", **bound("keep"), help="With an architecture name: blocks to keep.")] = None,
    weights: Annotated[str, typer.Option("--weights", help="With an architecture name: imagenet | none | a pretraining source NAME or NAME:PATH | PATH.")] = "imagenet",
    in_chans: Annotated[Optional[int], typer.Option("--in-chans", **bound("in_chans"), help="With an architecture name: 1 for grayscale input (default: 3, or the --weights source's own).")] = None,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"))] = 0,
    csv: CsvOpt = None, path_col: PathColOpt = "Path", labels: LabelsOpt = None, views: ViewsOpt = Views.frontal,
    uncertain: UncertainOpt = "zeros", blank: BlankOpt = Blank.zeros, valid_frac: ValidFracOpt = 0.1,
    label_map: LabelMapOpt = None, cache: CacheOpt = None, skip_missing: SkipMissingOpt = False,
    images_outside: ImagesOutsideOpt = False, track: TrackOpt = None,
    track_experiment: Annotated[Optional[str], typer.Option("--track-experiment", help="MLflow experiment (default: chexcut; a study: its folder's name).")] = None,
    track_tag: Annotated[Optional[list[str]], typer.Option("--track-tag", help="KEY=VALUE tag on the MLflow run (repeatable).")] = None,
    track_models: Annotated[bool, typer.Option("--track-models/--track-no-models", help="Upload best.safetensors to the tracking store.")] = True,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="rich (progress bar on stderr) or json (one object per line on stdout).")] = LogFormat.rich,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    **train,  # TRAIN_OPTIONS (training/config.py): --recipe, --epochs, --lr, ... declared once there
):
    """Fine-tune on a CheXpert-layout dataset into a run directory (resumable, kill-safe)."""
    import json

    import chexcut.cli.ui as ui
    from chexcut import events, tracking
    from chexcut.models.source import ModelSource
    from chexcut.training.config import Run
    from chexcut.training.loop import finetune as do_finetune

    if resume is not None:
        if model or out or data:
            raise ChexcutError("--resume RUN_DIR takes its model, data and output from the run; give no MODEL, --data or --out")
        _refuse_changes_on_resume(ctx)
        run = Run.from_run_dir(resume, max_steps=train["max_steps"], device=train["device"],
                               images_outside=images_outside)
        run.track = tracking.resumed(resume, track)
    else:
        if not model or data is None or out is None:
            raise ChexcutError("finetune needs MODEL, --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
        data, opts = _data(data, label_map, images_outside, csv, path_col, labels, views, uncertain, blank, valid_frac)
        source = ModelSource.parse(model, drop=drop, keep=keep, weights=weights, in_chans=in_chans, seed=seed)
        run = Run(run_dir=out, data=data, opts=opts,
                  cfg=train_config_from(train, seed), model_source=source.to_json(), cache=cache,
                  skip_missing=skip_missing, force=force,
                  track=tracking.tracking_from(track, track_experiment, _tags(track_tag), track_models))
    if log_format == "json":
        def emit(event):
            if not quiet:
                print(json.dumps(events.to_json(event)), flush=True)

        result = do_finetune(run, emit)
    else:
        with ui.TrainProgress(quiet=quiet) as emit:
            result = do_finetune(run, emit)
    if log_format == "rich" and not quiet:
        b = result["best"]
        best = f"best mean AUROC {b['mean_auroc']:.4f} at step {b['step']}" if b.get("mean_auroc") is not None else "no evaluable validation"
        ui.err.print(f"{result['status']}: {result['step']} steps, {best}; run in {result['run_dir']}")


def _data(data, label_map, images_outside, *options):
    """``--data`` (a folder or ``SET:DIR``) -> (the folder, the run's DataOptions)."""
    from chexcut.data.datasets import split_ref

    opts = data_options(*options, data=data, label_map=label_map, images_outside=images_outside)
    data = split_ref(data)[0]
    if not data.exists():
        raise ChexcutError(f"--data {data} does not exist")
    return data, opts


def _refuse_changes_on_resume(ctx) -> None:
    """A resumed run keeps its settings (config.json): a declared training option given beside --resume is one
    line, unless the declaration lets it change (--max-steps, --device)."""
    given = [o for o in TRAIN_OPTIONS if not o.on_resume and ctx.get_parameter_source(o.name).name != "DEFAULT"]
    if given:
        may = ", ".join(o.flag for o in TRAIN_OPTIONS if o.on_resume)
        raise ChexcutError(f"{given[0].flag} cannot change on --resume: the run keeps the settings in its config.json "
                           f"({may} may change; or start over with --out ... --force)")


def _tags(items: list[str] | None) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ChexcutError(f"--track-tag takes KEY=VALUE, not {item!r}")
        out[key.strip()] = value
    return out


#: finetune's parameters a study cannot pass to its runs, and why: the grid or the plan decides them, or each
#: run's output goes to its own log. Every other parameter reaches every run (see :func:`finetune_options`).
STUDY_REFUSED = {
    "model": "the study's grid gives each run's model (--archs)",
    "data": "the study's --data is every run's", "out": "each run's folder is the study's runs/ID",
    "resume": "`study exec` resumes an interrupted run by itself", "force": "a plan's runs start over by themselves",
    "drop": "a study sets the drops with --drops", "keep": "a study sets the drops with --drops",
    "weights": "a study sets the weights with --weights", "seed": "a study sets the seeds with --seeds",
    "log_format": "each run's output goes to its log.txt", "quiet": "each run's output goes to its log.txt",
    "track": "give --track to `study plan` itself", "track_models": "give --track-models to `study plan` itself",
}


def finetune_options(params: dict, given: set[str], track: dict | None = None):
    """finetune's parsed parameters -> the FinetuneOptions a study plan gives every run (only what was given).
    ``track``: the study's ``{"uri", "log_models"}``; --track-tag and --track-experiment join it. A parameter in
    :data:`STUDY_REFUSED` is one line."""
    from chexcut.training.config import CLI_TRAIN_FIELDS, SOURCE_FIELDS, FinetuneOptions

    refused = sorted(given & set(STUDY_REFUSED))
    if refused:
        name = refused[0]
        raise ChexcutError(f"--{name.replace('_', '-')} cannot go to a study's runs: {STUDY_REFUSED[name]}")
    train, source = {}, {}
    for name in given:
        field = name
        if field in CLI_TRAIN_FIELDS:
            value = params[name]
            train[field] = str(value) if field in ("recipe", "precision", "resize") else value
        elif field in SOURCE_FIELDS:
            source[field] = params[name]
    if given & {"track_tag", "track_experiment"}:
        if not track:
            raise ChexcutError("--track-tag and --track-experiment need --track (or $CHEXCUT_TRACKING_URI)")
        track = {**track, "tags": _tags(params.get("track_tag")), "experiment": params.get("track_experiment")}
    data = data_options(params["csv"], params["path_col"], params["labels"], params["views"], params["uncertain"],
                        params["blank"], params["valid_frac"], data=params.get("data"),
                        label_map=params.get("label_map"), images_outside=params.get("images_outside")).to_json()
    if data.get("csv") and Path(data["csv"]).exists():  # the runs start in the study folder
        data["csv"] = str(Path(data["csv"]).resolve())
    cache = str(Path(params["cache"]).resolve()) if params.get("cache") else None
    return FinetuneOptions(train=train, data=data, cache=cache, skip_missing=bool(params.get("skip_missing")),
                           track=track, source=source)
