"""``list``, ``inspect``, ``truncate`` and ``weights``: architectures, their anatomy, cutting, ImageNet weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Pool, Resize
from chexcut.cli.app import OPT, app, check_json, complete_arch, emit_json, split_list
from chexcut.errors import ChexcutError


@app.command("list")
def list_cmd(json: Optional[str] = OPT.json):
    """Every supported architecture: params, ImageNet top-1, blocks (or layers, stages), maps or tokens, licence."""
    import chexcut.cli.ui as ui
    import chexcut.cli.ui_models as ui_models
    from chexcut.models.anatomy_cache import cached_full_params, cached_weights_meta
    from chexcut.models.registry import REGISTRY

    rows = []
    for a in REGISTRY.values():
        meta = cached_weights_meta(a.name)
        rows.append({"arch": a.name, "source": a.source, "family": a.family.name, "params": cached_full_params(a.name),
                     "top1": meta["top1"], "num_blocks": a.family.num_blocks, "unit": a.family.unit,
                     "output": "tokens" if a.family.tokens else "maps", "pools": list(a.family.pools),
                     "paper": a.paper, "test": a.test, "weights": meta["id"], "license": meta["license"]})
    check_json(json)
    emit_json(json, rows)
    if json != "-":
        ui.out.print(ui_models.arch_list_table(rows))


@app.command()
def inspect(
    target: str = typer.Argument(..., help="Architecture name (see `chexcut list`) or a chexcut model file.",
                                 autocompletion=complete_arch),
    image_size: Optional[int] = OPT.image_size, adapt: Optional[str] = OPT.adapt, json: Optional[str] = OPT.json,
):
    """Block anatomy of an architecture or model file, and what each truncation level costs; with --adapt, what
    that adaptation would train (lora:R: the layers LoRA adapts)."""
    import chexcut.cli.ui as ui
    import chexcut.cli.ui_models as ui_models
    from chexcut.models.anatomy_cache import cached_anatomy
    from chexcut.models.source import ModelSource
    from chexcut.rundir import files_read_under

    check_json(json, inputs=[target, *files_read_under([target])])  # never over the model file it reads
    source = ModelSource.parse(target)
    spec = source.spec() if source.is_file else None
    if spec:
        size = image_size if image_size is not None else spec.preprocess.image_size
        a = cached_anatomy(spec.arch, size, n_labels=len(spec.labels))
        a["model"] = spec.to_json()
    else:
        from chexcut.models.registry import default_image_size, get_arch

        size = image_size if image_size is not None else default_image_size(get_arch(source.arch))
        a = cached_anatomy(source.arch, size, 14)
    if adapt is not None:
        a["adapt"] = adapt_listing_of(spec or source.arch, size, adapt)
    emit_json(json, a)
    if json == "-":
        return
    if spec:
        ui.out.print(f"[bold]{target}[/]: {spec.arch} drop {spec.drop} (keep {spec.keep}/{spec.num_blocks}), "
                     f"{spec.params:,} params, {len(spec.labels)} labels, weights {spec.weights_name}")
    for t in ui_models.anatomy_tables(a, highlight_drop=spec.drop if spec else None):
        ui.out.print(t)
    if adapt is not None:
        ui.out.print(ui_models.adapt_table(a["adapt"]))


def adapt_listing_of(target, image_size: int, adapt: str) -> dict:
    """``inspect --adapt``: what ``adapt`` trains in a model file's model (its spec), or in an architecture's whole
    model (drop 0, 14 labels); built without weights (what is trained does not depend on them)."""
    from chexcut.models.spec import ModelSpec
    from chexcut.models.surgery import rebuild, truncate
    from chexcut.training.adapt import adapt_listing, parse_adapt
    from chexcut.training.lora import check_peft

    if parse_adapt(adapt).kind == "lora":
        check_peft(str(parse_adapt(adapt)))
    model = rebuild(target) if isinstance(target, ModelSpec) else truncate(target, drop=0, weights="none",
                                                                            image_size=image_size)
    return adapt_listing(model, model.chexcut_spec, adapt)


@app.command()
def truncate(
    arch: str = typer.Argument(..., help="Architecture name (see `chexcut list`).", autocompletion=complete_arch),
    out: Optional[Path] = OPT.out, drop: Optional[int] = OPT.drop, keep: Optional[int] = OPT.keep,
    weights: Optional[str] = OPT.weights, labels: Optional[str] = OPT.labels, in_chans: Optional[int] = OPT.in_chans,
    seed: int = OPT.seed, image_size: Optional[int] = OPT.image_size, resize: Optional[Resize] = OPT.resize,
    pool: Optional[Pool] = OPT.pool, force: bool = OPT.force, json: Optional[str] = OPT.json,
    quiet: bool = OPT.quiet,
):
    """Cut final blocks, attach a new head, load weights, write a self-describing model file."""
    import chexcut.cli.ui as ui
    import chexcut.cli.ui_models as ui_models
    from chexcut.fileio import check_writable
    from chexcut.models.anatomy import anatomy, check_image_size
    from chexcut.models.modelfile import save_model
    from chexcut.models.registry import default_image_size, get_arch, resolve_drop
    from chexcut.models.surgery import truncate as do_truncate

    a = get_arch(arch)
    d = resolve_drop(a, drop, keep)
    if out.suffix != ".safetensors":
        raise ChexcutError(f"-o {out}: chexcut model files end in .safetensors")
    image_size = image_size if image_size is not None else default_image_size(a)
    check_image_size(a.name, image_size)
    weights = weights or "imagenet"
    check_writable(out, force=force, inputs=[weights])
    check_json(json, inputs=[weights], others=[(out, "-o")])
    model = do_truncate(a.name, drop=d, weights=weights, labels=split_list(labels, "--labels"), in_chans=in_chans,
                        image_size=image_size, seed=seed, resize=str(resize or Resize.squash),
                        pool=str(pool) if pool else None)
    anat = anatomy(a.name, image_size, n_labels=len(model.chexcut_spec.labels))
    save_model(model, out, force=force)
    spec = model.chexcut_spec
    full, cut = anat.truncations[0], anat.truncations[d]
    emit_json(json, {"path": str(out), "model": spec.to_json(), "full": vars(full), "truncated": vars(cut)})
    if json != "-" and not quiet:
        ui.err.print(ui_models.truncate_table(spec, vars(full), vars(cut)))
        ui.err.print(f"wrote {out}")


weights_app = typer.Typer(help="ImageNet weights and pretraining sources: list, fetch (network or mirror), stage for "
                               "offline clusters.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _archs_arg(archs: Optional[list[str]], all_: bool, paper: bool) -> list:
    """The architectures (their ImageNet weights) and pretraining sources named, in order."""
    from chexcut.models.registry import PAPER_ARCHS, REGISTRY, get_arch
    from chexcut.models.sources import SOURCES

    if sum(map(bool, (archs, all_, paper))) != 1:
        raise ChexcutError("name architectures or pretraining sources, or pass --all or --paper (one of them)")
    names = list(REGISTRY) if all_ else list(PAPER_ARCHS) if paper else archs
    return [SOURCES[n.lower()] if n.lower() in SOURCES else get_arch(n) for n in names]


@weights_app.command("list")
def weights_list(
    paper: bool = OPT.paper, json: Optional[str] = OPT.json,
):
    """Every architecture's weights (id, file, size, URL, whether cached, where, whether its hash verifies), then
    the pretraining sources (what each fits, its licence, whether it is staged). ``--json``: the architectures'."""
    import chexcut.cli.ui as ui
    import chexcut.cli.ui_models as ui_models
    from chexcut.models import sources
    from chexcut.models.registry import PAPER_ARCHS, REGISTRY
    from chexcut.models.weights import status

    check_json(json)
    rows = [status(a) for a in REGISTRY.values() if not paper or a.name in PAPER_ARCHS]
    emit_json(json, rows)
    if json != "-":
        ui.out.print(ui_models.weights_table(rows))
        ui.out.print(ui_models.sources_table([sources.status(s) for s in sources.SOURCES.values()]))


