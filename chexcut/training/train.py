"""Fine-tuning, readable top to bottom: data -> model -> loop -> validate -> checkpoint.

One process per GPU under ``torchrun`` (DDP; rank 0 alone logs and writes), or a single
process on one GPU or the CPU. Everything a run needs to continue lives in its run directory
(:mod:`chexcut.rundir` names the files). Reading order: :func:`finetune` (locks the folder) ->
:func:`_finetune` (opens the data, builds model and optimizer, restores a checkpoint) ->
:func:`train_loop` (the loop) with :func:`validate` and :func:`save_checkpoint`.

On CPU with a fixed seed, N steps straight and k steps + interruption + resume give the
same bits: batches are a pure function of (seed, epoch), and the RNG state is checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chexcut.choices import Precision, Recipe, Resize, check
from chexcut.errors import ChexcutError
from chexcut.data.chexpert import dataset_fingerprint
from chexcut.fileio import atomic_path, write_json
from chexcut.rundir import TRAINING_FILES, MetricsLog, RunDir

RECIPES: dict[str, dict] = {
    # CheXpert / CheXtransfer: Adam 1e-4, batch 16, 3 epochs, 320 px, no augmentation,
    # validation every 4,800 iterations and at each epoch end.
    "paper": dict(optimizer="adam", lr=1e-4, batch_size=16, epochs=3, image_size=320, val_every=4800,
                  precision="fp32", channels_last=False, compile=False, schedule="constant", warmup=0.0,
                  weight_decay=0.0),
    # The same images per validation (76,800), 16x the batch, sqrt-scaled LR with warmup + cosine,
    # bf16 autocast, channels_last and torch.compile on GPU.
    "fast": dict(optimizer="adamw", lr=4e-4, batch_size=256, epochs=3, image_size=320, val_every=300,
                 precision="auto", channels_last=True, compile=True, schedule="cosine", warmup=0.05,
                 weight_decay=1e-5),
}


@dataclass
class TrainConfig:
    recipe: str = "paper"
    optimizer: str = "adam"
    lr: float = 1e-4
    batch_size: int = 16
    epochs: int = 3
    image_size: int = 320
    val_every: int = 4800
    precision: str = "fp32"  # bf16 | fp16 | fp32 | auto
    channels_last: bool = False
    compile: bool = False
    schedule: str = "constant"  # constant | cosine
    warmup: float = 0.0  # fraction of all steps
    weight_decay: float = 0.0
    workers: int = 4
    seed: int = 0
    max_steps: int | None = None
    device: str | None = None
    resize: str = "squash"
    log_every: int = 50
    val_batch_size: int | None = None
    precise_bn: int = 0  # training images to re-estimate BatchNorm statistics on before each validation

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        recipe = check(Recipe, recipe, "--recipe")
        values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(recipe=recipe, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("batch_size", "epochs", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ChexcutError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ChexcutError(f"--lr must be positive, not {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ChexcutError("--max-steps must be at least 1")
        self.precision = check(Precision, self.precision, "--precision")
        self.resize = check(Resize, self.resize, "--resize")
        if self.workers < 0:
            raise ChexcutError("--workers must be >= 0")
        if self.precise_bn < 0:
            raise ChexcutError("--precise-bn must be >= 0 (images; 0 = off)")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """DDP under torchrun (RANK/WORLD_SIZE set): NCCL on GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return d


# ----------------------------------------------------------------------------- run directory

