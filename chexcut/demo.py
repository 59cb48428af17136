"""`chexcut demo`: the whole workflow on phantom data, on whatever device is there.

Phantom data -> (ImageNet weights, when they can be had) -> study plan -> runs -> report. The runs execute
in this process one after another (``--jobs 1``), so a CPU does not pay an interpreter and a torch import
for every finetune and every evaluate; ``--jobs N`` runs N processes at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Demo:
    """The demo's study: architectures x drops (pretrained when the weights can be had, and random init) on
    ``n`` phantom images at ``image_size`` px, ``epochs`` each; ``seed`` draws the phantom and seeds the runs."""

    archs: tuple[str, ...] = ("resnet18", "densenet121", "mobilenet_v2", "vit_tiny_patch16_224")
    drops: tuple[int, ...] = (0, 1, 2)
    n: int = 500
    image_size: int = 64
    epochs: int = 4
    bootstrap: int = 500
    seed: int = 0

    def check(self) -> "Demo":
        """Every argument checked before any work."""
        from chexcut.models.registry import get_arch

        archs = tuple(get_arch(a).name for a in self.archs)
        if not archs or not self.drops or any(d < 0 for d in self.drops):
            raise ChexcutError("--archs and --drops must name at least one architecture and drops >= 0")
        from chexcut.choices import check_bounds

        for name in ("epochs", "bootstrap", "seed", "image_size"):
            check_bounds(name, getattr(self, name))
        if self.n < 20:
            raise ChexcutError(f"--n must be at least 20, not {self.n}")
        return replace(self, archs=archs)


def _silent(*args, **kwargs):
    """A callback that shows nothing: ``say(msg)``, ``progress(what, total)`` and ``status(study)`` give context
    managers whose update does nothing."""
    import contextlib

    return contextlib.nullcontext(lambda *a, **k: None)


def run_demo(folder: Path, demo: Demo = Demo(), jobs: int = 1, offline: bool = False, mirror: str | None = None, *,
             say=None, progress=None, status=None):
    """Phantom data -> study plan -> runs -> report. Returns (report, paths). The caller renders: ``say(text)``
    for a message, ``progress(what, total)`` a context manager yielding ``update(done, total=None)``, and
    ``status(study_dir)`` one yielding ``on_update(jobs)`` (all silent by default)."""
    from chexcut.fileio import check_output_folder
    from chexcut.study.findings import build_report
    from chexcut.study.render import write_outputs
    from chexcut.study.runner import run_plan, run_plan_in_process

    say, progress, status = say or (lambda text: None), progress or _silent, status or _silent
    demo = demo.check()
    if jobs < 1:
        raise ChexcutError(f"--jobs must be at least 1, not {jobs}")
    folder = check_output_folder(Path(folder), "demo folder")
    weights, no_pretrained = get_weights(list(demo.archs), offline, mirror, say)
    if no_pretrained:
        say(f"random init only: {no_pretrained}")
    plan = _plan(folder, demo, weights, progress)
    with status(folder / "study") as update:
        jobs_done = (run_plan_in_process(folder / "study", on_update=update) if jobs == 1
                     else run_plan(folder / "study", jobs=jobs, on_update=update))
    failed = [j for j in jobs_done if j.status == "failed"]
    if failed and len(failed) == len(jobs_done):
        raise ChexcutError(f"every demo run failed; see {folder}/study/{failed[0].run['run_dir']}/log.txt")
    rep = build_report([folder / "study"], bootstrap=demo.bootstrap,
                       fill_hint=no_pretrained and f"{no_pretrained}; then run `chexcut demo {folder}` again")
    write_outputs(rep, folder / "report", card_of=folder / "study")
    return rep, {"report": folder / "report", "study": folder / "study", "plan": plan}


def _plan(folder: Path, demo: Demo, weights: list[str], progress) -> dict:
    """The phantom data (drawn once per seed), its image cache, and the study plan."""
    from chexcut.data.cache import prepare_cache
    from chexcut.data.phantom import make_phantom
    from chexcut.data.tables import DataOptions, load_split
    from chexcut.evaluation.settings import Statistics
    from chexcut.study.plan import Grid, plan_study
    from chexcut.training.config import FinetuneOptions

    data = folder / ("data" if demo.seed == 0 else f"data-seed{demo.seed}")
    if not (data / "CheXpert-v1.0-small" / "train.csv").is_file():
        with progress("phantom X-rays", demo.n) as update:
            make_phantom(data, n=demo.n, image_size=max(demo.image_size, 64), seed=demo.seed, progress=update)
    table = load_split(data, "all", DataOptions())
    cache_dir = folder / "cache"
    with progress(f"image cache at {demo.image_size}px", len(table)) as update:
        prepare_cache(table.files, demo.image_size, folder=cache_dir, progress=update)
    # a short run from random init: BatchNorm statistics re-estimated before validating, and Adam at 3e-3 (at
    # 1e-3, MobileNetV2 fits the 350 training images without learning Pleural Effusion: 0.69-0.78 mean AUROC on
    # seed 0, 0.81-0.91 at 3e-3 for seeds 0-2; ResNet-18 and DenseNet-121 score the same at either rate)
    options = FinetuneOptions(train={"image_size": demo.image_size, "epochs": demo.epochs, "batch_size": 32,
                                     "lr": 3e-3, "val_every": 100000, "workers": 1, "precise_bn": 256},
                              data={"uncertain": "ignore"}, cache=str(cache_dir.resolve()))
    grid = Grid(archs=demo.archs, weights=tuple(weights), drops=demo.drops, seeds=(demo.seed,))
    return plan_study(folder / "study", data, grid, options, statistics=Statistics(bootstrap=demo.bootstrap), force=True)
