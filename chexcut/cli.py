"""The ``chexcut`` command: parse, call the library, render. No logic lives here.

Torch is imported inside commands only, so ``chexcut --help`` and shell completion stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Cluster, Level, LogFormat, Method, Precision, Recipe, Resize, Split, Views
from chexcut.errors import ChexcutError

app = typer.Typer(
    name="chexcut",
    help="Which ImageNet backbone, how much of it, and is the difference real? "
    "Truncate, fine-tune and evaluate CNNs on chest X-rays (CheXtransfer).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool):
    if value:
        from chexcut import __version__

        typer.echo(f"chexcut {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for unexpected errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """--debug is read by main() itself, which needs it before any command runs."""


def _complete_arch(incomplete: str) -> list[str]:
    from chexcut.models.registry import REGISTRY

    return [a for a in REGISTRY if a.startswith(incomplete)]


def _split(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


# ----------------------------------------------------------------------------- list / inspect

@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout.")):
    """Every supported architecture: params, ImageNet top-1, block count."""
    from chexcut import ui
    from chexcut.models.anatomy import full_params
    from chexcut.models.libraries import weights_meta
    from chexcut.models.registry import REGISTRY

    rows = []
    for a in REGISTRY.values():
        meta = weights_meta(a)
        rows.append({"arch": a.name, "source": a.source, "family": a.family.name, "params": full_params(a.name),
                     "top1": meta["top1"], "num_blocks": a.family.num_blocks, "paper": a.paper,
                     "weights": meta["id"]})
    if json_out:
        ui.print_json(rows)
    else:
        ui.out.print(ui.arch_list_table(rows))


@app.command()
def inspect(
    target: str = typer.Argument(..., help="Architecture name (see `chexcut list`) or a chexcut model file.",
                                 autocompletion=_complete_arch),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size for shapes and MACs [default: 320, or the model file's]."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
):
    """Block anatomy of an architecture or model file, and what each truncation level costs."""
    from chexcut import ui
    from chexcut.models.anatomy_cache import cached_anatomy

    from chexcut.models.source import ModelSource

    source = ModelSource.parse(target)
    spec = source.spec() if source.is_file else None
    if spec:
        size = image_size if image_size is not None else int(spec.get("image_size", 320))
        a = cached_anatomy(spec["arch"], size, n_labels=len(spec["labels"]))
        a["model"] = spec
    else:
        a = cached_anatomy(source.arch, image_size if image_size is not None else 320, 14)
    if json_out:
        ui.print_json(a)
        return
    if spec:
        ui.out.print(f"[bold]{target}[/]: {spec['arch']} drop {spec['drop']} (keep {spec['keep']}/{spec['num_blocks']}), "
                     f"{spec['params']:,} params, {len(spec['labels'])} labels, weights {spec['weights'].get('id') or spec['weights']['kind']}")
    for t in ui.anatomy_tables(a, highlight_drop=spec["drop"] if spec else None):
        ui.out.print(t)


# ----------------------------------------------------------------------------- truncate

@app.command()
def truncate(
    arch: str = typer.Argument(..., help="Architecture name (see `chexcut list`).", autocompletion=_complete_arch),
    out: Path = typer.Option(..., "-o", "--out", help="Model file to write (.safetensors)."),
    drop: Optional[int] = typer.Option(None, "--drop", help="Final blocks to remove (0..B-1) [default: 0]."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Blocks to keep (1..B); instead of --drop."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet | none | PATH to a state dict of the full architecture."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated head labels [default: the 14 CheXpert observations]."),
    in_chans: int = typer.Option(3, "--in-chans", help="1 = grayscale input (first conv's RGB filters combined)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random initialisation (the new head; all weights with --weights none)."),
    image_size: int = typer.Option(320, "--image-size", help="Image size recorded in the model file and used for MACs."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print the model spec and figures as JSON to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table."),
):
    """Cut final blocks, attach a new head, load weights, write a self-describing model file."""
    from chexcut import ui
    from chexcut.models.anatomy import anatomy
    from chexcut.models.registry import get_arch, resolve_drop
    from chexcut.fileio import check_writable
    from chexcut.models.modelfile import save_model
    from chexcut.models.surgery import truncate as do_truncate

    a = get_arch(arch)
    d = resolve_drop(a, drop, keep)
    if out.suffix != ".safetensors":
        raise ChexcutError(f"-o {out}: chexcut model files end in .safetensors")
    check_writable(out, force=force)
    model = do_truncate(a.name, drop=d, weights=weights, labels=_split(labels), in_chans=in_chans,
                        image_size=image_size, seed=seed)
    anat = anatomy(a.name, image_size, n_labels=len(model.chexcut_spec["labels"]))
    save_model(model, out, force=force)
    spec = model.chexcut_spec
    full, cut = anat.truncations[0], anat.truncations[d]
    if json_out:
        ui.print_json({"path": str(out), "model": spec, "full": vars(full), "truncated": vars(cut)})
    elif not quiet:
        ui.err.print(ui.truncate_table(spec, vars(full), vars(cut)))
        ui.err.print(f"wrote {out}")


# ----------------------------------------------------------------------------- data

DataDir = Annotated[Path, typer.Argument(help="Dataset folder (CheXpert layout, or the base of --csv paths).")]
CsvOpt = Annotated[Optional[str], typer.Option("--csv", help="A generic CSV instead of train.csv/valid.csv.")]
PathColOpt = Annotated[str, typer.Option("--path-col", help="Column of image paths (relative to DATA).")]
LabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="Comma-separated label columns [default: the CheXpert 14 present].")]
ViewsOpt = Annotated[Views, typer.Option("--views", help="Which views to use.")]
UncertainOpt = Annotated[str, typer.Option("--uncertain", help="Uncertain (-1) labels: ones | zeros | ignore | chexpert | A=ones,B=zeros,default=zeros.")]
BlankOpt = Annotated[Blank, typer.Option("--blank", help="Blank labels: zeros (not mentioned) or ignore.")]
ValidFracOpt = Annotated[float, typer.Option("--valid-frac", help="Valid share of patients when there is no valid.csv.")]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="Square image size in pixels.")]
ResizeOpt = Annotated[Resize, typer.Option("--resize", help="squash (CheXpert baseline) or pad (letterbox).")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Image cache folder [default: ~/.cache/chexcut/images/KEY].")]
SkipMissingOpt = Annotated[bool, typer.Option("--skip-missing", help="Proceed without missing image files (reported).")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Proceed past unreadable images (reported).")]


def _data_options(csv, path_col, labels, views, uncertain, blank, valid_frac, split_seed=0):
    from chexcut.data.chexpert import DataOptions

    return DataOptions(csv=csv, path_col=path_col, labels=tuple(_split(labels)) if labels else None, views=str(views),
                       uncertain=uncertain, blank=str(blank), valid_frac=valid_frac, split_seed=split_seed)


@app.command()
def prepare(
    data: DataDir,
    image_size: ImageSizeOpt = 320,
    resize: ResizeOpt = Resize.squash,
    cache: CacheOpt = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Decoding processes [default: CPU count].")] = None,
    csv: CsvOpt = None, path_col: PathColOpt = "Path", labels: LabelsOpt = None, views: ViewsOpt = Views.frontal,
    uncertain: UncertainOpt = "zeros", blank: BlankOpt = Blank.zeros, valid_frac: ValidFracOpt = 0.1,
    skip_missing: SkipMissingOpt = False, skip_bad: SkipBadOpt = False,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
):
    """Decode and resize every selected image once into a uint8 cache; print label prevalence."""
    from chexcut import ui
    from chexcut.data.cache import prepare_cache
    from chexcut.data.chexpert import check_files, load_split

    opts = _data_options(csv, path_col, labels, views, uncertain, blank, valid_frac)
    resize = str(resize)
    if image_size < 16:
        raise ChexcutError(f"--image-size must be at least 16, not {image_size}")
    table = check_files(load_split(data, "all", opts), skip_missing)
    if cache is not None:
        from chexcut.fileio import check_output_folder

        check_output_folder(cache, "image cache folder")
    with ui.lazy_progress_bar(f"decoding to {image_size}px", len(table), quiet=quiet or json_out) as update:
        cache_obj, stats = prepare_cache(table.files, image_size, resize, cache, workers, progress=update,
                                         skip_bad=skip_bad)
    summary = {"images": len(cache_obj.paths), "image_size": image_size, "resize": resize, "cache": stats["folder"],
               "decoded": stats["decoded"], "reused": stats["reused"], "bad": stats["bad"],
               "notes": table.notes, "options": opts.to_json(), "prevalence": table.prevalence()}
    if json_out:
        ui.print_json(summary)
        return
    if not quiet:
        ui.out.print(ui.prevalence_table(table.prevalence(), f"Label prevalence ({len(table)} images, "
                                         f"uncertain={uncertain}, blank={blank})"))
        for note in table.notes:
            ui.err.print(f"note: {note}")
        if stats["bad"]:
            ui.err.print(f"[yellow]skipped {len(stats['bad'])} unreadable images[/] (first: {stats['bad'][0]})")
        verb = "reused" if stats["decoded"] == 0 else f"decoded {stats['decoded']}, reused {stats['reused']}"
        ui.err.print(f"cache {stats['folder']}: {len(cache_obj.paths)} images ({verb})")


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to write CheXpert-v1.0-small/ into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 600,
    image_size: ImageSizeOpt = 320,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    masks: Annotated[bool, typer.Option("--masks", help="Also write where each finding was drawn (masks/ PNGs and masks.csv), to score heatmaps.")] = False,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Write a synthetic dataset in the exact CheXpert layout, with findings a CNN can learn."""
    from chexcut import ui
    from chexcut.data.phantom import make_phantom
    from chexcut.fileio import check_output_folder

    check_output_folder(out, "phantom folder")
    with ui.lazy_progress_bar("drawing phantom X-rays", n, quiet=quiet) as update:
        root = make_phantom(out, n=n, image_size=image_size, seed=seed, progress=update, masks=masks)
    if not quiet:
        ui.err.print(f"wrote {n} images to {root} (train.csv, valid.csv)")


