"""Fine-tuning, readable top to bottom: data -> model -> loop -> validate -> checkpoint.

One process per GPU under ``torchrun`` (DDP; rank 0 alone logs and writes), or a single
process on one GPU or the CPU. Everything a run needs to continue lives in its run directory:

    config.json              every resolved setting, versions, dataset fingerprint, model spec
    metrics.csv              one row per log interval / validation
    last.ckpt                model, optimizer, scheduler, scaler, RNG and data position (resume)
    best.safetensors         the best model by mean competition AUROC (a chexcut model file)
    valid_predictions.csv    the best model's validation predictions
    state.json               running | interrupted | stopped | finished, and where
    .lock                    held while a process trains into the folder

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

from chexcut.errors import ChexcutError
from chexcut.fileio import atomic_path, write_json
from chexcut.labels import COMPETITION_LABELS

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

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        if recipe not in RECIPES:
            raise ChexcutError(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
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
        if self.precision not in ("bf16", "fp16", "fp32", "auto"):
            raise ChexcutError(f"--precision must be bf16, fp16, fp32 or auto, not {self.precision!r}")
        if self.workers < 0:
            raise ChexcutError("--workers must be >= 0")


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
    """``RUN_DIR/.lock`` holding the owner's pid; a lock whose process is gone is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.close(fd)
                self.held = True
                return
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise ChexcutError(f"{self.path.parent} is in use by another finetune (pid {pid})") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
        raise ChexcutError(f"cannot lock {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.json").is_file():
            raise ChexcutError(f"--resume {run_dir}: no config.json there, not a finetune run")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ChexcutError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        state = read_state(run_dir)
        if not force:
            what = f"a {state['status']} run" if state.get("status") else "files"
            raise ChexcutError(f"--out {run_dir} already holds {what}; pass --force to start over, "
                               f"or --resume {run_dir} to continue")
        lock = RunLock(run_dir)
        lock.acquire()  # refuses a folder in use, even with --force
        lock.release()
        for name in ("config.json", "metrics.csv", "last.ckpt", "best.safetensors", "valid_predictions.csv",
                     "state.json"):
            (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChexcutError(f"cannot create --out {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise ChexcutError(f"--out {run_dir} is not writable")


def dataset_fingerprint(data: Path, opts) -> str:
    """sha256 over the label CSVs' bytes and the data options."""
    import hashlib

    from chexcut.data.chexpert import find_dataset_dir

    h = hashlib.sha256(json.dumps(opts.to_json(), sort_keys=True).encode())
    csvs = [Path(opts.csv) if Path(opts.csv).is_file() else Path(data) / opts.csv] if opts.csv else [
        find_dataset_dir(data) / n for n in ("train.csv", "valid.csv")]
    for c in csvs:
        if c.is_file():
            h.update(c.read_bytes())
    return h.hexdigest()


def versions() -> dict:
    import platform

    import torchvision

    from chexcut import __version__

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

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def competition_mean(aurocs: dict[str, float | None]) -> float | None:
    vals = [v for k, v in aurocs.items() if k in COMPETITION_LABELS and v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- fine-tune

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
            config = json.loads((Path(run_dir) / "config.json").read_text())
            train, d = dict(config["train"]), config["data"]
        except (OSError, ValueError, KeyError):
            raise ChexcutError(f"--resume {run_dir}: no readable config.json there, not a finetune run") from None
        if max_steps:
            train["max_steps"] = max_steps
        if device:
            train["device"] = device
        opts = DataOptions.from_json(d)
        cache = Path(d["cache"]) if d.get("cache") and (Path(d["cache"]) / "index.json").is_file() else None
        return cls(run_dir=Path(run_dir), data=Path(d["dir"]), opts=opts, cfg=TrainConfig(**train),
                   model_source={}, resume=True, cache=cache)


def build_model(source: dict, labels=None):
    """The starting model: a model file, or an architecture cut inline (same rules as truncate)."""
    from chexcut.modelfile import load_model
    from chexcut.surgery import truncate

    if "file" in source:
        model = load_model(source["file"])
        if labels and tuple(labels) != tuple(model.chexcut_spec["labels"]):
            raise ChexcutError("--labels differ from the model file's head labels; truncate a model with those labels")
        return model
    kw = {k: source[k] for k in ("drop", "keep", "weights", "in_chans", "seed") if source.get(k) is not None}
    if labels:
        kw["labels"] = labels
    return truncate(source["arch"], **kw)


def finetune(run: Run, emit=None) -> dict:
    """Train ``run``; returns the final state. ``emit(event: dict)`` receives log events (rank 0)."""
    from chexcut.infer import pick_device

    emit = emit or (lambda event: None)
    cfg, run_dir = run.cfg, Path(run.run_dir)
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    lock = RunLock(run_dir)
    try:
        if dist.main:
            prepare_run_dir(run_dir, run.resume, run.force)
            lock.acquire()
        _barrier(dist)
        return _finetune(run, emit if dist.main else (lambda event: None), device, dist)
    finally:
        lock.release()
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _finetune(run: Run, emit, device, dist: Dist) -> dict:
    from chexcut import modelfile
    from chexcut.anatomy import check_image_size
    from chexcut.data.cache import open_cache
    from chexcut.data.chexpert import check_files, load_split
    from chexcut.data.dataset import CachedBatchLoader, XrayBatches, batch_order
    from chexcut.data.images import normalise
    from chexcut.infer import autocast, default_precision
    from chexcut.surgery import rebuild

    cfg, run_dir = run.cfg, Path(run.run_dir)
    precision = default_precision(device) if cfg.precision == "auto" else cfg.precision
    if precision == "fp16" and device.type == "cpu":
        raise ChexcutError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    use_compile = cfg.compile and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes (drop_last): autotune once
    channels_last = cfg.channels_last and device.type == "cuda"

    # --- data: every check before the first step
    ckpt_path = run_dir / "last.ckpt"
    torch.manual_seed(cfg.seed)  # before the model is built: a random init is part of the run
    if run.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        spec = json.loads(ckpt["spec"])
        model = rebuild(spec)
    else:
        ckpt = None
        model = build_model(run.model_source, run.opts.labels)
        spec = dict(model.chexcut_spec)
    labels = tuple(spec["labels"])
    opts = dataclasses.replace(run.opts, labels=labels)
    check_image_size(spec["arch"], cfg.image_size)
    train_t = check_files(load_split(run.data, "train", opts), run.skip_missing)
    valid_t = check_files(load_split(run.data, "valid", opts), run.skip_missing)
    if cfg.batch_size > len(train_t):
        raise ChexcutError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_t)} images)")
    cache = open_cache(train_t.files + valid_t.files, cfg.image_size, cfg.resize, run.cache)
    if cache is None and run.cache is not None:
        raise ChexcutError(f"--cache {run.cache} holds no complete cache for these images and settings; "
                           f"run `chexcut prepare` with the same options")
    train_ds = XrayBatches(train_t, cfg.image_size, cfg.resize, cache)
    valid_ds = XrayBatches(valid_t, cfg.image_size, cfg.resize, cache)
    steps_per_epoch = len(batch_order(len(train_ds), cfg.batch_size, True, cfg.seed, 0, True, dist.rank, dist.world))
    total_steps = steps_per_epoch * cfg.epochs
    last_step = min(total_steps, cfg.max_steps or total_steps)

    # --- config.json (a resumed run keeps its own)
    if dist.main and ckpt is None:
        write_json(run_dir / "config.json", {
            "train": dataclasses.asdict(cfg), "resolved": {"device": str(device), "precision": precision,
                                                           "compile": use_compile, "channels_last": channels_last,
                                                           "world_size": dist.world},
            "data": {"dir": str(Path(run.data).resolve()), **opts.to_json(), "train_images": len(train_t),
                     "valid_images": len(valid_t), "cache": str(cache.folder) if cache else None,
                     "fingerprint": dataset_fingerprint(run.data, opts), "notes": train_t.notes + valid_t.notes},
            "model": spec, "model_source": {k: str(v) for k, v in run.model_source.items()},
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "versions": versions(),
        })

    # --- model, optimizer, schedule
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, best = 0, {"mean_auroc": None, "step": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, best = int(ckpt["step"]), json.loads(ckpt["best"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    elif run.resume:
        raise ChexcutError(f"--resume {run_dir}: no last.ckpt yet (the run stopped before its first checkpoint)")
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if use_compile:
        train_model = torch.compile(train_model)
    mean, std, in_chans = spec["normalisation"]["mean"], spec["normalisation"]["std"], int(spec.get("in_chans", 3))

    sampler = MutableBatches()
    pin = device.type == "cuda"
    val_sampler = MutableBatches()
    val_shard = np.arange(len(valid_ds))[dist.rank::dist.world]
    vbs = cfg.val_batch_size or max(cfg.batch_size, 64)
    val_sampler.batches = [val_shard[i:i + vbs].tolist() for i in range(0, len(val_shard), vbs)]
    if cache is not None:  # threads gather batches from the memmap straight into pinned memory
        threads = max(2, min(cfg.workers, 8))
        loader = CachedBatchLoader(train_ds, sampler, pin=pin, threads=threads)
        val_loader = CachedBatchLoader(valid_ds, val_sampler, pin=pin, threads=threads)
    else:  # decoding processes; their own generators, so making an iterator never consumes the global RNG
        kw = dict(num_workers=cfg.workers, persistent_workers=cfg.workers > 0, prefetch_factor=4) if cfg.workers else {}
        loader = torch.utils.data.DataLoader(train_ds, batch_size=None, sampler=sampler, pin_memory=pin,
                                             generator=torch.Generator().manual_seed(cfg.seed), **kw)
        val_loader = torch.utils.data.DataLoader(valid_ds, batch_size=None, sampler=val_sampler, pin_memory=pin,
                                                 generator=torch.Generator().manual_seed(cfg.seed), **kw)

    def save_checkpoint(status: str) -> None:
        if not dist.main:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                 "best": json.dumps(best), "spec": json.dumps(spec), "rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        write_state(status)

    def write_state(status: str, **more) -> None:
        if dist.main:
            write_json(run_dir / "state.json", {"status": status, "step": step, "total_steps": total_steps,
                                                "last_step": last_step, "epoch": step / steps_per_epoch,
                                                "best": best, **more})

    def validate() -> dict:
        from chexcut.infer import predict

        probs = predict(model, spec, val_loader, len(valid_ds), device, precision, channels_last)
        if dist.world > 1:
            import torch.distributed as tdist

            parts = [None] * dist.world
            tdist.all_gather_object(parts, probs[val_shard])
            for r, part in enumerate(parts):
                probs[np.arange(len(valid_ds))[r::dist.world]] = part
        from chexcut.metrics import auroc

        m = valid_t.mask > 0
        aurocs = {}
        for j, name in enumerate(labels):
            a = auroc(valid_t.targets[m[:, j], j], probs[m[:, j], j])
            aurocs[name] = a if np.isfinite(a) else None
        return {"aurocs": aurocs, "mean_auroc": competition_mean(aurocs), "probs": probs}

    def on_validation(result: dict) -> None:
        nonlocal best
        score = result["mean_auroc"]
        if score is None:  # no competition label evaluable: fall back to every evaluable label
            vals = [v for v in result["aurocs"].values() if v is not None]
            score = float(np.mean(vals)) if vals else None
        improved = score is not None and (best["mean_auroc"] is None or score > best["mean_auroc"])
        if improved and dist.main:
            best = {"mean_auroc": score, "step": step, "aurocs": result["aurocs"]}
            out_spec = {**spec, "image_size": cfg.image_size,
                        "training": {"run_dir": str(run_dir), "step": step, "valid_mean_auroc": score}}
            modelfile.save_model(model, run_dir / "best.safetensors", spec=out_spec)
            from chexcut.evaluate import write_predictions

            write_predictions(run_dir / "valid_predictions.csv", valid_t.paths, labels, result["probs"])
        elif improved:
            best = {"mean_auroc": score, "step": step, "aurocs": result["aurocs"]}

    metrics_path = run_dir / "metrics.csv"
    header = ["step", "epoch", "images_seen", "train_loss", "lr", "images_per_s", "gpu_mem_gb", "val_mean_auroc",
              *[f"auroc:{name}" for name in labels]]
    if dist.main and not metrics_path.exists():
        metrics_path.write_text(",".join(f'"{h}"' if "," in h else h for h in header) + "\n")

    def log_row(row: dict) -> None:
        if dist.main:
            with open(metrics_path, "a") as f:
                f.write(",".join("" if row.get(h) is None else str(row.get(h)) for h in header) + "\n")
            emit({"event": "log", **row})

    # --- the loop
    write_state("running")
    emit({"event": "start", "step": step, "last_step": last_step, "steps_per_epoch": steps_per_epoch,
          "train_images": len(train_t), "valid_images": len(valid_t), "device": str(device), "precision": precision,
          "cached": cache is not None})
    loss_sum, loss_n, t_last, images_last = 0.0, 0, time.perf_counter(), 0
    status = "finished"
    try:
        while step < last_step:
            epoch, within = divmod(step, steps_per_epoch)
            sampler.batches = batch_order(len(train_ds), cfg.batch_size, True, cfg.seed, epoch, True,
                                          dist.rank, dist.world)[within:]
            train_model.train()
            for images, targets, mask, _rows in loader:
                x = normalise(images.to(device, non_blocking=True), mean, std, in_chans, channels_last)
                targets = targets.to(device, non_blocking=True)
                mask = mask.to(device, non_blocking=True)
                with autocast(device, precision):
                    logits = train_model(x)
                loss = masked_bce(logits, targets, mask)
                if not torch.isfinite(loss):
                    status = "stopped"
                    write_state("stopped", reason=f"non-finite loss at step {step + 1}")
                    raise ChexcutError(f"training loss became {loss.item()} at step {step + 1}; stopped. "
                                       f"The last good checkpoint is kept in {run_dir} (try a lower --lr)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                loss_sum += float(loss.detach())
                loss_n += 1
                images_last += len(images) * dist.world
                at_epoch_end = step % steps_per_epoch == 0
                validate_now = step % cfg.val_every == 0 or at_epoch_end or step == last_step
                if step % cfg.log_every == 0 or validate_now:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    now = time.perf_counter()
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                           "images_seen": step * cfg.batch_size * dist.world,
                           "train_loss": round(loss_sum / max(1, loss_n), 6), "lr": scheduler.get_last_lr()[0],
                           "images_per_s": round(images_last / max(now - t_last, 1e-9), 1),
                           "gpu_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                           if device.type == "cuda" else None}
                    loss_sum, loss_n = 0.0, 0
                    if validate_now:
                        result = validate()
                        on_validation(result)
                        row["val_mean_auroc"] = result["mean_auroc"]
                        row.update({f"auroc:{k}": v for k, v in result["aurocs"].items()})
                        save_checkpoint("running")
                        train_model.train()
                    log_row(row)
                    t_last, images_last = time.perf_counter(), 0
                if step >= last_step:
                    break
    except KeyboardInterrupt:
        status = "interrupted"
        save_checkpoint("interrupted")
        raise
    except torch.cuda.OutOfMemoryError:
        raise ChexcutError(f"CUDA out of memory at --batch-size {cfg.batch_size}; try --batch-size "
                           f"{max(1, cfg.batch_size // 2)}") from None
    if status == "finished":
        status = "finished" if step >= total_steps else "paused"
        save_checkpoint(status)
    emit({"event": "end", "status": status, "step": step, "best": best})
    return {"status": status, "step": step, "best": best, "run_dir": str(run_dir)}
