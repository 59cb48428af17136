"""Every closed set of option values, declared once.

The CLI uses these as Typer choices (help, completion and the "invalid choice" message come from
them); library entry points check plain strings with :func:`check`, in one place per parameter.
No torch here.
"""

from __future__ import annotations

from enum import Enum

from chexcut.errors import ChexcutError


class Choice(str, Enum):
    def __str__(self) -> str:
        return self.value


class Precision(Choice):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"
    auto = "auto"


class Resize(Choice):
    squash = "squash"
    pad = "pad"


class Pool(Choice):
    """How a truncated model's head pools its last kept block (a family declares which it takes)."""
    token = "token"
    avg = "avg"


class ExportFormat(Choice):
    """What ``chexcut export`` writes: an ONNX graph, or a Hugging Face model folder."""
    onnx = "onnx"
    hub = "hub"


RESIZE_HELP = "squash (CheXpert baseline) or pad (letterbox)."


class Blank(Choice):
    zeros = "zeros"
    ignore = "ignore"


class Views(Choice):
    frontal = "frontal"
    lateral = "lateral"
    ap = "ap"
    pa = "pa"
    all = "all"


class Split(Choice):
    train = "train"
    valid = "valid"
    test = "test"
    all = "all"


class Method(Choice):
    bootstrap = "bootstrap"
    delong = "delong"


class Cluster(Choice):
    patient = "patient"
    study = "study"
    none = "none"


class Level(Choice):
    study = "study"
    image = "image"


class Recipe(Choice):
    paper = "paper"
    fast = "fast"


class LogFormat(Choice):
    rich = "rich"
    json = "json"


def values(choice: type[Choice]) -> tuple[str, ...]:
    return tuple(c.value for c in choice)


def check(choice: type[Choice], value, name: str) -> str:
    """``value`` as a plain string if it is one of ``choice``; else a one-line error naming ``name``."""
    value = value.value if isinstance(value, Enum) else value
    allowed = values(choice)
    if value not in allowed:
        raise ChexcutError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}")
    return value


# ----------------------------------------------------------------------------- numeric bounds

#: Every bounded number a user can give, declared once: name -> (least, most, what the bound is for). The CLI
#: passes them to Typer (``min``/``max``: one-line "not in the range" errors) and the library checks the same
#: values with :func:`check_bounds` (settings read back from config.json, plans and specs included).
#: The input size chexcut uses when nothing else says (CheXpert's 320 x 320): the one place it is spelled;
#: :func:`chexcut.models.registry.default_image_size` rounds it to a size a family takes.
DEFAULT_IMAGE_SIZE = 320
MAX_IMAGE_SIZE = 4096  # pixels a side; CheXpert's own images are about 2,320 x 2,828, papers train at 224-512
BOUNDS: dict[str, tuple[float, float | None]] = {
    "seed": (0, 2**32 - 1),  # numpy and torch seeds
    "batch_size": (1, 65536),
    "epochs": (1, 100000),
    "val_every": (1, None),
    "log_every": (1, None),
    "max_steps": (1, None),
    "image_size": (16, MAX_IMAGE_SIZE),
    "workers": (0, 256),
    "precise_bn": (0, None),
    "bootstrap": (0, 100_000),
    "jobs": (1, 1024),
    "top": (1, 1000),
    "failures": (0, 1000),  # evaluate --failures N: cases listed per label and kind
    "limit": (1, None),
    "check_limit": (1, None),
    "threads": (1, 1024),
    "in_chans": (1, 4),
    "drop": (0, None),
    "keep": (1, None),
    "gpus_per_task": (0, None),  # 0: a CPU partition
    "cpus_per_task": (1, None),
    "nodes": (1, None),
    "signal_before": (0, None),  # seconds; 0: no warning signal
}


def check_bounds(name: str, value, flag: str | None = None):
    """``value`` within ``BOUNDS[name]`` (None passes: "not given"); one-line error naming the flag."""
    if value is None:
        return value
    lo, hi = BOUNDS[name]
    flag = flag or "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ChexcutError(f"{flag} must be a number, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi:,}"
        raise ChexcutError(f"{flag} must be {rng}, not {value}")
    return value


def bound(name: str) -> dict:
    """Typer's ``min``/``max`` for an option: ``typer.Option("--seed", **bound("seed"))``."""
    lo, hi = BOUNDS[name]
    return {"min": lo, **({} if hi is None else {"max": hi})}