class RunLock:
    """``RUN_DIR/.lock``, held with a kernel lock (``fcntl.flock``) while a process trains into the folder.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a stale lock
    cannot outlive its owner and a reused pid cannot fake one. The pid in the file is for the message."""

    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        import fcntl

        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    pid = os.read(fd, 32).decode().strip() or "?"
                finally:
                    os.close(fd)
                raise ChexcutError(f"{self.path.parent} is in use by another finetune (pid {pid})") from None
            try:  # the file we locked must still be the one at the path (a releaser may have removed it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise ChexcutError(f"cannot lock {self.path.parent}")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing drops the kernel lock
            self.fd = None


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm sends before it kills a job): handled like Ctrl-C, exit 143."""


def _on_sigterm(signum, frame):
    from chexcut import errors

    errors.TERMINATED = True  # wrappers (click) re-raise interrupts as their own type: the CLI reads this
    raise Terminated()


def read_state(run_dir: Path) -> dict:
    return RunDir(run_dir).read_state()


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    rd = RunDir(run_dir)
    run_dir = rd.path
    if resume:
        if not rd.is_run():
            raise ChexcutError(f"--resume {run_dir}: no config.json there, not a finetune run")
        for stale in run_dir.glob(".*.tmp"):  # half-written files of a killed process (never the real names)
            stale.unlink(missing_ok=True)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ChexcutError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        state = rd.read_state()
        if not force:
            what = f"a {state['status']} run" if state.get("status") else "files"
            raise ChexcutError(f"--out {run_dir} already holds {what}; pass --force to start over, "
                               f"or --resume {run_dir} to continue")
        lock = RunLock(run_dir)
        lock.acquire()  # refuses a folder in use, even with --force
        lock.release()
        for name in TRAINING_FILES:
            (rd / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChexcutError(f"cannot create --out {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise ChexcutError(f"--out {run_dir} is not writable")


def versions() -> dict:
    import platform

    import torchvision

    from chexcut.version import __version__

    out = {"chexcut": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


# ----------------------------------------------------------------------------- the loop pieces

def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (AMP-safe) averaged over the labels that count."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = int(cfg.warmup * total_steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return f


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ChexcutError(f"unknown optimizer {cfg.optimizer!r}")


class MutableBatches:
    """A batch sampler whose batches change per epoch, so DataLoader workers can persist."""

    def __init__(self, batches: list[list[int]] | None = None):
        self.batches: list[list[int]] = batches or []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# ----------------------------------------------------------------------------- what a run is

@dataclass
class Run:
    """What the CLI hands to :func:`finetune`."""

    run_dir: Path
    data: Path
    opts: object  # chexcut.data.chexpert.DataOptions
    cfg: TrainConfig
    model_source: dict  # {"file": path} or {"arch", "drop", "weights", "in_chans"}
    cache: Path | None = None
    skip_missing: bool = False
    resume: bool = False
    force: bool = False

    @classmethod
    def from_run_dir(cls, run_dir: Path, max_steps: int | None = None, device: str | None = None) -> "Run":
        """The Run to ``--resume``: settings from its config.json (``max_steps``/``device`` may change).
        The image cache it used is used again while it is there (same pixels as decoding, only faster)."""
        from chexcut.data.chexpert import DataOptions

        try:
            config = RunDir(run_dir).read_config()
            train, d = dict(config["train"]), config["data"]
        except (TypeError, KeyError):
            raise ChexcutError(f"--resume {run_dir}: no readable config.json there, not a finetune run") from None
        if max_steps:
            train["max_steps"] = max_steps
        if device:
            train["device"] = device
        opts = DataOptions.from_json(d)
        cache = Path(d["cache"]) if d.get("cache") and (Path(d["cache"]) / "index.json").is_file() else None
        source = {} if RunDir(run_dir).last.is_file() else _typed_source(config.get("model_source") or {})
        return cls(run_dir=Path(run_dir), data=Path(d["dir"]), opts=opts, cfg=TrainConfig(**train),
                   model_source=source, resume=True, cache=cache)


def _typed_source(source: dict) -> dict:
    """config.json's model_source (written as strings) back to build_model's types."""
    out = dict(source)
    for k in ("drop", "keep", "in_chans", "seed"):
        if out.get(k) not in (None, "None"):
            out[k] = int(out[k])
        else:
            out.pop(k, None)
    return out


def build_model(source: dict, labels=None):
    """The starting model: a model file, or an architecture cut inline (same rules as truncate)."""
    from chexcut.models.modelfile import load_model
    from chexcut.models.surgery import truncate

    if "file" in source:
        model = load_model(source["file"])
        if labels and tuple(labels) != tuple(model.chexcut_spec["labels"]):
            raise ChexcutError("--labels differ from the model file's head labels; truncate a model with those labels")
        return model
    kw = {k: source[k] for k in ("drop", "keep", "weights", "in_chans", "seed") if source.get(k) is not None}
    if labels:
        kw["labels"] = labels
    return truncate(source["arch"], **kw)


@dataclass
class RunState:
    """What a checkpoint restores besides tensors: how far the run got and its best validation."""

    step: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"mean_auroc": None, "step": None})


@dataclass
class RunData:
    """The training and validation rows, their datasets, and the step counts they imply."""

    train: object  # LabelTable
    valid: object
    cache: object  # ImageCache | None
    train_ds: object  # XrayBatches
    valid_ds: object
    steps_per_epoch: int
    total_steps: int
    last_step: int  # total_steps, or --max-steps when smaller


@dataclass
class Session:
    """Everything the loop touches, built once by :func:`_finetune`."""

    run: Run
    rd: RunDir
    cfg: TrainConfig
    device: torch.device
    dist: Dist
    precision: str
    channels_last: bool
    spec: dict
    data: RunData
    model: torch.nn.Module
    train_model: torch.nn.Module  # model, or its DDP / compiled wrapper
    optimizer: object
    scheduler: object
    scaler: object
    loader: object
    val_loader: object
    sampler: MutableBatches
    val_shard: np.ndarray
    state: RunState
    metrics: MetricsLog
    emit: object

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.spec["labels"])


# ----------------------------------------------------------------------------- fine-tune

def finetune(run: Run, emit=None) -> dict:
    """Train ``run``; returns the final state. ``emit(event: dict)`` receives log events (rank 0)."""
    from chexcut.evaluation.infer import pick_device

    emit = emit or (lambda event: None)
    cfg, run_dir = run.cfg, Path(run.run_dir)
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    import signal
    import threading

    lock = RunLock(run_dir)
    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        if dist.main:
            prepare_run_dir(run_dir, run.resume, run.force)
            lock.acquire()
        _barrier(dist)
        return _finetune(run, emit if dist.main else (lambda event: None), device, dist)
    finally:
        lock.release()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def starting_model(run: Run, rd: RunDir):
    """(model, spec, checkpoint or None): the checkpointed model on --resume, else the run's source."""
    from chexcut.models.surgery import rebuild

    if run.resume and rd.last.is_file():
        ckpt = load_checkpoint(rd.last)
        spec = json.loads(ckpt["spec"])
        return rebuild(spec), spec, ckpt
    if run.resume:  # stopped before its first checkpoint: start it again from its config.json
        if not run.model_source:
            raise ChexcutError(f"--resume {rd}: no last.ckpt and no model source in config.json; start over with "
                               f"--force")
        rd.metrics.unlink(missing_ok=True)
    model = build_model(run.model_source, run.opts.labels)
    return model, dict(model.chexcut_spec), None


