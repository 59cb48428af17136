"""``bench``, ``export`` (ONNX) and ``explain`` (Grad-CAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import ExportFormat, Precision, Split
from chexcut.cli.app import OPT, app, check_json, complete_arch, emit_json, ints, split_list
from chexcut.errors import ChexcutError
from chexcut.options import given


@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="Architecture (every truncation level) or a model file / run dir.", autocompletion=complete_arch)],
    drops: Optional[str] = OPT.drops, device: Optional[str] = OPT.device, image_size: Optional[int] = OPT.image_size,
    batch: Optional[str] = OPT.batch, precision: Optional[Precision] = OPT.precision, channels_last: Optional[bool] = OPT.channels_last,
    compile: Optional[bool] = OPT.compile, threads: Optional[int] = OPT.threads, runtime: Optional[str] = OPT.runtime,
    max_time: Optional[float] = OPT.max_time, json: Optional[str] = OPT.json, quiet: bool = OPT.quiet,
):
    """Latency, throughput and memory per truncation level, measured on this device (PyTorch or ONNX Runtime)."""
    import chexcut.cli.ui as ui
    from chexcut.deploy.bench import BenchSettings
    from chexcut.deploy.bench import bench as run_bench
    from chexcut.fileio import check_writable

    if json and json != "-":
        from chexcut.rundir import files_read_under

        check_writable(Path(json), force=True, inputs=[target, *(
            f for f in files_read_under([target]) if f.name != "bench.json")])
    with ui.lazy_progress_bar("bench", quiet=quiet or json == "-") as update:
        settings = BenchSettings(**given(device=device, image_size=image_size, batches=tuple(ints(batch, "batch")) if batch is not None else None,
                                         precision=precision and str(precision), channels_last=channels_last,
                                         compile=compile, threads=threads, runtime=runtime, max_run_time=max_time))
        res = run_bench(target, drops=ints(drops, "drops") if drops else None, settings=settings, progress=update)
    emit_json(json, res)
    if json != "-" and not quiet:
        ui.out.print(ui.bench_table(res))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model file, finetune run dir, Hugging Face model folder or hf-hub:ORG/NAME.")],
    out: Optional[Path] = OPT.out, format: Optional[ExportFormat] = OPT.format, onnx: bool = OPT.onnx,
    push: Optional[str] = OPT.push, image_size: Optional[int] = OPT.image_size, force: bool = OPT.force,
    json: Optional[str] = OPT.json,
):
    """ONNX with chexcut's preprocessing and sigmoid inside (uint8 (N,1,H,W) -> (N,14)), checked in ONNX Runtime; or
    with --format hub a Hugging Face model folder that timm (or, for a truncated CNN, chexcut) loads."""
    import chexcut.cli.ui as ui
    from chexcut.rundir import files_read_under

    hub = format == ExportFormat.hub
    check_json(json, inputs=[model, *files_read_under([model])], protected=[out] if hub else [],
               others=[] if hub else [(out, "-o")])
    if hub:
        from chexcut.deploy.hub import export_hub

        res = export_hub(model, out, onnx=onnx, push=push, force=force, image_size=image_size)
        emit_json(json, res)
        if json != "-":
            ui.err.print(f"wrote {res['path']}: {', '.join(res['files'])}; loads in {res['loads_in']}"
                         + (f" ({res['requires_chexcut']})" if res["requires_chexcut"] else "")
                         + (f"; pushed to {res['push']['url']}" if res.get("push") else ""))
        return
    if onnx or push:
        raise ChexcutError("--onnx and --push apply to --format hub")
    from chexcut.deploy.export import export_onnx

    res = export_onnx(model, out, image_size=image_size, force=force)
    emit_json(json, res)
    if json != "-":
        ui.err.print(f"wrote {res['path']}: {res['arch']} drop {res['drop']}, uint8 (N, 1, {res['image_size']}, "
                     f"{res['image_size']}) -> {len(res['labels'])} probabilities; ONNX Runtime vs chexcut max |diff| "
                     f"{res['max_abs_diff']:.1e}")


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="Model file or finetune run dir.")],
    images: Annotated[Optional[list[Path]], typer.Argument(help="Image files or folders (or use --data).")] = None,
    out: Optional[Path] = OPT.out, data: Optional[Path] = OPT.data, csv: Optional[str] = OPT.csv,
    split: Optional[Split] = OPT.split, limit: int = OPT.limit, labels: Optional[str] = OPT.labels,
    top: Optional[int] = OPT.top, layer: Optional[int] = OPT.layer, check: bool = OPT.check,
    check_limit: int = OPT.check_limit, skip_bad: bool = OPT.skip_bad, images_outside: bool = OPT.images_outside,
    json: Optional[str] = OPT.json, quiet: bool = OPT.quiet,
):
    """Grad-CAM heatmaps over the images (Captum's LayerGradCam at the last kept block), with optional checks."""
    import chexcut.cli.ui as ui
    from chexcut.data.datasets import split_ref
    from chexcut.fileio import check_output_folder
    from chexcut.rundir import files_read_under

    if (data is None) == (not images):
        raise ChexcutError("give IMAGES (files or folders) or --data DIR, not both or neither")
    out = out or Path("explain")
    check_output_folder(out, "--out folder")
    # never over the model's files or a file of the folders it reads
    folders = [split_ref(data)[0]] if data is not None else [p for p in images or () if Path(p).is_dir()]
    check_json(json, inputs=[f for f in (model, data, csv, *files_read_under([model])) if f], protected=folders)
    from chexcut.deploy import explain as ex

    request = ex.ExplainInputs(model=model, images=tuple(images or ()), data=data, csv=csv, split=str(split or Split.valid),
                               limit=limit, labels=tuple(split_list(labels, "--labels") or ()) or None, top=top, layer=layer,
                               check=check, check_limit=check_limit, skip_bad=skip_bad, images_outside=images_outside)
    with ui.lazy_progress_bar("explaining", quiet=quiet or json == "-") as update:
        result, inputs = ex.run_explain(request, out, update)
    emit_json(json, result)
    if not quiet and json != "-":
        for name in inputs.skipped:
            ui.err.print(f"[yellow]skipped unreadable image:[/] {name}")
        if check:
            ui.out.print(ui.explain_checks_table(result))
            for name, p in (result.get("pointing_game") or {}).items():
                if p["n"] < ex.MIN_POSITIVES:
                    ui.err.print(f"[yellow]warning:[/] pointing game for {name}: {p['n']} positives with a drawn "
                                 f"region, fewer than {ex.MIN_POSITIVES}: not judged")
        ui.err.print(f"wrote overlays and contact sheets for {len(inputs.paths)} images to {out}")
