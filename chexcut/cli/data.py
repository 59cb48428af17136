"""``prepare`` (the image cache) and ``phantom`` (synthetic CheXpert-layout data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Resize, Views
from chexcut.cli.app import OPT, DataDir, app, check_json, data_options, emit_json
from chexcut.errors import ChexcutError
from chexcut.options import given


@app.command()
def prepare(
    data: DataDir,
    image_size: Optional[int] = OPT.image_size, resize: Optional[Resize] = OPT.resize, cache: Optional[Path] = OPT.cache,
    workers: Optional[int] = OPT.workers, csv: Optional[str] = OPT.csv, path_col: Optional[str] = OPT.path_col,
    labels: Optional[str] = OPT.labels, views: Optional[Views] = OPT.views, uncertain: Optional[str] = OPT.uncertain,
    blank: Optional[Blank] = OPT.blank, valid_frac: Optional[float] = OPT.valid_frac,
    label_map: Optional[str] = OPT.label_map, skip_missing: bool = OPT.skip_missing, skip_bad: bool = OPT.skip_bad,
    images_outside: bool = OPT.images_outside, json: Optional[str] = OPT.json, quiet: bool = OPT.quiet,
):
    """Decode and resize every selected image once into a uint8 cache; print label prevalence."""
    import chexcut.cli.ui as ui
    from chexcut.choices import DEFAULT_IMAGE_SIZE
    from chexcut.data.cache import prepare_cache
    from chexcut.data.datasets import split_ref
    from chexcut.data.tables import check_files, load_split

    opts = data_options(data, csv, path_col, labels, views, uncertain, blank, valid_frac, label_map, images_outside)
    image_size, resize = image_size or DEFAULT_IMAGE_SIZE, str(resize or Resize.squash)
    check_json(json, inputs=[f for f in (csv, label_map) if f], protected=[split_ref(data)[0]])
    table = check_files(load_split(data, "all", opts), skip_missing)
    if cache is not None:
        from chexcut.fileio import check_output_folder

        check_output_folder(cache, "image cache folder")
    with ui.lazy_progress_bar(f"decoding to {image_size}px", len(table), quiet=quiet or json == "-") as update:
        cache_obj, stats = prepare_cache(table.files, image_size, resize, cache, workers, progress=update,
                                         skip_bad=skip_bad)
    summary = {"images": len(cache_obj.paths), "image_size": image_size, "resize": resize, "cache": stats["folder"],
               "decoded": stats["decoded"], "reused": stats["reused"], "bad": stats["bad"],
               "notes": table.notes, "options": opts.to_json(), "prevalence": table.prevalence()}
    emit_json(json, summary)
    if json != "-" and not quiet:
        ui.out.print(ui.prevalence_table(table.prevalence(), f"Label prevalence ({len(table)} images, "
                                         f"uncertain={opts.uncertain}, blank={opts.blank})"))
        for note in table.notes:
            ui.err.print(f"note: {note}")
        if stats["bad"]:
            ui.err.print(f"[yellow]skipped {len(stats['bad'])} unreadable images[/] (first: {stats['bad'][0]})")
        verb = "reused" if stats["decoded"] == 0 else f"decoded {stats['decoded']}, reused {stats['reused']}"
        ui.err.print(f"cache {stats['folder']}: {len(cache_obj.paths)} images ({verb})")


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to write CheXpert-v1.0-small/ into (another --layout: the folder itself).")],
    n: Optional[int] = OPT.n, image_size: Optional[int] = OPT.image_size, seed: int = OPT.seed, masks: bool = OPT.masks,
    layout: str = OPT.layout, quiet: bool = OPT.quiet,
):
    """Write a synthetic dataset in the exact CheXpert layout, with findings a CNN can learn."""
    import chexcut.cli.ui as ui
    from chexcut.data.phantom import DEFAULT_N, make_phantom
    from chexcut.data.phantom_layouts import LAYOUTS, make_layout_phantom
    from chexcut.fileio import check_output_folder

    if layout not in LAYOUTS:
        raise ChexcutError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if masks and layout != "chexpert":
        raise ChexcutError("--masks is written for the chexpert layout only")
    check_output_folder(out, "phantom folder")
    n = n if n is not None else DEFAULT_N
    with ui.lazy_progress_bar("drawing phantom X-rays", n, quiet=quiet) as update:
        if layout == "chexpert":
            root = make_phantom(out, n=n, **given(image_size=image_size), seed=seed, progress=update, masks=masks)
        else:
            root = make_layout_phantom(out, layout, n, **given(image_size=image_size), seed=seed, progress=update)
    if not quiet:
        ui.err.print(f"wrote {n} images to {root} ({layout} layout; read it with --data {layout}:{root})")


datasets_app = typer.Typer(help="The published chest X-ray data sets chexcut reads as they are (--data SET:DIR), and "
                                "their harmonised index.", no_args_is_help=False)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback(invoke_without_command=True)
def datasets(ctx: typer.Context,
             json: Optional[str] = OPT.json):
    """List the supported data sets: labels, official split, demographics, views, image format."""
    if ctx.invoked_subcommand is not None:
        return
    import chexcut.cli.ui as ui
    from chexcut.data.datasets import DATASETS

    check_json(json)
    emit_json(json, [d.summary() for d in DATASETS.values()])
    if json != "-":
        ui.out.print(_datasets_table(list(DATASETS.values())))


@datasets_app.command("index")
def datasets_index(
    ref: Annotated[str, typer.Argument(help="SET:DIR (e.g. nih:/data/nih), or a folder whose label file names its set.")],
    out: Optional[Path] = OPT.out, label_map: Optional[str] = OPT.label_map, all_labels: bool = OPT.all_labels,
    json: Optional[str] = OPT.json,
):
    """Write a set's harmonised index (path, patient, study, view, sex, age, split, the 14 labels, its own) without
    decoding an image; say what the files hold and which images are missing."""
    import chexcut.cli.ui as ui
    from chexcut.data.datasets import split_ref, write_index

    check_json(json, inputs=[label_map] if label_map else [], protected=[split_ref(ref)[0]], others=[(out, "-o")])
    summary, missing = write_index(ref, out, label_map, all_labels)
    emit_json(json, summary)
    if json == "-":
        return
    (ui.err if str(out) == "-" else ui.out).print(_index_table(summary))
    if missing:
        ui.err.print(f"[yellow]{len(missing):,} of {summary['images']:,} images are missing[/] (first: "
                     f"{', '.join(missing[:3])}); `--skip-missing` trains and evaluates without them")


def _datasets_table(declared):
    """`chexcut datasets`: one row per published set."""
    from rich import box
    from rich.table import Table

    t = Table(title="Published data sets (--data SET:DIR)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("set", "title", "images", "official split", "not annotated of the CheXpert 14"):
        t.add_column(col, overflow="fold")
    for d in declared:
        t.add_row(d.name, d.title, d.image_format, "yes" if d.official_split else "no (patient-level)",
                  ", ".join(d.not_annotated) or "-")
    t.caption = "views, demographics, files and the label mapping: chexcut datasets --json"
    t.caption_justify = "left"
    return t


def _index_table(s: dict):
    """`chexcut datasets index`: what the files hold."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"{s['title']}: {s['images']:,} images, {s['patients']:,} patients, {s['studies']:,} studies "
                    f"-> {s['index']}", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("label", "positive", "negative", "uncertain", "blank"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for name, c in s["labels"].items():
        if isinstance(c, str):
            t.add_row(name, c, "", "", "")
        else:
            t.add_row(name, f"{c['positive']:,}", f"{c['negative']:,}", f"{c['uncertain']:,}", f"{c['blank']:,}")
    t.caption = ("views " + ", ".join(f"{k} {v:,}" for k, v in s["views"].items()) + "; AP/PA "
                 + ", ".join(f"{k} {v:,}" for k, v in s["ap_pa"].items()) + "; sex "
                 + ", ".join(f"{k} {v:,}" for k, v in s["sex"].items()) + "; split "
                 + ", ".join(f"{k} {v:,}" for k, v in s["split"].items()))
    t.caption_justify = "left"
    return t