def open_data(run: Run, cfg: TrainConfig, opts, dist: Dist) -> RunData:
    """Training and validation rows (every check before the first step), with the image cache."""
    from chexcut.data.cache import open_cache
    from chexcut.data.chexpert import check_files, load_split
    from chexcut.data.dataset import XrayBatches, batch_order

    train_t = check_files(load_split(run.data, "train", opts), run.skip_missing)
    valid_t = check_files(load_split(run.data, "valid", opts), run.skip_missing)
    if cfg.batch_size > len(train_t):
        raise ChexcutError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_t)} images)")
    cache = open_cache(train_t.files + valid_t.files, cfg.image_size, cfg.resize, run.cache)
    if cache is None and run.cache is not None:
        raise ChexcutError(f"--cache {run.cache} holds no complete cache for these images and settings; "
                           f"run `chexcut prepare` with the same options")
    if cache is not None and cache.bad:  # --skip-bad images: black in the cache, so say so wherever it is used
        bad = sorted(set(cache.bad) & set(map(str, train_t.files + valid_t.files)))
        if bad:
            note = (f"{len(bad)} images were unreadable when the cache was prepared (--skip-bad) and are black "
                    f"in it (first: {bad[0]})")
            train_t.notes.append(note)
            if dist.main:
                import sys

                print(f"chexcut: warning: {note}", file=sys.stderr)
    train_ds = XrayBatches(train_t, cfg.image_size, cfg.resize, cache)
    valid_ds = XrayBatches(valid_t, cfg.image_size, cfg.resize, cache)
    steps_per_epoch = len(batch_order(len(train_ds), cfg.batch_size, True, cfg.seed, 0, True, dist.rank, dist.world))
    total_steps = steps_per_epoch * cfg.epochs
    return RunData(train_t, valid_t, cache, train_ds, valid_ds, steps_per_epoch, total_steps,
                   min(total_steps, cfg.max_steps or total_steps))


