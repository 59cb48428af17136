"""``finetune``: a run directory from a model and a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, LogFormat, Precision, Recipe, Resize, Views
from chexcut.cli.app import OPT, app, complete_arch, data_options
from chexcut.errors import ChexcutError
from chexcut.options import TRAIN_OPTIONS, given


@app.command()
def finetune(  # longer: the run, its model, its data and the training recipe, read in one place
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(help="Model file from `truncate`, or an architecture name (with --drop/--keep/--weights).", autocompletion=complete_arch)] = None,
    data: Optional[Path] = OPT.data, out: Optional[Path] = OPT.out, resume: Optional[Path] = OPT.resume,
    force: bool = OPT.force, drop: Optional[int] = OPT.drop, keep: Optional[int] = OPT.keep,
    weights: Optional[str] = OPT.weights, in_chans: Optional[int] = OPT.in_chans,
    recipe: Optional[Recipe] = OPT.recipe, epochs: Optional[int] = OPT.epochs, batch_size: Optional[int] = OPT.batch_size,
    lr: Optional[float] = OPT.lr, image_size: Optional[int] = OPT.image_size, val_every: Optional[int] = OPT.val_every,
    precision: Optional[Precision] = OPT.precision, channels_last: Optional[bool] = OPT.channels_last,
    compile: Optional[bool] = OPT.compile, workers: Optional[int] = OPT.workers,
    precise_bn: Optional[int] = OPT.precise_bn, layer_decay: Optional[float] = OPT.layer_decay,
    adapt: Optional[str] = OPT.adapt, label_fraction: Optional[float] = OPT.label_fraction,
    max_steps: Optional[int] = OPT.max_steps, log_every: Optional[int] = OPT.log_every,
    device: Optional[str] = OPT.device, resize: Optional[Resize] = OPT.resize, seed: int = OPT.seed,
    csv: Optional[str] = OPT.csv, path_col: Optional[str] = OPT.path_col, labels: Optional[str] = OPT.labels,
    views: Optional[Views] = OPT.views, uncertain: Optional[str] = OPT.uncertain, blank: Optional[Blank] = OPT.blank,
    valid_frac: Optional[float] = OPT.valid_frac, label_map: Optional[str] = OPT.label_map,
    cache: Optional[Path] = OPT.cache, skip_missing: bool = OPT.skip_missing, images_outside: bool = OPT.images_outside,
    track: Optional[str] = OPT.track, track_experiment: Optional[str] = OPT.track_experiment,
    track_tag: Optional[list[str]] = OPT.track_tag, track_models: bool = OPT.track_models,
    log_format: LogFormat = OPT.log_format, quiet: bool = OPT.quiet,
):
    """Fine-tune on a CheXpert-layout dataset into a run directory (resumable, kill-safe)."""
    import json

    import chexcut.cli.ui as ui
    from chexcut import events, tracking
    from chexcut.data.datasets import split_ref
    from chexcut.models.source import ModelSource
    from chexcut.training.config import Run, train_config_from
    from chexcut.training.loop import finetune as do_finetune

    if resume is not None:
        if model or out or data:
            raise ChexcutError("--resume RUN_DIR takes its model, data and output from the run; give no MODEL, --data or --out")
        _refuse_changes_on_resume(ctx)
        run = Run.from_run_dir(resume, max_steps=max_steps, device=device, images_outside=images_outside)
        run.track = tracking.resumed(resume, track)
    else:
        if not model or data is None or out is None:
            raise ChexcutError("finetune needs MODEL, --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
        opts = data_options(data, csv, path_col, labels, views, uncertain, blank, valid_frac, label_map, images_outside)
        data = split_ref(data)[0]
        if not data.exists():
            raise ChexcutError(f"--data {data} does not exist")
        source = ModelSource.parse(model, drop=drop, keep=keep, weights=weights or "imagenet", in_chans=in_chans,
                                   seed=seed)
        train = given(recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                      val_every=val_every, precision=precision, channels_last=channels_last, compile=compile,
                      workers=workers, precise_bn=precise_bn, layer_decay=layer_decay, adapt=adapt, label_fraction=label_fraction,
                      max_steps=max_steps, log_every=log_every, device=device, resize=resize)
        run = Run(run_dir=out, data=data, opts=opts, cfg=train_config_from(train, seed), model_source=source.to_json(), cache=cache,
                  skip_missing=skip_missing, force=force,
                  track=tracking.tracking_from(track, track_experiment, tracking.parse_tags(track_tag), track_models))
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


def _refuse_changes_on_resume(ctx) -> None:
    """A resumed run keeps its settings (config.json): a declared training option given beside --resume is one
    line, unless the declaration lets it change (--max-steps, --device)."""
    changed = [o for o in TRAIN_OPTIONS if not o.on_resume and ctx.get_parameter_source(o.name).name != "DEFAULT"]
    if changed:
        may = ", ".join(o.flag for o in TRAIN_OPTIONS if o.on_resume)
        raise ChexcutError(f"{changed[0].flag} cannot change on --resume: the run keeps the settings in its config.json "
                           f"({may} may change; or start over with --out ... --force)")
