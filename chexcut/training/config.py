"""What a training run is: the recipes, the checked :class:`TrainConfig`, and :class:`Run` (what
:func:`chexcut.training.loop.finetune` takes), also rebuilt from a run directory to ``--resume``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from chexcut.choices import Precision, Recipe, Resize, check
from chexcut.data.tables import DataOptions
from chexcut.errors import ChexcutError
from chexcut.models.spec import DEFAULT_IMAGE_SIZE
from chexcut.options import TRAIN_OPTIONS
from chexcut.rundir import RunDir

RECIPES: dict[str, dict] = {
    # CheXpert / CheXtransfer: Adam 1e-4, batch 16, 3 epochs, 320 px, no augmentation,
    # validation every 4,800 iterations and at each epoch end.
    "paper": dict(optimizer="adam", lr=1e-4, batch_size=16, epochs=3, image_size=DEFAULT_IMAGE_SIZE, val_every=4800,
                  precision="fp32", channels_last=False, compile=False, schedule="constant", warmup=0.0,
                  weight_decay=0.0),
    # The same images per validation (76,800), 16x the batch, sqrt-scaled LR with warmup + cosine,
    # bf16 autocast, channels_last and torch.compile on GPU.
    "fast": dict(optimizer="adamw", lr=4e-4, batch_size=256, epochs=3, image_size=DEFAULT_IMAGE_SIZE, val_every=300,
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
    image_size: int = DEFAULT_IMAGE_SIZE
    val_every: int = 4800
    precision: str = "fp32"  # bf16 | fp16 | fp32 | auto
    channels_last: bool = False
    compile: bool = False
    schedule: str = "constant"  # constant | cosine
    warmup: float = 0.0  # fraction of all steps
    weight_decay: float = 0.0
    workers: int | None = None  # None: min(4, the CPUs this process may use), decided where it runs
    seed: int = 0
    max_steps: int | None = None
    device: str | None = None
    resize: str = "squash"
    log_every: int = 50
    precise_bn: int = 0  # training images to re-estimate BatchNorm statistics on before each validation
    layer_decay: float | None = None  # layer-wise learning-rate decay (timm's param_groups_layer_decay); None: off
    label_fraction: float = 1.0  # the share of training patients whose labels are used (chexcut.data.fractions)
    adapt: str = "full"  # what is trained: full | probe | last:K | lora:R (chexcut.training.adapt)

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        recipe = check(Recipe, recipe, "--recipe")
        values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(recipe=recipe, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from chexcut.choices import BOUNDS, check_bounds

        for name in (f.name for f in fields(self) if f.name in BOUNDS):  # every field with a declared bound
            check_bounds(name, getattr(self, name))
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ChexcutError(f"--lr must be positive, not {self.lr}")
        from chexcut.data.fractions import check_fraction

        check_fraction(self.label_fraction)
        from chexcut.training.adapt import parse_adapt

        adapt = parse_adapt(self.adapt)
        self.adapt = str(adapt)
        if adapt.kind == "lora":  # before anything is written: peft is an optional extra
            from chexcut.training.lora import check_peft

            check_peft(self.adapt)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ChexcutError(f"--layer-decay must be in (0, 1] (0.65 to 0.75 is usual for a ViT), not {self.layer_decay}")
        self.precision = check(Precision, self.precision, "--precision")
        self.resize = check(Resize, self.resize, "--resize")


@dataclass
class Run:
    """What the CLI (and the study runner) hands to :func:`chexcut.training.loop.finetune`."""

    run_dir: Path
    data: Path
    opts: object  # chexcut.data.tables.DataOptions
    cfg: TrainConfig
    model_source: dict  # {"file": path} or {"arch", "drop", "weights", "in_chans"}
    cache: Path | None = None
    skip_missing: bool = False
    resume: bool = False
    force: bool = False
    track: object = None  # chexcut.tracking.Tracking: log this run to MLflow (rank 0 only)

    @classmethod
    def from_run_dir(cls, run_dir: Path, max_steps: int | None = None, device: str | None = None,
                     images_outside: bool = False) -> "Run":
        """The Run to ``--resume``: settings from its config.json (``max_steps``/``device`` may change;
        ``images_outside`` is a permission for this invocation). The image cache it used is used again while it is
        there (same pixels as decoding, only faster)."""
        from chexcut.data.tables import DataOptions

        try:
            config = RunDir(run_dir).read_config()
            train, d = dict(config["train"]), config["data"]
        except (TypeError, KeyError):
            raise ChexcutError(f"--resume {run_dir}: no readable config.json there, not a finetune run") from None
        check_recorded_settings(train, run_dir)
        if max_steps:
            train["max_steps"] = max_steps
        if device:
            train["device"] = device
        opts = DataOptions.from_json({**d, **({"images_outside": True} if images_outside else {})})
        cache = Path(d["cache"]) if d.get("cache") and (Path(d["cache"]) / "index.json").is_file() else None
        source = {} if RunDir(run_dir).last.is_file() else _typed_source(config.get("model_source") or {})
        return cls(run_dir=Path(run_dir), data=Path(d["dir"]), opts=opts, cfg=TrainConfig(**train),
                   model_source=source, resume=True, cache=cache)


#: Settings every config.json has had since the first version: a config.json without one is damaged (resuming
#: would silently train with a default). Fields added later (precise_bn, resize, ...) take their defaults.
ESSENTIAL_SETTINGS = ("recipe", "optimizer", "lr", "batch_size", "epochs", "image_size", "seed", "schedule")


def check_recorded_settings(train: dict, run_dir) -> None:
    """config.json's training settings as this version knows them: one line for a newer version's setting or
    a missing essential one, and every value checked as the command line checks it."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train) - known)
    if unknown:
        raise ChexcutError(f"--resume {run_dir}: config.json has setting(s) this chexcut does not know "
                           f"({', '.join(unknown)}): it was written by a newer version; resume with that version")
    missing = [k for k in ESSENTIAL_SETTINGS if k not in train]
    if missing:
        raise ChexcutError(f"--resume {run_dir}: config.json lacks {', '.join(missing)} (damaged); start the run "
                           f"over with --force")
    try:
        TrainConfig(**train).validate()
    except (TypeError, ValueError) as e:
        raise ChexcutError(f"--resume {run_dir}: config.json holds a setting of the wrong type ({e})") from None