def write_config(rd: RunDir, run: Run, cfg: TrainConfig, resolved: dict, data: RunData, opts, spec: dict) -> None:
    write_json(rd.config, {
        "train": dataclasses.asdict(cfg), "resolved": resolved,
        "data": {"dir": str(Path(run.data).resolve()), **opts.to_json(), "train_images": len(data.train),
                 "valid_images": len(data.valid), "cache": str(data.cache.folder) if data.cache else None,
                 "fingerprint": dataset_fingerprint(run.data, opts), "notes": data.train.notes + data.valid.notes},
        "model": spec, "model_source": {k: str(v) for k, v in run.model_source.items()},
        "steps_per_epoch": data.steps_per_epoch, "total_steps": data.total_steps, "versions": versions(),
    })


def make_loaders(data: RunData, cfg: TrainConfig, device: torch.device, dist: Dist):
    """(train sampler, train loader, validation loader, this rank's validation rows)."""
    from chexcut.data.dataset import make_loader

    pin = device.type == "cuda"
    val_shard = np.arange(len(data.valid_ds))[dist.rank::dist.world]
    vbs = cfg.val_batch_size or max(cfg.batch_size, 64)
    val_batches = MutableBatches([val_shard[i:i + vbs].tolist() for i in range(0, len(val_shard), vbs)])
    sampler = MutableBatches()
    loader = make_loader(data.train_ds, sampler, cfg.workers, pin, persistent=True, seed=cfg.seed)
    val_loader = make_loader(data.valid_ds, val_batches, cfg.workers, pin, persistent=True, seed=cfg.seed)
    return sampler, loader, val_loader, val_shard


