"""The Typer application, its root options, and what the command modules share: option types, list parsing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer

from chexcut.choices import bound
from chexcut.errors import ChexcutError
from chexcut.options import BY_NAME, OPTIONS, Option, given

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


def floats(value: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    """A comma-separated option of numbers as a tuple (None: not given)."""
    try:
        return tuple(float(v) for v in split_list(value, flag)) if value is not None else None
    except ValueError:
        raise ChexcutError(f"{flag} takes numbers separated by commas, not {value!r}") from None


DataDir = Annotated[Path, typer.Argument(help=BY_NAME["data"].help)]


def _typer_option(o: Option):
    """The Typer option of a declaration: flags, default, the general help, bounds, environment variable (the
    per-command help, requirement and shown default are set on the built commands by ``panels.polish``)."""
    return typer.Option(o.default, *o.flags, help=o.help, envvar=o.envvar, **(bound(o.name) if o.bound else {}))


#: ``OPT.name``: the Typer option of every declaration in :mod:`chexcut.options`, the default of a command's
#: parameter ``name`` (``bootstrap: Optional[int] = OPT.bootstrap``).
OPT = SimpleNamespace(**{o.name: _typer_option(o) for o in OPTIONS})


def data_options(data=None, csv=None, path_col=None, labels=None, views=None, uncertain=None, blank=None,
                 valid_frac=None, label_map=None, images_outside=False):
    """The DataOptions of a command's data options (None: DataOptions' default); ``data`` ``SET:DIR`` names the
    published data set."""
    from chexcut.data.datasets import resolve
    from chexcut.data.tables import DataOptions

    # SET:DIR, or a folder holding a published set's label file: the run records the set
    dataset = resolve(data, None, csv)[1] if data is not None else None
    if label_map is not None and Path(label_map).exists():
        label_map = str(Path(label_map).resolve())  # a run or a plan reads it from another folder
    return DataOptions(**given(
        csv=csv, path_col=path_col, labels=tuple(split_list(labels, "--labels")) if labels is not None else None,
        views=views and str(views), uncertain=uncertain, blank=blank and str(blank), valid_frac=valid_frac,
        dataset=dataset, label_map=label_map), images_outside=bool(images_outside))


def check_json(target: Optional[str], inputs=(), protected=(), others=()) -> None:
    """``--json PATH`` checked before any work, with the command's other outputs (``others``: ``(path, flag)``
    pairs): never over an input or a file of a folder read, never two outputs naming one file or both stdout."""
    from chexcut.fileio import check_outputs

    check_outputs([(target, "--json"), *others], inputs=list(inputs), protected=list(protected))


def emit_json(target: Optional[str], data) -> None:
    """``--json -``: the JSON alone on stdout; ``--json PATH``: written there (atomically); None: nothing."""
    if target == "-":
        import chexcut.cli.ui as ui

        ui.print_json(data)
    elif target:
        from chexcut.fileio import write_json

        write_json(Path(target), data)