# ----------------------------------------------------------------------------- finetune

@app.command()
def finetune(
    model: Annotated[Optional[str], typer.Argument(help="Model file from `truncate`, or an architecture name (with --drop/--keep/--weights).", autocompletion=_complete_arch)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (CheXpert layout or --csv base).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to create.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory exactly where it stopped.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a --out that holds a finished or stopped run.")] = False,
    drop: Annotated[Optional[int], typer.Option("--drop", help="With an architecture name: final blocks to remove.")] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", help="With an architecture name: blocks to keep.")] = None,
    weights: Annotated[str, typer.Option("--weights", help="With an architecture name: imagenet | none | PATH.")] = "imagenet",
    in_chans: Annotated[int, typer.Option("--in-chans", help="With an architecture name: 1 for grayscale input.")] = 3,
    recipe: Annotated[Recipe, typer.Option("--recipe", help="paper (Adam 1e-4, batch 16, 3 epochs, fp32) or fast (large batch, bf16, channels_last, compile, cosine).")] = Recipe.paper,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size")] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", help="Validate every N steps (and at each epoch end).")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="Default: the recipe's; auto = bf16 on GPU, fp32 on CPU.")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile (GPU only).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")] = 4,
    precise_bn: Annotated[Optional[int], typer.Option("--precise-bn", help="Before each validation, re-estimate BatchNorm statistics on N training images (for short runs; 0 = off).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps in all (the schedule is unchanged; --resume continues).")] = None,
    log_every: Annotated[int, typer.Option("--log-every", help="Log every N steps.")] = 50,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N [default: cuda if available].")] = None,
    resize: ResizeOpt = Resize.squash,
    csv: CsvOpt = None, path_col: PathColOpt = "Path", labels: LabelsOpt = None, views: ViewsOpt = Views.frontal,
    uncertain: UncertainOpt = "zeros", blank: BlankOpt = Blank.zeros, valid_frac: ValidFracOpt = 0.1,
    cache: CacheOpt = None, skip_missing: SkipMissingOpt = False,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="rich (progress bar on stderr) or json (one object per line on stdout).")] = LogFormat.rich,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Fine-tune on a CheXpert-layout dataset into a run directory (resumable, kill-safe)."""
    import json

    from chexcut import ui
    from chexcut.models.source import ModelSource
    from chexcut.training.train import Run, finetune as do_finetune

    if resume is not None:
        if model or out or data:
            raise ChexcutError("--resume RUN_DIR takes its model, data and output from the run; give no MODEL, --data or --out")
        run = Run.from_run_dir(resume, max_steps=max_steps, device=device)
    else:
        if not model or data is None or out is None:
            raise ChexcutError("finetune needs MODEL, --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
        if not data.exists():
            raise ChexcutError(f"--data {data} does not exist")
        cfg = _train_config(locals())  # the command's parameters, by name
        source = ModelSource.parse(model, drop=drop, keep=keep, weights=weights, in_chans=in_chans, seed=seed)
        opts = _data_options(csv, path_col, labels, views, uncertain, blank, valid_frac)
        run = Run(run_dir=out, data=data, opts=opts, cfg=cfg, model_source=source.to_json(), cache=cache,
                  skip_missing=skip_missing, force=force)
    if log_format == "json":
        def emit(event):
            if not quiet:
                print(json.dumps(event), flush=True)

        result = do_finetune(run, emit)
    else:
        with ui.TrainProgress(quiet=quiet) as emit:
            result = do_finetune(run, emit)
    if log_format == "rich" and not quiet:
        b = result["best"]
        best = f"best mean AUROC {b['mean_auroc']:.4f} at step {b['step']}" if b.get("mean_auroc") is not None else "no evaluable validation"
        ui.err.print(f"{result['status']}: {result['step']} steps, {best}; run in {result['run_dir']}")


def _train_config(p: dict):
    """finetune's parameters (by their names in the command) -> a checked TrainConfig; study plan uses it too."""
    from chexcut.training.train import TrainConfig

    return TrainConfig.from_recipe(
        str(p["recipe"]), epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], image_size=p["image_size"],
        val_every=p["val_every"], precision=p["precision"] and str(p["precision"]), channels_last=p["channels_last"],
        compile=p["compile_"], workers=p["workers"], seed=p["seed"], max_steps=p["max_steps"], device=p["device"],
        resize=str(p["resize"]), log_every=p["log_every"], precise_bn=p["precise_bn"])