def _typed_source(source: dict) -> dict:
    """config.json's model_source (written as strings) back to build_model's types."""
    out = dict(source)
    for k in ("drop", "keep", "in_chans", "seed"):
        if out.get(k) not in (None, "None"):
            out[k] = int(out[k])
        else:
            out.pop(k, None)
    return out


def fit_to_arch(cfg: TrainConfig, arch) -> str | None:
    """``cfg`` checked against the architecture it trains, before anything is written: ``--layer-decay`` needs a
    family timm groups into layers; the recipe's default image size (320) is rounded to one the family takes
    (322 for a /14 DINOv2), and the note saying so is returned. A size the user chose is left for the
    architecture's own check (one line naming the sizes to use)."""
    from chexcut.models.registry import default_image_size

    if cfg.layer_decay is not None and arch.family.pruning != "timm":
        raise ChexcutError(f"--layer-decay needs a family timm groups into layers (ViT, DeiT, DINOv2, Swin, ConvNeXt); "
                           f"{arch.name} is cut from a torchvision-style table")
    fitted = default_image_size(arch, cfg.image_size)
    if fitted != cfg.image_size and cfg.image_size == RECIPES[cfg.recipe]["image_size"]:
        note = (f"the recipe's --image-size {cfg.image_size} is not a multiple of {arch.name}'s "
                f"{arch.family.size_multiple} px patches: training at {fitted}")
        cfg.image_size = fitted
        return note
    return None


#: TrainConfig fields a user sets on ``finetune``'s command line.
CLI_TRAIN_FIELDS = tuple(o.name for o in TRAIN_OPTIONS)
#: Training settings a study varies per run (grid axes), not shared by its runs (:class:`FinetuneOptions`).
GRID_TRAIN_FIELDS = ("adapt", "label_fraction")


