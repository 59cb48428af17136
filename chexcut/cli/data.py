"""``prepare`` (the image cache) and ``phantom`` (synthetic CheXpert-layout data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Resize, Views, bound
from chexcut.cli.app import (
    BlankOpt,
    CacheOpt,
    CsvOpt,
    DataDir,
    ImageSizeOpt,
    LabelMapOpt,
    LabelsOpt,
    PathColOpt,
    ResizeOpt,
    SkipBadOpt,
    SkipMissingOpt,
    UncertainOpt,
    ValidFracOpt,
    ViewsOpt,
    app,
    data_options,
)
from chexcut.errors import ChexcutError
from chexcut.models.spec import DEFAULT_IMAGE_SIZE


@app.command()
def prepare(
    data: DataDir,
    image_size: ImageSizeOpt = DEFAULT_IMAGE_SIZE,
    resize: ResizeOpt = Resize.squash,
    cache: CacheOpt = None,
    workers: Annotated[Optional[int], typer.Option("--workers", **bound("workers"), help="Decoding processes (default: CPU count).")] = None,
    csv: CsvOpt = None, path_col: PathColOpt = "Path", labels: LabelsOpt = None, views: ViewsOpt = Views.frontal,
    uncertain: UncertainOpt = "zeros", blank: BlankOpt = Blank.zeros, valid_frac: ValidFracOpt = 0.1,
    label_map: LabelMapOpt = None, skip_missing: SkipMissingOpt = False, skip_bad: SkipBadOpt = False,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
):
    """Decode and resize every selected image once into a uint8 cache; print label prevalence."""
    import chexcut.cli.ui as ui
    from chexcut.data.cache import prepare_cache
    from chexcut.data.chexpert import check_files, load_split

    opts = data_options(csv, path_col, labels, views, uncertain, blank, valid_frac, data=data, label_map=label_map)
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
    image_size: ImageSizeOpt = DEFAULT_IMAGE_SIZE,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"))] = 0,
    masks: Annotated[bool, typer.Option("--masks", help="Also write where each finding was drawn (masks/ PNGs and masks.csv), to score heatmaps.")] = False,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Write a synthetic dataset in the exact CheXpert layout, with findings a CNN can learn."""
    import chexcut.cli.ui as ui
    from chexcut.data.phantom import make_phantom
    from chexcut.fileio import check_output_folder

    check_output_folder(out, "phantom folder")
    with ui.lazy_progress_bar("drawing phantom X-rays", n, quiet=quiet) as update:
        root = make_phantom(out, n=n, image_size=image_size, seed=seed, progress=update, masks=masks)
    if not quiet:
        ui.err.print(f"wrote {n} images to {root} (train.csv, valid.csv)")