@app.command()
def evaluate(
    model: Annotated[Optional[str], typer.Argument(help="Finetune run dir (evaluated on its own validation set unless data options are given) or model file (with --data); omit with --predictions.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder [default: a run's own].")] = None,
    split: Annotated[Optional[Split], typer.Option("--split", help="Rows of the data to evaluate on [default: valid].")] = None,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Evaluate even when the set shares images or patients with the run's training rows (flagged).")] = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="With --predictions: evaluate although a competition label's column is missing (the mean says how many it covers).")] = False,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="Predictions CSV (Path + one probability column per label).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated labels to evaluate (default: the model's). (Deprecated: a label CSV here; use --truth FILE.)")] = None,
    truth: Annotated[Optional[Path], typer.Option("--truth", "--label-csv", help="The label CSV for --predictions (CheXpert valid.csv layout).")] = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="Another model, run dir or predictions CSV on the same rows.")] = None,
    method: Annotated[Method, typer.Option("--method", help="Paired test per label.")] = Method.bootstrap,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates (0 disables).")] = 1000,
    ci: Annotated[float, typer.Option("--ci", help="Confidence level.")] = 0.95,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level for the verdict.")] = 0.05,
    margin: Annotated[Optional[float], typer.Option("--margin", help="With --compare: non-inferiority margin in AUROC units (e.g. 0.02); tests H0: delta <= -M.")] = None,
    equivalence: Annotated[bool, typer.Option("--equivalence", help="With --margin: also test equivalence within +-M (TOST).")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    cluster: Annotated[Cluster, typer.Option("--cluster", help="Resample by patient, study or none.")] = Cluster.patient,
    level: Annotated[Level, typer.Option("--level", help="study (max over views, official CheXpert) or image.")] = Level.study,
    logits: Annotated[bool, typer.Option("--logits", help="Predictions are logits (any real number): ranked as they are.")] = False,
    predictions_out: Annotated[Optional[Path], typer.Option("--predictions-out", help="Write MODEL's predictions CSV here.")] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the evaluation JSON to PATH, or - for stdout.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv-out", help="Write per-label results as CSV.")] = None,
    csv: CsvOpt = None,
    path_col: Annotated[Optional[str], typer.Option("--path-col", help="Column of image paths [default: Path, or the run's].")] = None,
    views: Annotated[Optional[Views], typer.Option("--views", help="Which views [default: frontal, or the run's].")] = None,
    uncertain: Annotated[Optional[str], typer.Option("--uncertain", help="Uncertain label policy [default: zeros, or the run's].")] = None,
    blank: Annotated[Optional[Blank], typer.Option("--blank", help="Blank labels [default: zeros, or the run's].")] = None,
    valid_frac: Annotated[Optional[float], typer.Option("--valid-frac", help="Valid share of patients without valid.csv [default: 0.1, or the run's].")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="[default: the model file's]")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N [default: cuda if available].")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="Default: auto = bf16 on GPU, fp32 on CPU.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")] = 2,
    cache: CacheOpt = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
):
    """AUROC per label and on the 5 competition tasks, with bootstrap CIs and paired tests."""
    from chexcut import ui
    from chexcut.evaluation import orchestrate as evalrun
    from chexcut.fileio import check_output_file

    for flag, p in (("--json", json_path if json_path != "-" else None), ("--predictions-out", predictions_out),
                    ("--csv-out", csv_out)):
        if p:  # every output checked before any inference
            check_output_file(Path(p), flag)
    to_stdout = json_path == "-"
    quiet = quiet or to_stdout
    label_file, label_list = truth, _split(labels)
    if labels and Path(labels).is_file():  # deprecated: --labels FILE meant --truth FILE
        ui.err.print("[yellow]warning:[/] --labels FILE is deprecated; use --truth FILE")
        label_file, label_list = Path(labels), None
    given = {k: (str(v) if k in ("views", "blank") else v) for k, v in (
        ("csv", csv), ("path_col", path_col), ("views", views), ("uncertain", uncertain), ("blank", blank),
        ("valid_frac", valid_frac)) if v is not None}
    result = evalrun.run_evaluation(
        model=model, data=data, split=split and str(split), options=given, predictions=predictions,
        label_file=label_file, labels=tuple(label_list) if label_list else None, compare=compare, logits=logits,
        level=str(level), bootstrap=bootstrap, ci=ci, seed=seed, cluster=str(cluster), method=str(method), alpha=alpha,
        margin=margin, equivalence=equivalence, allow_overlap=allow_overlap, allow_missing=allow_missing,
        predictions_out=predictions_out,
        infer=dict(image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                   precision=precision and str(precision), cache_dir=cache),
        progress=lambda what: ui.progress_bar(what, quiet=quiet))
    if json_path and not to_stdout:
        from chexcut.fileio import write_json

        write_json(Path(json_path), result)
    if csv_out:
        evalrun.write_results_csv(csv_out, result)
    if to_stdout:
        ui.print_json(result)
    elif not quiet:
        ui.out.print(ui.evaluation_table(result))