def train_config_from(options: dict, seed: int) -> TrainConfig:
    """The checked TrainConfig of finetune's declared options (``{name: value}``, None: the recipe's)."""
    values = {k: (str(v) if isinstance(v, Enum) else v) for k, v in options.items()}
    return TrainConfig.from_recipe(str(values.pop("recipe", None) or "paper"), seed=seed, **values)


@dataclass(frozen=True)
class FinetuneOptions:
    """What every run of a study passes to ``finetune`` besides its grid cell (arch, weights, drop, seed):
    training overrides (TrainConfig fields; absent: the recipe's), the data options, the model's input channels, the
    image cache, MLflow tracking. Checked at construction, so a plan with a bad option fails when it is written,
    for Python callers too; the executor builds each run from it (:mod:`chexcut.study.execute`)."""

    train: dict = field(default_factory=dict)  # CLI_TRAIN_FIELDS -> value
    data: DataOptions = field(default_factory=DataOptions)  # (a dict of its fields, as plan.json holds, is read)
    cache: str | None = None
    skip_missing: bool = False
    track: dict | None = None  # {"uri", "log_models", "tags", "experiment"}: every run logs to MLflow
    in_chans: int | None = None  # the model's input channels (None: its weights')

    def __post_init__(self):
        from chexcut.choices import check_bounds

        if self.track is not None and not str((self.track or {}).get("uri") or ""):
            raise ChexcutError("a study's tracking needs a URI")
        unknown = set(self.train) - set(CLI_TRAIN_FIELDS)
        if unknown:
            raise ChexcutError(f"not finetune options: {', '.join(sorted(unknown))}")
        axes = set(self.train) & set(GRID_TRAIN_FIELDS)
        if axes:  # each run's own, from its grid cell (chexcut.study.plan.Grid's adapts and label_fractions)
            raise ChexcutError(f"{', '.join(sorted(axes))}: a study's grid axis (--adapts, --label-fractions), not "
                               f"an option every run shares")
        check_bounds("in_chans", self.in_chans)
        object.__setattr__(self, "train", {k: v for k, v in self.train.items() if v is not None})
        self.train_config(seed=0)
        if not isinstance(self.data, DataOptions):
            object.__setattr__(self, "data", DataOptions.from_json(dict(self.data)))

    def train_config(self, seed: int, adapt: str = "full", label_fraction: float = 1.0) -> TrainConfig:
        """One run's training settings: these options, with the run's grid cell (its seed, adaptation and label
        fraction)."""
        overrides = {k: v for k, v in self.train.items() if k != "recipe"}
        return TrainConfig.from_recipe(str(self.train.get("recipe", "paper")), seed=seed, adapt=adapt,
                                       label_fraction=label_fraction, **overrides)

    def to_json(self) -> dict:
        return {"train": dict(self.train), "data": self.data.to_json(), "cache": self.cache,
                "skip_missing": self.skip_missing, "track": self.track,
                "source": {"in_chans": self.in_chans} if self.in_chans is not None else {}}

    @classmethod
    def from_json(cls, d: dict) -> "FinetuneOptions":
        source = dict(d.get("source") or {})
        unknown = set(source) - {"in_chans"}
        if unknown:
            raise ChexcutError(f"not model options: {', '.join(sorted(unknown))}")
        return cls(train=dict(d.get("train") or {}), data=dict(d.get("data") or {}), cache=d.get("cache"),
                   skip_missing=bool(d.get("skip_missing")), track=d.get("track"), in_chans=source.get("in_chans"))

    def tracking(self, study: str, cell: str):
        """This study's :class:`chexcut.tracking.Tracking` for one run (None when untracked): the experiment is
        the study's (unless the plan named one), the tags the plan's and the run's grid cell."""
        if not self.track:
            return None
        from chexcut.tracking import tracking_from

        tags = {**dict(self.track.get("tags") or {}), **study_tags(study, cell)}
        return tracking_from(self.track["uri"], self.track.get("experiment") or study_experiment(study), tags,
                             self.track.get("log_models", True))


def study_experiment(study: str) -> str:
    return Path(study).resolve().name


def study_tags(study: str, cell: str) -> dict:
    return {"chexcut.study": str(Path(study).resolve()), "chexcut.grid_cell": cell}