@weights_app.command("fetch")
def weights_fetch(
    archs: Annotated[Optional[list[str]], typer.Argument(help="Architectures (see `chexcut list`) or pretraining sources (see `chexcut weights list`).", autocompletion=complete_arch)] = None,
    all: bool = OPT.all, paper: bool = OPT.paper, mirror: Optional[str] = OPT.mirror, to: Optional[Path] = OPT.to,
    quiet: bool = OPT.quiet,
):
    """Download (or copy from a mirror) and verify ImageNet weights into the libraries' caches, and pretraining
    sources into chexcut's (read through their layout before they are installed)."""
    import chexcut.cli.ui as ui
    from chexcut.fileio import writable_folder
    from chexcut.models.registry import get_arch
    from chexcut.models.sources import Source, fetch_source
    from chexcut.models.weights import fetch

    chosen = _archs_arg(archs, all, paper)
    if to is not None:
        if to.exists() and not to.is_dir():
            raise ChexcutError(f"--to {to} is a file; give a folder")
        writable_folder(to, "folder --to")
    timm_sourced = [get_arch(n) for s in chosen if isinstance(s, Source) and s.layout == "timm" for n in s.archs]
    for a in [c for c in chosen if not (isinstance(c, Source) and c.layout == "timm")] + timm_sourced:
        with ui.lazy_progress_bar(f"{a.name}", quiet=quiet) as update:
            got = (fetch_source if isinstance(a, Source) else fetch)(a, mirror=mirror, to=to, progress=update)
        if not quiet:
            ui.err.print(f"{a.name}: {got['action']} {got['path']}")


@weights_app.command("path")
def weights_path(arch: Annotated[str, typer.Argument(help="Architecture or pretraining source.", autocompletion=complete_arch)]):
    """The exact path where a copied weights file (or a source's file or folder) must go for chexcut to find it."""
    from chexcut.models.libraries import library_of
    from chexcut.models.registry import get_arch
    from chexcut.models.sources import SOURCES, cached_path

    if arch.lower() in SOURCES and SOURCES[arch.lower()].layout != "timm":
        typer.echo(str(cached_path(SOURCES[arch.lower()])))
        return
    a = get_arch(arch)
    typer.echo(str(library_of(a).place_path(a)))