# ----------------------------------------------------------------------------- bench / export

@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="Architecture (every truncation level) or a model file / run dir.", autocompletion=_complete_arch)],
    drops: Annotated[Optional[str], typer.Option("--drops", help="Comma-separated levels [default: all].")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N [default: cuda if available].")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Default: the model file's, or 320.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Latency at the smallest, throughput at the largest.")] = "1,32",
    precision: Annotated[Precision, typer.Option("--precision")] = Precision.fp32,
    channels_last: Annotated[bool, typer.Option("--channels-last")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model first.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (torch.set_num_threads / ONNX Runtime's intra-op threads).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="torch | onnxruntime (the exported graph).")] = "torch",
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds at most per measurement.")] = 3.0,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the results to PATH (e.g. RUN_DIR/bench.json), or - for stdout.")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Latency, throughput and memory per truncation level, measured on this device (PyTorch or ONNX Runtime)."""
    from chexcut import ui
    from chexcut.deploy.bench import bench as run_bench
    from chexcut.fileio import check_writable, write_json

    if json_path and json_path != "-":
        check_writable(Path(json_path), force=True)
    to_stdout = json_path == "-"
    with ui.lazy_progress_bar("bench", quiet=quiet or to_stdout) as update:
        res = run_bench(target, drops=_ints(drops, "drops") if drops else None, device=device, image_size=image_size,
                        batches=_ints(batch, "batch"), precision=str(precision), channels_last=channels_last,
                        compile_=compile_, threads=threads, runtime=runtime, max_run_time=max_time, progress=update)
    if to_stdout:
        ui.print_json(res)
        return
    if json_path:
        write_json(Path(json_path), res)
    if not quiet:
        ui.out.print(ui.bench_table(res))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model file or finetune run dir.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="ONNX file to write (.onnx).")],
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Size of the example input [default: the model file's]; the batch stays dynamic.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
):
    """ONNX with chexcut's preprocessing and sigmoid inside (uint8 (N,1,H,W) -> (N,14)), checked in ONNX Runtime."""
    from chexcut import ui
    from chexcut.deploy.export import export_onnx

    res = export_onnx(model, out, image_size=image_size, force=force)
    if json_out:
        ui.print_json(res)
    else:
        ui.err.print(f"wrote {res['path']}: {res['arch']} drop {res['drop']}, uint8 (N, 1, {res['image_size']}, "
                     f"{res['image_size']}) -> {len(res['labels'])} probabilities; ONNX Runtime vs chexcut max |diff| "
                     f"{res['max_abs_diff']:.1e}")


# ----------------------------------------------------------------------------- explain

@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="Model file or finetune run dir.")],
    images: Annotated[Optional[list[Path]], typer.Argument(help="Image files or folders (or use --data).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays and contact sheets.")] = Path("explain"),
    data: Annotated[Optional[Path], typer.Option("--data", help="A dataset instead of IMAGES (with --csv, --split, --limit).")] = None,
    csv: CsvOpt = None,
    split: Annotated[Split, typer.Option("--split", help="Rows of --data.")] = Split.valid,
    limit: Annotated[int, typer.Option("--limit", help="At most this many images.")] = 16,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated labels (default: the 5 competition tasks).")] = None,
    top: Annotated[Optional[int], typer.Option("--top", help="Instead of --labels: each image's K most probable labels.")] = None,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Block index (from `chexcut inspect`) [default: the last kept block].")] = None,
    check: Annotated[bool, typer.Option("--check", help="Pointing game (phantom data with --masks) and the randomisation sanity check.")] = False,
    skip_bad: SkipBadOpt = False,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the listing (or with --check the checks) to PATH, or - for stdout.")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Grad-CAM heatmaps over the images (Captum's LayerGradCam at the last kept block), with optional checks."""
    from chexcut import ui
    from chexcut.fileio import check_output_file, check_output_folder

    if (data is None) == (not images):
        raise ChexcutError("give IMAGES (files or folders) or --data DIR, not both or neither")
    if limit < 1:
        raise ChexcutError("--limit must be at least 1")
    check_output_folder(out, "--out folder")
    if json_path and json_path != "-":
        check_output_file(Path(json_path), "--json")
    from chexcut.deploy import explain as ex
    from chexcut.models.modelfile import load_model
    from chexcut.models.source import ModelSource

    path = ModelSource.parse(model).require_file("explain")
    net = load_model(path)
    spec = net.chexcut_spec
    ex.target_layer(net, spec, layer)
    chosen = ex.choose_labels(spec, _split(labels), top)
    size = int(spec.get("image_size", 320))
    inputs, truth = ex.gather(images, data, csv, str(split), limit, size, skip_bad, masks=check)
    with ui.lazy_progress_bar("explaining", quiet=quiet or json_path == "-") as update:
        update(0, len(inputs.paths))
        result = ex.explain(net, spec, inputs, out, chosen, top, layer)
        if check:
            result = {**ex.check(net, spec, inputs, chosen or list(spec["labels"])[:5], truth, layer),
                      "files": result["images"]}
        update(len(inputs.paths), len(inputs.paths))
    if json_path == "-":
        ui.print_json(result)
    elif json_path:
        from chexcut.fileio import write_json

        write_json(Path(json_path), result)
    if not quiet and json_path != "-":
        for name in inputs.skipped:
            ui.err.print(f"[yellow]skipped unreadable image:[/] {name}")
        if check:
            ui.out.print(ui.explain_checks_table(result))
        ui.err.print(f"wrote overlays and contact sheets for {len(inputs.paths)} images to {out}")


