"""The Typer application, its root options, and what the command modules share: option types, list parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import RESIZE_HELP, Blank, Resize, Views, bound
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


def complete_arch(incomplete: str) -> list[str]:
    from chexcut.models.registry import REGISTRY

    return [a for a in REGISTRY if a.startswith(incomplete)]


TrackOpt = Annotated[Optional[str], typer.Option("--track", help="Log to MLflow at this tracking URI (sqlite:///PATH/mlflow.db, a folder, or a server; default: $CHEXCUT_TRACKING_URI). Needs chexcut[track].")]


def split_list(value: Optional[str], flag: str | None = None) -> Optional[list[str]]:
    """A comma-separated option as a list (None: not given). Given but empty (``--labels ,``) is one line naming
    ``flag``: an empty list must never be read as "all" or "none"."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items and flag:
        raise ChexcutError(f"{flag} {value!r} is an empty list: give at least one comma-separated value")
    return items


def split_repeated(values: Optional[list[str]], flag: str) -> list[str]:
    """A repeatable option whose values may each be a comma list (``--external A --external B,C``): every value,
    in order; each given value checked as :func:`split_list` checks it."""
    return [item for value in values or () for item in split_list(value, flag)]


def ints(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in split_list(value, f"--{name}")]
    except ValueError:
        raise ChexcutError(f"--{name} must be comma-separated integers, not {value!r}") from None


DataDir = Annotated[Path, typer.Argument(help="Dataset folder: CheXpert layout, a published set as SET:DIR (nih:, padchest:, mimic:, vinbigdata:, ...; `chexcut datasets`) or detected from its files, or the base of --csv paths.")]


LabelMapOpt = Annotated[Optional[str], typer.Option("--label-map", help="CSV (chexpert,source) replacing a published set's declared mapping to the CheXpert 14 for the labels it names.")]


CsvOpt = Annotated[Optional[str], typer.Option("--csv", help="A generic CSV instead of train.csv/valid.csv.")]


PathColOpt = Annotated[str, typer.Option("--path-col", help="Column of image paths (relative to DATA).")]


LabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="Comma-separated label columns (default: the CheXpert 14 present).")]


ViewsOpt = Annotated[Views, typer.Option("--views", help="Which views to use.")]


UncertainOpt = Annotated[str, typer.Option("--uncertain", help="Uncertain (-1) labels: ones | zeros | ignore | chexpert | A=ones,B=zeros,default=zeros.")]


BlankOpt = Annotated[Blank, typer.Option("--blank", help="Blank labels: zeros (not mentioned) or ignore.")]


ValidFracOpt = Annotated[float, typer.Option("--valid-frac", help="Valid share of patients when there is no valid.csv.")]


ImageSizeOpt = Annotated[int, typer.Option("--image-size", **bound("image_size"), help="Square image size in pixels.")]


ResizeOpt = Annotated[Resize, typer.Option("--resize", help=RESIZE_HELP)]


CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Image cache folder (default: ~/.cache/chexcut/images/KEY).")]


SkipMissingOpt = Annotated[bool, typer.Option("--skip-missing", help="Proceed without missing image files (reported).")]
ImagesOutsideOpt = Annotated[bool, typer.Option("--images-outside-data", help="Allow image paths in the label file that lead outside the data folder (absolute elsewhere, or with ..); refused by default.")]


SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Proceed past unreadable images (reported).")]


def data_options(csv, path_col, labels, views, uncertain, blank, valid_frac, data=None, label_map=None,
                 images_outside=False):
    """The DataOptions of a command's data options; ``data`` ``SET:DIR`` names the published data set."""
    from chexcut.data.chexpert import DataOptions
    from chexcut.data.datasets import resolve

    # SET:DIR, or a folder holding a published set's label file: the run records the set
    dataset = resolve(data, None, csv)[1] if data is not None else None
    if label_map is not None and Path(label_map).exists():
        label_map = str(Path(label_map).resolve())  # a run or a plan reads it from another folder
    return DataOptions(csv=csv, path_col=path_col, labels=tuple(split_list(labels, "--labels")) if labels is not None else None, views=str(views),
                       uncertain=uncertain, blank=str(blank), valid_frac=valid_frac,
                       dataset=dataset, label_map=label_map, images_outside=bool(images_outside))


def with_declared_options(declared, before: str):
    """Give a command the options of a library declaration (e.g. ``training.config.TRAIN_OPTIONS``) in place of
    its ``**kwargs``, listed before the parameter ``before``: each option's flag, help, default and Typer
    min/max (from ``choices.BOUNDS``) come from the one declaration, never a second copy here."""
    import inspect

    from chexcut.choices import bound as bounds

    def wrap(fn):
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                  for p in inspect.signature(fn, eval_str=True).parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = next(i for i, p in enumerate(params) if p.name == before)
        added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=Annotated[
            o.type if o.default is not None else Optional[o.type],
            typer.Option(o.flag, help=o.help or None, **(bounds(o.name) if o.bound else {}))]) for o in declared]
        fn.__signature__ = inspect.Signature(params[:at] + added + params[at:])
        return fn

    return wrap
