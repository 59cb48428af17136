"""`chexcut demo`: the whole workflow on phantom data, on whatever device is there.

Phantom data -> (ImageNet weights, when they can be had) -> study plan -> runs -> report. The runs execute
in this process one after another (``--jobs 1``), so a CPU does not pay an interpreter and a torch import
for every finetune and every evaluate; ``--jobs N`` runs N processes at once.
"""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError


def imagenet_cached(arch: str) -> bool:
    from chexcut.models.libraries import library_of
    from chexcut.models.registry import get_arch

    a = get_arch(arch)
    return library_of(a).is_cached(a)


def get_weights(archs: list[str], offline: bool, mirror: str | None, say) -> tuple[list[str], str | None]:
    """Make the archs' ImageNet weights available if possible: (weights kinds to run, why not pretrained)."""
    from chexcut.models.libraries import host_resolves, library_of
    from chexcut.models.registry import get_arch
    from chexcut.models.weights import fetch

    missing = [get_arch(a) for a in archs if not imagenet_cached(a)]
    if not missing:
        return ["imagenet", "none"], None
    names = " ".join(a.name for a in missing)
    fill = (f"`chexcut weights fetch {names}` on a machine with network (or `--to DIR` there, then "
            f"`chexcut demo ... --mirror DIR` here)")
    if offline:
        return ["none"], f"--offline and ImageNet weights not cached for {names}: {fill}"
    if mirror is None and not host_resolves(library_of(missing[0]).weights_meta(missing[0])["url"]):
        return ["none"], f"no network and ImageNet weights not cached for {names}: {fill}"
    sizes = [library_of(a).size_mb(a) for a in missing]
    total = sum(s for s in sizes if s)
    say(f"fetching ImageNet weights from {mirror or 'the network'}: "
        + ", ".join(f"{a.name} ({s:.0f} MB)" if s else a.name for a, s in zip(missing, sizes))
        + (f", {total:.0f} MB in all" if total else ""))
    try:
        for a in missing:
            fetch(a, mirror=mirror)
    except ChexcutError as e:
        return ["none"], f"could not fetch ImageNet weights ({e}); {fill}"
    return ["imagenet", "none"], None


def run_demo(folder: Path, archs: list[str], drops: list[int], n: int = 500, image_size: int = 64,
             epochs: int = 3, bootstrap: int = 500, jobs: int = 1, quiet: bool = False, offline: bool = False,
             mirror: str | None = None):
    """Phantom data -> study plan -> runs -> report. Returns (report, paths)."""
    from chexcut import ui
    from chexcut.data.cache import prepare_cache
    from chexcut.data.chexpert import DataOptions, load_split
    from chexcut.data.phantom import make_phantom
    from chexcut.models.registry import get_arch
    from chexcut.study.findings import build_report
    from chexcut.study.plan import Grid, plan_study
    from chexcut.study.render import write_outputs
    from chexcut.study.runner import run_plan, run_plan_in_process
    from chexcut.training.config import FinetuneOptions

    archs = [get_arch(a).name for a in archs]  # every argument checked before any work
    if not archs or not drops or any(d < 0 for d in drops):
        raise ChexcutError("--archs and --drops must name at least one architecture and drops >= 0")
    for name, v, low in (("--jobs", jobs, 1), ("--epochs", epochs, 1), ("--bootstrap", bootstrap, 0), ("--n", n, 20)):
        if v < low:
            raise ChexcutError(f"{name} must be at least {low}, not {v}")
    from chexcut.fileio import check_output_folder

    folder = check_output_folder(Path(folder), "demo folder")
    say = (lambda msg: None) if quiet else ui.err.print
    weights, no_pretrained = get_weights(archs, offline, mirror, say)
    if no_pretrained:
        say(f"[yellow]random init only:[/] {no_pretrained}")
    data = folder / "data"
    if not (data / "CheXpert-v1.0-small" / "train.csv").is_file():
        with ui.progress_bar("phantom X-rays", n, quiet=quiet) as update:
            make_phantom(data, n=n, image_size=max(image_size, 64), seed=0, progress=update)
    table = load_split(data, "all", DataOptions())
    cache_dir = folder / "cache"
    with ui.progress_bar(f"image cache at {image_size}px", len(table), quiet=quiet) as update:
        prepare_cache(table.files, image_size, folder=cache_dir, progress=update)
    # a short run: BatchNorm statistics re-estimated before validating
    options = FinetuneOptions(train={"image_size": image_size, "epochs": epochs, "batch_size": 32, "lr": 1e-3,
                                     "val_every": 100000, "workers": 1, "precise_bn": 512},
                              data={"uncertain": "ignore"}, cache=str(cache_dir.resolve()))
    plan = plan_study(folder / "study", data, Grid(archs=tuple(archs), weights=tuple(weights), drops=tuple(drops)),
                      options, bootstrap=bootstrap)
    with ui.StudyStatus(folder / "study", quiet=quiet) as update:
        jobs_done = (run_plan_in_process(folder / "study", on_update=update) if jobs == 1
                     else run_plan(folder / "study", jobs=jobs, on_update=update))
    failed = [j for j in jobs_done if j.status == "failed"]
    if failed and len(failed) == len(jobs_done):
        raise ChexcutError(f"every demo run failed; see {folder}/study/{failed[0].run['run_dir']}/log.txt")
    rep = build_report([folder / "study"], bootstrap=bootstrap,
                       fill_hint=no_pretrained and f"{no_pretrained}; then run `chexcut demo {folder}` again")
    write_outputs(rep, folder / "report")
    return rep, {"report": folder / "report", "study": folder / "study", "plan": plan}