# ----------------------------------------------------------------------------- weights

weights_app = typer.Typer(help="ImageNet weights: list, fetch (network or mirror), stage for offline clusters.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _archs_arg(archs: Optional[list[str]], all_: bool, paper: bool) -> list:
    from chexcut.models.registry import PAPER_ARCHS, REGISTRY, get_arch

    if sum(map(bool, (archs, all_, paper))) != 1:
        raise ChexcutError("name architectures, or pass --all or --paper (one of them)")
    names = list(REGISTRY) if all_ else list(PAPER_ARCHS) if paper else archs
    return [get_arch(a) for a in names]


@weights_app.command("list")
def weights_list(
    paper: bool = typer.Option(False, "--paper", help="Only the 16 architectures of the paper."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
):
    """Every architecture's weights: id, file, size, URL, whether cached, where, and whether its hash verifies."""
    from chexcut import ui
    from chexcut.models.registry import PAPER_ARCHS, REGISTRY
    from chexcut.models.weights import status

    rows = [status(a) for a in REGISTRY.values() if not paper or a.name in PAPER_ARCHS]
    if json_out:
        ui.print_json(rows)
    else:
        ui.out.print(ui.weights_table(rows))


@weights_app.command("fetch")
def weights_fetch(
    archs: Annotated[Optional[list[str]], typer.Argument(help="Architectures (see `chexcut list`).", autocompletion=_complete_arch)] = None,
    all_: bool = typer.Option(False, "--all", help="Every supported architecture."),
    paper: bool = typer.Option(False, "--paper", help="The 16 architectures of the paper."),
    mirror: Annotated[Optional[str], typer.Option("--mirror", envvar="CHEXCUT_WEIGHTS_MIRROR", help="A folder or http(s) URL serving the files by name (see `weights fetch --to`).")] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Write the files into this folder (a mirror to copy to an offline machine) instead of the caches.")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Download (or copy from a mirror) and verify ImageNet weights into the libraries' caches."""
    from chexcut import ui
    from chexcut.fileio import writable_folder
    from chexcut.models.weights import fetch

    chosen = _archs_arg(archs, all_, paper)
    if to is not None:
        if to.exists() and not to.is_dir():
            raise ChexcutError(f"--to {to} is a file; give a folder")
        writable_folder(to, "folder --to")
    for a in chosen:
        with ui.lazy_progress_bar(f"{a.name}", quiet=quiet) as update:
            got = fetch(a, mirror=mirror, to=to, progress=update)
        if not quiet:
            ui.err.print(f"{a.name}: {got['action']} {got['path']}")


@weights_app.command("path")
def weights_path(arch: Annotated[str, typer.Argument(help="Architecture.", autocompletion=_complete_arch)]):
    """The exact path where a copied weights file must go for chexcut (and its library) to find it."""
    from chexcut.models.libraries import library_of
    from chexcut.models.registry import get_arch

    a = get_arch(arch)
    typer.echo(str(library_of(a).place_path(a)))


# ----------------------------------------------------------------------------- study / report / demo

study_app = typer.Typer(help="Plan and run a grid of finetune + evaluate runs (locally or on Slurm).",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


def _ints(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in _split(value)]
    except ValueError:
        raise ChexcutError(f"--{name} must be comma-separated integers, not {value!r}") from None


@study_app.command("plan", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def study_plan(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Dataset folder for every run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write plan.json, run.sh, commands.txt into.")],
    archs: Annotated[Optional[str], typer.Option("--archs", help="Comma-separated architectures [default: the 16 of the paper].")] = None,
    weights: Annotated[str, typer.Option("--weights", help="Comma-separated: imagenet,none.")] = "imagenet,none",
    drops: Annotated[str, typer.Option("--drops", help="Comma-separated drops (levels past an arch's blocks are skipped).")] = "0,1,2",
    seeds: Annotated[str, typer.Option("--seeds")] = "0",
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Replicates for each run's evaluate.")] = 1000,
    slurm: Annotated[bool, typer.Option("--slurm", help="Also write study.sbatch (one array task per run).")] = False,
    bench: Annotated[bool, typer.Option("--bench", help="Each run also measures its model's latency and throughput (bench.json; shown by report).")] = False,
    nodes: Annotated[int, typer.Option("--nodes", help="With --slurm: nodes per run (torchrun with a c10d rendezvous on the first).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Plan over an existing study plan.")] = False,
    gpus_per_task: Annotated[int, typer.Option("--gpus-per-task", help="GPUs per Slurm task (torchrun when > 1).")] = 1,
    sbatch: Annotated[Optional[str], typer.Option("--sbatch", help="Extra #SBATCH lines, comma-separated (e.g. --partition=gpu,--time=12:00:00).")] = None,
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
):
    """Write a study plan; extra options after the known ones go to every finetune (e.g. --recipe fast)."""
    from chexcut import ui
    from chexcut.models.registry import PAPER_ARCHS
    from chexcut.study.plan import plan_study

    _check_finetune_args(list(ctx.args), data)

    plan = plan_study(out, data, archs=_split(archs) if archs else PAPER_ARCHS, weights=_split(weights),
                      drops=_ints(drops, "drops"), seeds=_ints(seeds, "seeds"), finetune_args=list(ctx.args),
                      bootstrap=bootstrap, slurm=slurm, gpus_per_task=gpus_per_task, slurm_args=_split(sbatch) or [],
                      bench=bench, nodes=nodes, force=force)
    if json_out:
        ui.print_json(plan)
        return
    ui.err.print(f"planned {len(plan['runs'])} runs in {out}: run.sh, commands.txt, plan.json"
                 + (", study.sbatch" if slurm else ""))
    for s in plan["skipped"]:
        ui.err.print(f"skipped {s}")
    ui.err.print(f"next: chexcut study run {out} --jobs N   (or bash {out}/run.sh"
                 + (f", or sbatch {out}/study.sbatch)" if slurm else ")"))


def _check_finetune_args(args: list[str], data: Path) -> None:
    """The options a plan passes to every finetune, checked by finetune's own parser at plan time."""
    import click

    command = typer.main.get_command(app).commands["finetune"]
    try:
        ctx = command.make_context("finetune", ["resnet18", "--data", str(data), "--out", "x", *args],
                                   resilient_parsing=False)
    except click.UsageError as e:
        msg = " ".join(e.format_message().replace("Value error, ", "").split())
        raise ChexcutError(f"an option for the runs' finetune is wrong: {msg}") from None
    _train_config(ctx.params)


@study_app.command("run")
def study_run(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Runs at once (one GPU each when there are GPUs).")] = 1,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Execute a plan locally with a live status table; failures never stop the other runs."""
    from chexcut import ui
    from chexcut.study.plan import run_plan

    with ui.StudyStatus(study_dir, quiet=quiet) as update:
        all_jobs = run_plan(study_dir, jobs=jobs, on_update=update)
    failed = [j for j in all_jobs if j.status == "failed"]
    if not quiet:
        ui.err.print(ui.study_summary(all_jobs, study_dir))
    if failed:
        raise typer.Exit(1)


@app.command()
def report(
    targets: Annotated[list[Path], typer.Argument(help="Study folders or run directories.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write report.md, results.csv, results.json and PNG plots here.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Replicates for the paired comparisons.")] = 1000,
    alpha: Annotated[float, typer.Option("--alpha")] = 0.05,
    margin: Annotated[float, typer.Option("--margin", help="Non-inferiority margin (AUROC units) for parameter efficiency.")] = 0.02,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_path: Annotated[Optional[str], typer.Option("--json", help="- prints the report JSON to stdout.")] = None,
):
    """Turn many runs into the CheXtransfer findings: tables, correlations, parameter efficiency, plots."""
    from chexcut import ui
    from chexcut.evaluation.evaluate import check_parameters
    from chexcut.study.report import build_report, write_outputs

    check_parameters(bootstrap=bootstrap, alpha=alpha, margin=margin)
    if out:
        from chexcut.fileio import check_output_folder

        check_output_folder(out, "report folder")
    if json_path and json_path != "-":
        from chexcut.fileio import check_output_file

        check_output_file(Path(json_path), "--json")
    rep = build_report(targets, bootstrap=bootstrap, alpha=alpha, seed=seed, margin=margin)
    if out:
        written = write_outputs(rep, out)
        ui.err.print(f"wrote {', '.join(p.name for p in written)} to {out}")
    if json_path == "-":
        ui.print_json(rep)
    elif json_path:
        from chexcut.fileio import write_json

        write_json(Path(json_path), rep)
    if json_path != "-":
        for t in ui.report_tables(rep):
            ui.out.print(t)


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the phantom data, study and report.")] = Path("chexcut-demo"),
    archs: Annotated[str, typer.Option("--archs")] = "resnet18,densenet121,mobilenet_v2",
    drops: Annotated[str, typer.Option("--drops")] = "0,1,2",
    n: Annotated[int, typer.Option("--n", help="Phantom images.")] = 500,
    image_size: Annotated[int, typer.Option("--image-size")] = 64,
    epochs: Annotated[int, typer.Option("--epochs")] = 4,
    bootstrap: Annotated[int, typer.Option("--bootstrap")] = 500,
    jobs: Annotated[int, typer.Option("--jobs", help="Runs at once (1: all in this process, no import per run).")] = 1,
    offline: Annotated[bool, typer.Option("--offline", help="Never try the network for ImageNet weights.")] = False,
    mirror: Annotated[Optional[str], typer.Option("--mirror", envvar="CHEXCUT_WEIGHTS_MIRROR", help="Fetch ImageNet weights from this folder or URL (see `weights fetch --to`).")] = None,
):
    """The whole study on phantom data: weights, generate, plan, fine-tune, evaluate, report (CPU: ~3 minutes)."""
    from chexcut import ui
    from chexcut.demo import run_demo

    rep, paths = run_demo(folder, archs=_split(archs) or [], drops=_ints(drops, "drops"), n=n, image_size=image_size,
                          epochs=epochs, bootstrap=bootstrap, jobs=jobs, offline=offline, mirror=mirror)
    for t in ui.report_tables(rep):
        ui.out.print(t)
    ui.err.print(f"report: {paths['report']}/report.md (plots, results.csv, results.json beside it)")


# ----------------------------------------------------------------------------- entry point

def _interrupted() -> int:
    """Say how the process was stopped: 143 after SIGTERM, 130 after Ctrl-C."""
    from chexcut import errors

    print(f"chexcut: {'terminated (SIGTERM)' if errors.TERMINATED else 'interrupted'}", file=sys.stderr)
    return 143 if errors.TERMINATED else 130


def _environment_error(e: BaseException) -> str | None:
    """One line for failures the environment causes (no space, quota, read-only, permissions); else None."""
    import errno

    codes = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}
    if isinstance(e, OSError) and e.errno in codes:
        where = e.filename or "a file"
        return (f"{codes[e.errno]} writing {where}; earlier checkpoints and caches are kept, temporary files "
                f"removed: free space or fix the permissions, then run the same command again")
    text = str(e)
    if "No space left on device" in text or "Disk quota exceeded" in text:  # safetensors and torch.save wrap it
        return ("no space left on the device while writing; earlier checkpoints and caches are kept, temporary "
                "files removed: free space, then run the same command again (finetune: --resume)")
    return None


def main(argv: Optional[list[str]] = None) -> None:
    """Run the app; user errors exit 2 with one line, Ctrl-C 130, bugs 1 (tracebacks with --debug)."""
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = app(args=args, prog_name="chexcut", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # Typer turns an interrupt into an exit code itself
            code = _interrupted()
    except ChexcutError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"chexcut: error: {e}", file=sys.stderr)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except click_exception as e:  # bad option values, missing arguments: one line, like every user error
        where = getattr(getattr(e, "ctx", None), "command_path", None)
        hint = f" (see `{where} --help`)" if where else ""
        msg = ' '.join(e.format_message().replace("Value error, ", "").split())
        print(f"chexcut: error: {msg}{hint}", file=sys.stderr)
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = _interrupted()
    except BrokenPipeError:
        code = 0
    except Exception as e:
        environment = _environment_error(e)
        if environment:  # a full disk, a read-only file system, no permission: the user's to fix
            if debug:
                import traceback

                traceback.print_exc()
            print(f"chexcut: error: {environment}", file=sys.stderr)
            sys.exit(2)
        if debug:
            import traceback

            traceback.print_exc()
        print(f"chexcut: internal error: {type(e).__name__}: {e}"
              + ("" if debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        code = 1
    sys.exit(code)
