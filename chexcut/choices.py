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
