"""Everything the training loop touches, built once: the starting model, the data, the optimizer and
schedule, the loaders, a restored checkpoint. :func:`build_session` reads top to bottom."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chexcut.data.tables import dataset_fingerprint
from chexcut.errors import ChexcutError
from chexcut.fileio import write_json
from chexcut.models.spec import ModelSpec
from chexcut.rundir import MetricsLog, RunDir
from chexcut.training.adapt import Adapted, apply_adapt
from chexcut.training.checkpoint import RunState, load_checkpoint, restore
from chexcut.training.config import Run, TrainConfig
from chexcut.training.distributed import Dist


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
    label_budget: dict | None = None  # --label-fraction: what was drawn (chexcut.data.fractions.draw_patients)


@dataclass
class Session:
    """Everything the loop touches, built once by :func:`build_session`."""

    run: Run
    rd: RunDir
    cfg: TrainConfig
    device: torch.device
    dist: Dist
    precision: str
    channels_last: bool
    spec: ModelSpec  # with the preprocessing this run trains with (its image size and resize mode)
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
    notes: tuple[str, ...] = ()  # said once when training starts (events.Start)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels


class MutableBatches:
    """A batch sampler whose batches change per epoch, so DataLoader workers can persist."""

    def __init__(self, batches: list[list[int]] | None = None):
        self.batches: list[list[int]] = batches or []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


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


def eval_batch_size(cfg: TrainConfig) -> int:
    """Batches for validation and precise BN (no gradients: larger than training's)."""
    return max(cfg.batch_size, 64)


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


def make_optimizer(cfg: TrainConfig, model):
    """The recipe's optimizer over ``model``'s parameters; with ``--layer-decay D`` one group per layer (timm's
    ``param_groups_layer_decay``: layer k of L at lr x D^(L-k), the head at lr; biases and norms without weight
    decay), each group's lr set from its ``lr_scale`` so the schedule scales them all alike."""
    params = [p for p in model.parameters() if p.requires_grad]  # a frozen part (--adapt) is not optimised
    if cfg.layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        if not hasattr(model, "group_matcher"):
            raise ChexcutError("--layer-decay needs a model whose layers timm can group (ViT, DeiT, DINOv2, Swin, "
                               "ConvNeXt); this one is cut from a torchvision-style table")
        params = param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        for group in params:
            group["lr"] = cfg.lr * group.pop("lr_scale", 1.0)
            group["params"] = [p for p in group["params"] if p.requires_grad]
        params = [group for group in params if group["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ChexcutError(f"unknown optimizer {cfg.optimizer!r}")


def build_model(source: dict, labels=None, image_size: int | None = None):
    """The starting model: a model file, or an architecture cut inline (same rules as truncate) and built for
    ``image_size`` (a ViT's position embeddings resampled once, from the weights' size)."""
    from chexcut.models.modelfile import load_model
    from chexcut.models.surgery import truncate

    if "file" in source:
        model = load_model(source["file"])
        if labels and tuple(labels) != model.chexcut_spec.labels:
            raise ChexcutError("--labels differ from the model file's head labels; truncate a model with those labels")
        return model
    kw = {k: source[k] for k in ("drop", "keep", "weights", "in_chans", "seed") if source.get(k) is not None}
    if labels:
        kw["labels"] = labels
    return truncate(source["arch"], image_size=image_size, **kw)


def start_notes(cfg: TrainConfig, model, spec: ModelSpec, size_note: str | None,
                adapted: Adapted) -> tuple[str, ...]:
    """What the run says once when training starts: a fitted image size, the parameters --adapt trains, precise BN
    skipped on a model without BatchNorm, the licence of non-commercial starting weights."""
    from chexcut.models.weights import licence_note

    notes = [size_note] if size_note else []
    if cfg.adapt != "full":
        trainable, total = adapted.trainable, adapted.total  # apply_adapt's count
        notes.append(f"--adapt {cfg.adapt}: {trainable:,} of {total:,} parameters trained ({trainable / total:.1%})")
    if adapted.modules:
        skipped = f"; {len(adapted.skipped)} left frozen (skipped_modules)" if adapted.skipped else ""
        notes.append(f"--adapt {cfg.adapt}: LoRA in {len(adapted.modules)} layers (config.json resolved."
                     f"adapted_modules){skipped}")
    if cfg.precise_bn and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append(f"--precise-bn skipped: {spec.arch} has no BatchNorm (its LayerNorms keep no running statistics)")
    return tuple(notes + ([licence_note(spec.weights)] if licence_note(spec.weights) else []))


def source_arch(source: dict):
    """The registry entry a run's model source names (an architecture, or a model file's), or None (no source:
    a resume from its checkpoint)."""
    from chexcut.models.modelfile import read_spec
    from chexcut.models.registry import get_arch

    if source.get("arch"):
        return get_arch(source["arch"])
    return get_arch(read_spec(source["file"]).arch) if source.get("file") else None


def check_same_model(spec: ModelSpec, recorded: dict, rd: RunDir) -> None:
    """The checkpoint is the model config.json describes (a last.ckpt copied in from another run would train
    on, and report would believe config.json)."""
    mine = spec.to_json()
    differ = [k for k in ("arch", "drop", "labels", "params") if k in recorded and recorded[k] != mine.get(k)]
    if differ:
        k = differ[0]
        raise ChexcutError(f"--resume {rd}: last.ckpt holds another model than config.json ({k} {mine.get(k)!r} vs "
                           f"{recorded[k]!r}); start the run over with --force")


def starting_model(run: Run, rd: RunDir, image_size: int | None = None):
    """(model, spec, checkpoint or None): the checkpointed model on --resume, else the run's source."""
    from chexcut.models.surgery import rebuild

    if run.resume and rd.last.is_file():
        ckpt = load_checkpoint(rd.last)
        spec = ModelSpec.from_json(json.loads(ckpt["spec"]), rd.last)
        check_same_model(spec, (rd.read_config() or {}).get("model") or {}, rd)
        return rebuild(spec), spec, ckpt
    if run.resume:  # stopped before its first checkpoint: start it again from its config.json
        if not run.model_source:
            raise ChexcutError(f"--resume {rd}: no last.ckpt and no model source in config.json; start over with "
                               f"--force")
        rd.metrics.unlink(missing_ok=True)
    model = build_model(run.model_source, run.opts.labels, image_size)
    return model, model.chexcut_spec, None


def open_data(run: Run, cfg: TrainConfig, opts, dist: Dist) -> RunData:
    """Training and validation rows (every check before the first step), with the image cache."""
    from chexcut.data.batches import XrayBatches, batch_order
    from chexcut.data.cache import open_cache
    from chexcut.data.tables import check_files, load_split

    train_t = check_files(load_split(run.data, "train", opts), run.skip_missing)
    valid_t = check_files(load_split(run.data, "valid", opts), run.skip_missing)
    budget = None
    if cfg.label_fraction < 1:  # a label budget: patients of the training rows only, drawn in the seed's order
        from chexcut.data.fractions import draw_patients

        keep, budget = draw_patients(train_t, cfg.label_fraction, cfg.seed)
        train_t = train_t.subset(keep)
        train_t.notes.append(f"--label-fraction {cfg.label_fraction:g}: {budget['patients']} of "
                             f"{budget['of_patients']} training patients ({budget['images']} images)")
        if budget["without_positives"] and dist.main:
            import sys

            print(f"chexcut: warning: no positive training row for {', '.join(budget['without_positives'])}: "
                  f"the model cannot learn it", file=sys.stderr)
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
                   min(total_steps, cfg.max_steps or total_steps), budget)


def write_config(rd: RunDir, run: Run, resolved: dict, data: RunData, opts, spec: ModelSpec) -> None:
    write_json(rd.config, {
        "train": dataclasses.asdict(run.cfg), "resolved": resolved,
        "data": {"dir": str(Path(run.data).resolve()), **opts.to_json(), "train_images": len(data.train),
                 "train_patients": len(set(map(str, data.train.patient))), "valid_images": len(data.valid),
                 "cache": str(data.cache.folder) if data.cache else None,
                 "fingerprint": dataset_fingerprint(run.data, opts), "notes": data.train.notes + data.valid.notes},
        "model": spec.to_json(), "model_source": {k: str(v) for k, v in run.model_source.items()},
        "steps_per_epoch": data.steps_per_epoch, "total_steps": data.total_steps, "versions": versions(),
    })
    if data.label_budget is not None:
        write_json(rd.label_budget, data.label_budget)


def make_loaders(data: RunData, cfg: TrainConfig, device: torch.device, dist: Dist):
    """(train sampler, train loader, validation loader, this rank's validation rows)."""
    from chexcut.data.batches import make_loader

    pin = device.type == "cuda"
    val_shard = np.arange(len(data.valid_ds))[dist.rank::dist.world]
    vbs = eval_batch_size(cfg)
    val_batches = MutableBatches([val_shard[i:i + vbs].tolist() for i in range(0, len(val_shard), vbs)])
    sampler = MutableBatches()
    loader = make_loader(data.train_ds, sampler, cfg.workers, pin, persistent=True, seed=cfg.seed)
    val_loader = make_loader(data.valid_ds, val_batches, cfg.workers, pin, persistent=True, seed=cfg.seed)
    return sampler, loader, val_loader, val_shard


def build_session(run: Run, emit, device, dist: Dist) -> Session:
    """The session (data, model, optimizer; a checkpoint restored on --resume) the loop trains."""
    from chexcut.data.cpus import limit_threads
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.infer import resolve_precision
    from chexcut.models.surgery import at_input_size
    from chexcut.training.config import fit_to_arch

    cfg, rd = run.cfg, RunDir(run.run_dir)
    limit_threads()
    precision = resolve_precision(cfg.precision, device)
    use_compile = cfg.compile and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes (drop_last): autotune once
    channels_last = cfg.channels_last and device.type == "cuda"

    torch.manual_seed(cfg.seed)  # before the model is built: a random init is part of the run
    arch = source_arch(run.model_source)  # None on a resume from a checkpoint: its config.json is already fitted
    size_note = fit_to_arch(cfg, arch) if arch is not None else None  # before anything is built or written
    model, spec, ckpt = starting_model(run, rd, cfg.image_size)
    check_image_size(spec.arch, cfg.image_size)
    model = at_input_size(model, cfg.image_size)  # a ViT's position embeddings resampled to the run's size
    # the preprocessing this run trains with: the model's normalisation, the run's image size and resize mode
    spec = model.chexcut_spec
    spec = dataclasses.replace(spec, preprocess=spec.preprocess.with_size(cfg.image_size, cfg.resize))
    opts = dataclasses.replace(run.opts, labels=spec.labels)
    data = open_data(run, cfg, opts, dist)
    adapted = apply_adapt(model, spec, cfg.adapt)  # --adapt: what is not trained is frozen (lora:R: LoRA added)
    if dist.main and ckpt is None:  # a resumed run keeps its own config.json
        lora = {"adapted_modules": list(adapted.modules), "skipped_modules": adapted.skipped} if adapted.modules else {}
        write_config(rd, run, {"device": str(device), "precision": precision, "compile": use_compile,
                               "channels_last": channels_last, "world_size": dist.world,
                               "trainable_params": adapted.trainable, "total_params": adapted.total, **lora},
                     data, opts, spec)

    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, data.total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = restore(ckpt, model, optimizer, scheduler, scaler, device) if ckpt is not None else RunState()
    if ckpt is not None and dist.main:  # rows logged after the checkpoint (a kill -9) are logged again
        MetricsLog(rd.metrics, spec.labels).cut_after(state.step)
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
                state=state, metrics=MetricsLog(rd.metrics, spec.labels), emit=emit,
                notes=start_notes(cfg, model, spec, size_note, adapted))
    if dist.main:
        s.metrics.start()
    return s
