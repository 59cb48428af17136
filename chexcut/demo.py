"""`chexcut demo`: the whole workflow on phantom data, on whatever device is there."""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError


def imagenet_cached(arch: str) -> bool:
    from chexcut.archs import get_arch

    a = get_arch(arch)
    return a.library.is_cached(a)


def run_demo(folder: Path, archs: list[str], drops: list[int], n: int = 500, image_size: int = 64,
             epochs: int = 3, bootstrap: int = 500, jobs: int = 1, quiet: bool = False):
    """Phantom data -> study plan -> study run -> report. Returns (report, paths)."""
    from chexcut import ui
    from chexcut.data.phantom import make_phantom
    from chexcut.report import build_report, write_outputs
    from chexcut.study import plan_study, run_plan

    folder = Path(folder)
    data = folder / "data"
    if not (data / "CheXpert-v1.0-small" / "train.csv").is_file():
        with ui.progress_bar("phantom X-rays", n, quiet=quiet) as update:
            make_phantom(data, n=n, image_size=max(image_size, 64), seed=0, progress=update)
    from chexcut.data.cache import prepare_cache
    from chexcut.data.chexpert import DataOptions, load_split

    table = load_split(data, "all", DataOptions())
    cache_dir = folder / "cache"
    with ui.progress_bar(f"image cache at {image_size}px", len(table), quiet=quiet) as update:
        prepare_cache(table.files, image_size, folder=cache_dir, progress=update)
    weights = ["imagenet", "none"] if all(imagenet_cached(a) for a in archs) else ["none"]
    if not quiet:
        ui.err.print(f"weights: {', '.join(weights)}"
                     + ("" if "imagenet" in weights else " (ImageNet weights are not cached: random init only)"))
    ft = ["--image-size", str(image_size), "--epochs", str(epochs), "--batch-size", "32", "--lr", "1e-3",
          "--val-every", "100000", "--workers", "1", "--uncertain", "ignore", "--cache", str(cache_dir.resolve())]
    plan = plan_study(folder / "study", data, archs=archs, weights=weights, drops=drops, seeds=(0,),
                      finetune_args=ft, bootstrap=bootstrap)
    with ui.StudyStatus(folder / "study", quiet=quiet) as update:
        jobs_done = run_plan(folder / "study", jobs=jobs, on_update=update)
    failed = [j for j in jobs_done if j.status == "failed"]
    if failed and len(failed) == len(jobs_done):
        raise ChexcutError(f"every demo run failed; see {folder}/study/{failed[0].run['run_dir']}/log.txt")
    rep = build_report([folder / "study"], bootstrap=bootstrap)
    write_outputs(rep, folder / "report")
    return rep, {"report": folder / "report", "study": folder / "study", "plan": plan}