def load_checkpoint(path: Path) -> dict:
    """A run's last.ckpt: plain tensors and strings, read without unpickling objects."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        json.loads(ckpt["spec"]), int(ckpt["step"]), ckpt["model"], ckpt["optimizer"]
        return ckpt
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ChexcutError(f"{path} is damaged or not a chexcut checkpoint ({first}); start the run over with "
                           f"--force") from None


def save_checkpoint(s: Session, status: str) -> None:
    """last.ckpt (atomically) and state.json: everything --resume needs to continue bit-exactly."""
    if not s.dist.main:
        return
    ckpt = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(), "step": s.state.step,
            "best": json.dumps(s.state.best), "spec": json.dumps(s.spec), "rng_cpu": torch.get_rng_state()}
    if s.device.type == "cuda":
        ckpt["rng_cuda"] = torch.cuda.get_rng_state(s.device)
    with atomic_path(s.rd.last) as tmp:
        torch.save(ckpt, tmp)
    write_state(s, status)


def restore(ckpt: dict, model, optimizer, scheduler, scaler, device: torch.device) -> RunState:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    return RunState(step=int(ckpt["step"]), best=json.loads(ckpt["best"]))


def write_state(s: Session, status: str, **more) -> None:
    if s.dist.main:
        d = s.data
        write_json(s.rd.state, {"status": status, "step": s.state.step, "total_steps": d.total_steps,
                                "last_step": d.last_step, "epoch": s.state.step / d.steps_per_epoch,
                                "best": s.state.best, **more})


def log_row(s: Session, row: dict) -> None:
    if s.dist.main:
        s.metrics.append(row)
        s.emit({"event": "log", **row})


def reestimate_batchnorm(model: torch.nn.Module, batches, forward=None, devices=()) -> int:
    """Reset every BatchNorm's running statistics and set them to the exact average over ``batches``
    (inputs, with the current weights, no gradients); the RNG (the CPU's and ``devices``') is left as it
    was. Returns the BN count."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    was_training = model.training
    forward = forward or model
    try:
        with torch.random.fork_rng(devices=list(devices)), torch.no_grad():
            model.train()
            for x in batches:
                forward(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


def precise_bn(s: Session) -> None:
    """BatchNorm re-estimation ("precise BN") before validation, on ``cfg.precise_bn`` training images.

    After few steps the running averages lag far behind the weights, and eval mode then predicts nearly
    a constant (MobileNetV2 at chance in a short run). The images are a fixed, seeded choice, the same on
    every rank, and the training RNG is untouched, so resume stays bit-exact."""
    from chexcut.data.dataset import make_loader
    from chexcut.data.images import normalise
    from chexcut.evaluation.infer import autocast

    n = min(s.cfg.precise_bn, len(s.data.train_ds))
    if n <= 0:
        return
    rows = np.random.default_rng([s.cfg.seed, 4242]).permutation(len(s.data.train_ds))[:n]
    bs = s.cfg.val_batch_size or max(s.cfg.batch_size, 64)
    loader = make_loader(s.data.train_ds, [rows[i:i + bs].tolist() for i in range(0, n, bs)],
                         s.cfg.workers if s.data.cache is not None else 0, s.device.type == "cuda")
    mean, std, in_chans = s.spec["normalisation"]["mean"], s.spec["normalisation"]["std"], int(s.spec.get("in_chans", 3))
    inputs = (normalise(images.to(s.device, non_blocking=True), mean, std, in_chans, s.channels_last)
              for images, _t, _m, _r in loader)

    def forward(x):
        with autocast(s.device, s.precision):
            s.model(x)

    reestimate_batchnorm(s.model, inputs, forward, devices=[s.device] if s.device.type == "cuda" else [])


def validate(s: Session) -> dict:
    """Per-label validation AUROCs (the same function as ``chexcut evaluate``) and their competition mean."""
    from chexcut.evaluation.evaluate import competition_mean, label_aurocs
    from chexcut.evaluation.infer import predict

    n = len(s.data.valid_ds)
    probs = predict(s.model, s.spec, s.val_loader, n, s.device, s.precision, s.channels_last)
    if s.dist.world > 1:
        import torch.distributed as tdist

        parts = [None] * s.dist.world
        tdist.all_gather_object(parts, probs[s.val_shard])
        for r, part in enumerate(parts):
            probs[np.arange(n)[r::s.dist.world]] = part
    valid = s.data.valid
    auc = label_aurocs(valid.targets, valid.mask > 0, probs)
    aurocs = {name: (float(a) if np.isfinite(a) else None) for name, a in zip(s.labels, auc)}
    return {"aurocs": aurocs, "mean_auroc": competition_mean(s.labels, auc), "probs": probs}


def keep_if_best(s: Session, result: dict) -> None:
    """Rank 0 writes best.safetensors and valid_predictions.csv when the validation improved."""
    from chexcut.models import modelfile
    from chexcut.evaluation.predictions import write_predictions

    score = result["mean_auroc"]
    if score is None:  # no competition label evaluable: fall back to every evaluable label
        vals = [v for v in result["aurocs"].values() if v is not None]
        score = float(np.mean(vals)) if vals else None
    best = s.state.best
    if score is None or (best["mean_auroc"] is not None and score <= best["mean_auroc"]):
        return
    s.state.best = {"mean_auroc": score, "step": s.state.step, "aurocs": result["aurocs"]}
    if s.dist.main:
        out_spec = {**s.spec, "image_size": s.cfg.image_size,
                    "training": {"run_dir": str(s.rd), "step": s.state.step, "valid_mean_auroc": score}}
        modelfile.save_model(s.model, s.rd.best, spec=out_spec)
        write_predictions(s.rd.valid_predictions, s.data.valid.paths, s.labels, result["probs"])


def _finetune(run: Run, emit, device, dist: Dist) -> dict:
    """Build the session (data, model, optimizer; a checkpoint restored on --resume), then train."""
    from chexcut.models.anatomy import check_image_size
    from chexcut.evaluation.infer import resolve_precision

    cfg, rd = run.cfg, RunDir(run.run_dir)
    precision = resolve_precision(cfg.precision, device)
    use_compile = cfg.compile and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes (drop_last): autotune once
    channels_last = cfg.channels_last and device.type == "cuda"

    torch.manual_seed(cfg.seed)  # before the model is built: a random init is part of the run
    model, spec, ckpt = starting_model(run, rd)
    opts = dataclasses.replace(run.opts, labels=tuple(spec["labels"]))
    check_image_size(spec["arch"], cfg.image_size)
    data = open_data(run, cfg, opts, dist)
    if dist.main and ckpt is None:  # a resumed run keeps its own config.json
        write_config(rd, run, cfg, {"device": str(device), "precision": precision, "compile": use_compile,
                                    "channels_last": channels_last, "world_size": dist.world}, data, opts, spec)

    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, data.total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = restore(ckpt, model, optimizer, scheduler, scaler, device) if ckpt is not None else RunState()
    if ckpt is not None and dist.main:  # rows logged after the checkpoint (a kill -9) are logged again
        MetricsLog(rd.metrics, spec["labels"]).cut_after(state.step)
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if use_compile:
        train_model = torch.compile(train_model)
    sampler, loader, val_loader, val_shard = make_loaders(data, cfg, device, dist)
    s = Session(run=run, rd=rd, cfg=cfg, device=device, dist=dist, precision=precision, channels_last=channels_last,
                spec=spec, data=data, model=model, train_model=train_model, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, loader=loader, val_loader=val_loader, sampler=sampler, val_shard=val_shard,
                state=state, metrics=MetricsLog(rd.metrics, spec["labels"]), emit=emit)
    if dist.main:
        s.metrics.start()
    return train_loop(s)


def train_loop(s: Session) -> dict:
    """Steps until ``last_step``: forward, masked BCE, backward, step; log, validate, checkpoint."""
    from chexcut.data.dataset import batch_order
    from chexcut.data.images import normalise

    from chexcut.evaluation.infer import autocast

    cfg, d, st, device = s.cfg, s.data, s.state, s.device
    mean, std = s.spec["normalisation"]["mean"], s.spec["normalisation"]["std"]
    in_chans = int(s.spec.get("in_chans", 3))
    write_state(s, "running")
    s.emit({"event": "start", "step": st.step, "last_step": d.last_step, "steps_per_epoch": d.steps_per_epoch,
            "train_images": len(d.train), "valid_images": len(d.valid), "device": str(device),
            "precision": s.precision, "cached": d.cache is not None})
    meter = ThroughputMeter()
    try:
        while st.step < d.last_step:
            epoch, within = divmod(st.step, d.steps_per_epoch)
            s.sampler.batches = batch_order(len(d.train_ds), cfg.batch_size, True, cfg.seed, epoch, True,
                                            s.dist.rank, s.dist.world)[within:]
            s.train_model.train()
            for images, targets, mask, _rows in s.loader:
                x = normalise(images.to(device, non_blocking=True), mean, std, in_chans, s.channels_last)
                with autocast(device, s.precision):
                    logits = s.train_model(x)
                loss = masked_bce(logits, targets.to(device, non_blocking=True), mask.to(device, non_blocking=True))
                if not torch.isfinite(loss):
                    write_state(s, "stopped", reason=f"non-finite loss at step {st.step + 1}")
                    raise ChexcutError(f"training loss became {loss.item()} at step {st.step + 1}; stopped. "
                                       f"The last good checkpoint is kept in {s.rd} (try a lower --lr)")
                s.optimizer.zero_grad(set_to_none=True)
                s.scaler.scale(loss).backward()
                s.scaler.step(s.optimizer)
                s.scaler.update()
                s.scheduler.step()
                st.step += 1
                meter.add(float(loss.detach()), len(images) * s.dist.world)
                validate_now = (st.step % cfg.val_every == 0 or st.step % d.steps_per_epoch == 0
                                or st.step == d.last_step)
                if st.step % cfg.log_every == 0 or validate_now:
                    row = meter.row(s)
                    if validate_now:
                        precise_bn(s)
                        result = validate(s)
                        keep_if_best(s, result)
                        row["val_mean_auroc"] = result["mean_auroc"]
                        row.update({f"auroc:{k}": v for k, v in result["aurocs"].items()})
                        save_checkpoint(s, "running")
                        s.train_model.train()
                    log_row(s, row)
                    meter.restart()
                if st.step >= d.last_step:
                    break
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
        save_checkpoint(s, "interrupted")
        raise
    except BaseException as e:  # a full disk, a bug: say so in state.json instead of leaving "running"
        if s.dist.main and not isinstance(e, ChexcutError):
            try:
                write_state(s, "stopped", reason=f"{type(e).__name__}: {str(e)[:200]}")
            except OSError:
                pass
        raise
    except torch.cuda.OutOfMemoryError:
        raise ChexcutError(f"CUDA out of memory at --batch-size {cfg.batch_size}; try --batch-size "
                           f"{max(1, cfg.batch_size // 2)}") from None
    status = "finished" if st.step >= d.total_steps else "paused"
    save_checkpoint(s, status)
    if st.best["mean_auroc"] is None and s.dist.main:  # finished, and say why there is no best model
        write_state(s, status, reason="no label was evaluable on the validation set (each had one class): "
                                      "no best model was saved")
    s.emit({"event": "end", "status": status, "step": st.step, "best": st.best})
    return {"status": status, "step": st.step, "best": st.best, "run_dir": str(s.rd)}


class ThroughputMeter:
    """Mean training loss and images/s since the last log row."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.loss_sum, self.loss_n, self.images, self.t0 = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        self.loss_sum += loss
        self.loss_n += 1
        self.images += images

    def row(self, s: Session) -> dict:
        """A metrics.csv row (without the validation columns) for the current step."""
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        now, step = time.perf_counter(), s.state.step
        row = {"step": step, "epoch": round(step / s.data.steps_per_epoch, 4),
               "images_seen": step * s.cfg.batch_size * s.dist.world,
               "train_loss": round(self.loss_sum / max(1, self.loss_n), 6), "lr": s.scheduler.get_last_lr()[0],
               "images_per_s": round(self.images / max(now - self.t0, 1e-9), 1),
               "gpu_mem_gb": round(torch.cuda.max_memory_allocated(s.device) / 2**30, 2)
               if s.device.type == "cuda" else None}
        self.loss_sum, self.loss_n = 0.0, 0
        return row
