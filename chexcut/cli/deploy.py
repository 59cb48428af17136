"""``bench``, ``export`` (ONNX) and ``explain`` (Grad-CAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import ExportFormat, Precision, Split, bound
from chexcut.cli.app import CsvOpt, ImagesOutsideOpt, SkipBadOpt, app, complete_arch, ints, split_list
from chexcut.errors import ChexcutError


@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="Architecture (every truncation level) or a model file / run dir.", autocompletion=complete_arch)],
    drops: Annotated[Optional[str], typer.Option("--drops", help="Comma-separated levels (default: all).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:N (default: cuda if available).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", **bound("image_size"), help="Default: the model file's, or 320 for an architecture.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Latency at the smallest, throughput at the largest.")] = "1,32",
    precision: Annotated[Precision, typer.Option("--precision")] = Precision.fp32,
    channels_last: Annotated[bool, typer.Option("--channels-last")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model first.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", **bound("threads"), help="CPU threads (torch.set_num_threads / ONNX Runtime's intra-op threads).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="torch | onnxruntime (the exported graph).")] = "torch",
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds at most per measurement.")] = 3.0,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the results to PATH (e.g. RUN_DIR/bench.json), or - for stdout.")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Latency, throughput and memory per truncation level, measured on this device (PyTorch or ONNX Runtime)."""
    import chexcut.cli.ui as ui
    from chexcut.deploy.bench import BenchSettings
    from chexcut.deploy.bench import bench as run_bench
    from chexcut.fileio import check_writable, write_json

    if json_path and json_path != "-":
        from chexcut.rundir import files_read_under

        check_writable(Path(json_path), force=True, inputs=[target, *(
            f for f in files_read_under([target]) if f.name != "bench.json")])
    to_stdout = json_path == "-"
    with ui.lazy_progress_bar("bench", quiet=quiet or to_stdout) as update:
        settings = BenchSettings(device=device, image_size=image_size, batches=tuple(ints(batch, "batch")),
                                 precision=str(precision), channels_last=channels_last, compile=compile_,
                                 threads=threads, runtime=runtime, max_run_time=max_time)
        res = run_bench(target, drops=ints(drops, "drops") if drops else None, settings=settings, progress=update)
    if to_stdout:
        ui.print_json(res)
        return
    if json_path:
        write_json(Path(json_path), res)
    if not quiet:
        ui.out.print(ui.bench_table(res))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model file, finetune run dir, Hugging Face model folder or hf-hub:ORG/NAME.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="ONNX file to write (.onnx), or with --format hub the folder.")],
    format_: Annotated[ExportFormat, typer.Option("--format", help="onnx (a graph with the preprocessing and sigmoid inside) or hub (a Hugging Face model folder: model.safetensors, timm's config.json, a model card).")] = ExportFormat.onnx,
    onnx: Annotated[bool, typer.Option("--onnx", help="With --format hub: the ONNX graph in the folder too (model.onnx).")] = False,
    push: Annotated[Optional[str], typer.Option("--push", help="With --format hub: upload the folder to the Hugging Face repository ORG/NAME (token: HF_TOKEN or `hf auth login`).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", **bound("image_size"), help="Size of the example input (default: the model file's); the batch stays dynamic. With --format hub: the input size the folder records (a ViT resampled).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file (or replace the folder).")] = False,
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
):
    """ONNX with chexcut's preprocessing and sigmoid inside (uint8 (N,1,H,W) -> (N,14)), checked in ONNX Runtime; or
    with --format hub a Hugging Face model folder that timm (or, for a truncated CNN, chexcut) loads."""
    import chexcut.cli.ui as ui

    if str(format_) == "hub":
        from chexcut.deploy.hub import export_hub

        res = export_hub(model, out, onnx=onnx, push=push, force=force, image_size=image_size)
        if json_out:
            ui.print_json(res)
        else:
            ui.err.print(f"wrote {res['path']}: {', '.join(res['files'])}; loads in {res['loads_in']}"
                         + (f" ({res['requires_chexcut']})" if res["requires_chexcut"] else "")
                         + (f"; pushed to {res['push']['url']}" if res.get("push") else ""))
        return
    if onnx or push:
        raise ChexcutError("--onnx and --push apply to --format hub")
    from chexcut.deploy.export import export_onnx

    res = export_onnx(model, out, image_size=image_size, force=force)
    if json_out:
        ui.print_json(res)
    else:
        ui.err.print(f"wrote {res['path']}: {res['arch']} drop {res['drop']}, uint8 (N, 1, {res['image_size']}, "
                     f"{res['image_size']}) -> {len(res['labels'])} probabilities; ONNX Runtime vs chexcut max |diff| "
                     f"{res['max_abs_diff']:.1e}")


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="Model file or finetune run dir.")],
    images: Annotated[Optional[list[Path]], typer.Argument(help="Image files or folders (or use --data).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays and contact sheets.")] = Path("explain"),
    data: Annotated[Optional[Path], typer.Option("--data", help="A dataset instead of IMAGES (with --csv, --split, --limit).")] = None,
    csv: CsvOpt = None,
    split: Annotated[Split, typer.Option("--split", help="Rows of --data.")] = Split.valid,
    limit: Annotated[int, typer.Option("--limit", **bound("limit"), help="At most this many images.")] = 16,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated labels (default: the 5 competition tasks).")] = None,
    top: Annotated[Optional[int], typer.Option("--top", **bound("top"), help="Instead of --labels: each image's K most probable labels.")] = None,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Block index (from `chexcut inspect`) (default: the last kept block).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Pointing game (phantom data with --masks: every masked frontal image of the split, up to --check-limit) and the randomisation sanity check.")] = False,
    check_limit: Annotated[int, typer.Option("--check-limit", **bound("check_limit"), help="At most this many images for the pointing game.")] = 2000,
    skip_bad: SkipBadOpt = False,
    images_outside: ImagesOutsideOpt = False,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the listing (or with --check the checks) to PATH, or - for stdout.")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Grad-CAM heatmaps over the images (Captum's LayerGradCam at the last kept block), with optional checks."""
    import chexcut.cli.ui as ui
    from chexcut.data.datasets import split_ref
    from chexcut.fileio import check_output_file, check_output_folder
    from chexcut.rundir import files_read_under

    if (data is None) == (not images):
        raise ChexcutError("give IMAGES (files or folders) or --data DIR, not both or neither")
    check_output_folder(out, "--out folder")
    if json_path and json_path != "-":  # never over the model's files or a file of the folders it reads
        folders = [split_ref(data)[0]] if data is not None else [p for p in images or () if Path(p).is_dir()]
        check_output_file(Path(json_path), "--json", inputs=[model, data, csv, *files_read_under([model])],
                          protected=folders)
    from chexcut.deploy import explain as ex

    request = ex.ExplainInputs(model=model, images=tuple(images or ()), data=data, csv=csv, split=str(split),
                               limit=limit, labels=tuple(split_list(labels, "--labels") or ()) or None, top=top, layer=layer,
                               check=check, check_limit=check_limit, skip_bad=skip_bad, images_outside=images_outside)
    with ui.lazy_progress_bar("explaining", quiet=quiet or json_path == "-") as update:
        result, inputs = ex.run_explain(request, out, update)
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
            for name, p in (result.get("pointing_game") or {}).items():
                if p["n"] < ex.MIN_POSITIVES:
                    ui.err.print(f"[yellow]warning:[/] pointing game for {name}: {p['n']} positives with a drawn "
                                 f"region, fewer than {ex.MIN_POSITIVES}: not judged")
        ui.err.print(f"wrote overlays and contact sheets for {len(inputs.paths)} images to {out}")
