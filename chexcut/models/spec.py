"""The contract between commands: a typed :class:`ModelSpec` with its :class:`Preprocess`.

A model file (:mod:`chexcut.models.modelfile`) stores ``ModelSpec.to_json()``; every command that takes a
model feeds it with its own preprocessing. No torch at module level.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from chexcut.choices import Resize, values
from chexcut.errors import ChexcutError
from chexcut.models.registry import DEFAULT_IMAGE_SIZE
from chexcut.reading import json_depth

RESIZE_MODES = values(Resize)


@dataclass(frozen=True)
class Preprocess:
    """How a model's input is made from a grey X-ray: decoded to ``image_size`` square (``resize``:
    squash or pad), then scaled to [0, 1], replicated to ``in_chans`` channels, normalised per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int = DEFAULT_IMAGE_SIZE
    resize: str = "squash"
    in_chans: int = 3

    def normalise(self, batch, channels_last: bool = False):
        """uint8 (N, 1, H, W) on any device -> normalised float32 (N, in_chans, H, W).

        A grey image is replicated to 3 channels (each normalised with its own channel's statistics) unless
        ``in_chans == 1``. Traceable: the ONNX export runs it inside its graph."""
        import torch

        x = batch.to(dtype=torch.float32) / 255.0
        m = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        x = (x - m) / s
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def with_size(self, image_size: int | None = None, resize: str | None = None) -> "Preprocess":
        """This preprocessing at another size or resize mode (``None`` keeps the model's own)."""
        return replace(self, image_size=int(image_size or self.image_size), resize=resize or self.resize)


@dataclass(frozen=True)
class ModelSpec:
    """What a chexcut model is: everything needed to rebuild it and to feed it (its :class:`Preprocess`)."""

    arch: str
    drop: int
    labels: tuple[str, ...]
    preprocess: Preprocess
    source: str = ""  # the model library
    keep: int = 0
    num_blocks: int = 0
    kept_blocks: tuple[str, ...] = ()
    head: dict = field(default_factory=dict)
    weights: dict = field(default_factory=lambda: {"kind": "none"})
    params: int = 0
    seed: int | None = 0
    chexcut_version: str = ""
    training: dict | None = None  # a finetune's best model: run_dir, step, valid_mean_auroc
    pool: str = "avg"  # how the head pools the last kept block: avg (maps, or patch tokens) | token (class token)
    notes: tuple[str, ...] = field(default=(), compare=False)  # what reading an older file assumed

    @property
    def weights_name(self) -> str:
        return self.weights.get("name") or self.weights.get("id") or self.weights.get("path") or self.weights["kind"]

    def to_json(self) -> dict:
        p = self.preprocess
        out = {"format": "chexcut-model", "format_version": 1, "arch": self.arch, "source": self.source,
               "drop": self.drop, "keep": self.keep, "num_blocks": self.num_blocks,
               "kept_blocks": list(self.kept_blocks), "head": dict(self.head), "labels": list(self.labels),
               "in_chans": p.in_chans, "normalisation": {"mean": list(p.mean), "std": list(p.std)},
               "image_size": p.image_size, "resize": p.resize, "weights": dict(self.weights),
               "params": self.params, "seed": self.seed, "chexcut_version": self.chexcut_version, "pool": self.pool}
        if self.training is not None:
            out["training"] = dict(self.training)
        return out

    @classmethod
    def from_json(cls, spec: dict, path="the model spec") -> "ModelSpec":
        """A spec from a model file's JSON, checked (one clear line for a damaged one)."""
        check_spec(spec, path)
        notes = ()
        if "resize" not in spec:
            notes = (f"{path} was written before model files recorded their resize mode: read as squash",)
        norm = spec["normalisation"]
        pre = Preprocess(mean=tuple(float(v) for v in norm["mean"]), std=tuple(float(v) for v in norm["std"]),
                         image_size=int(spec.get("image_size", DEFAULT_IMAGE_SIZE)),
                         resize=spec.get("resize", "squash"), in_chans=int(spec.get("in_chans", 3)))
        return cls(arch=spec["arch"], drop=int(spec["drop"]), labels=tuple(spec["labels"]), preprocess=pre,
                   source=spec.get("source", ""), keep=int(spec.get("keep", 0)),
                   num_blocks=int(spec.get("num_blocks", 0)), kept_blocks=tuple(spec.get("kept_blocks", ())),
                   head=dict(spec.get("head", {})), weights=dict(spec.get("weights") or {"kind": "none"}),
                   params=int(spec.get("params", 0)), seed=spec.get("seed"),
                   chexcut_version=str(spec.get("chexcut_version", "")), training=spec.get("training"), notes=notes,
                   pool=spec.get("pool", "avg"))



#: What a model file's spec must hold, and the types: checked once, whenever a spec is read.
SPEC_SCHEMA = {"format_version": int, "arch": str, "drop": int, "labels": list, "normalisation": dict}


def check_spec(spec: dict, path) -> None:
    """One clear line for a damaged spec (missing keys, wrong types, an unknown architecture)."""
    from chexcut.models.registry import get_arch

    for key, kind in SPEC_SCHEMA.items():
        if key not in spec:
            raise ChexcutError(f"{path}: damaged chexcut metadata: no {key!r}")
        if not isinstance(spec[key], kind) or isinstance(spec[key], bool):
            raise ChexcutError(f"{path}: damaged chexcut metadata: {key!r} should be {kind.__name__}, "
                               f"not {type(spec[key]).__name__} ({spec[key]!r:.40})")
    if spec["format_version"] > 1:
        raise ChexcutError(f"{path} was written by a newer chexcut (format {spec['format_version']}); upgrade chexcut")
    if not spec["labels"] or not all(isinstance(x, str) for x in spec["labels"]):
        raise ChexcutError(f"{path}: damaged chexcut metadata: 'labels' must be a non-empty list of names")
    norm = spec["normalisation"]
    if not all(isinstance(norm.get(k), list) and norm[k] and all(isinstance(v, (int, float)) for v in norm[k])
               for k in ("mean", "std")):
        raise ChexcutError(f"{path}: damaged chexcut metadata: 'normalisation' needs numeric 'mean' and 'std' lists")
    import math

    mean, std = norm["mean"], norm["std"]
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise ChexcutError(f"{path}: damaged chexcut metadata: normalisation mean {mean} / std {std}: the means must be "
                           f"finite and the standard deviations positive")
    channels = spec.get("in_chans", 3)
    if not isinstance(channels, int) or isinstance(channels, bool) or len(mean) != channels or len(std) != channels:
        raise ChexcutError(f"{path}: damaged chexcut metadata: {len(mean)} means and {len(std)} standard deviations "
                           f"for {channels!r} input channels")
    try:
        arch = get_arch(spec["arch"])
    except ChexcutError as e:
        raise ChexcutError(f"{path}: damaged chexcut metadata: {e}") from None
    if spec.get("resize", "squash") not in RESIZE_MODES:
        raise ChexcutError(f"{path}: damaged chexcut metadata: resize {spec['resize']!r} is not one of "
                           f"{', '.join(RESIZE_MODES)}")
    size = spec.get("image_size", DEFAULT_IMAGE_SIZE)
    from chexcut.choices import BOUNDS

    lo, hi = BOUNDS["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not lo <= size <= hi:
        raise ChexcutError(f"{path}: damaged chexcut metadata: image_size {size!r} is not a size in pixels "
                           f"({lo}..{hi})")
    if spec.get("pool", "avg") not in arch.family.pools:
        raise ChexcutError(f"{path}: damaged chexcut metadata: pool {spec['pool']!r} is not one of {arch.name}'s "
                           f"({', '.join(arch.family.pools)})")
    if not 0 <= spec["drop"] < arch.family.num_blocks:
        raise ChexcutError(f"{path}: damaged chexcut metadata: drop {spec['drop']} is not a truncation of {arch.name}")


#: The safetensors metadata key holding a chexcut model file's spec.
def weights_label(weights: dict) -> str:
    """How a study's report names a model's starting weights (its ``weights`` record): ``imagenet``, ``none``, a
    pretraining source's name, or ``file`` (a state dict or a published model)."""
    kind = weights["kind"]
    if kind == "source":
        return weights.get("name") or "source"
    return {"imagenet": "imagenet", "none": "none"}.get(kind, "file")


META_KEY = "chexcut"
MAX_META_BYTES = 1_000_000  # a spec's JSON is ~2 kB; 99 MB of metadata is refused before parsing
MAX_META_DEPTH = 32


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The spec of a chexcut model file, without reading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ChexcutError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        raise ChexcutError(
            f"{path} is not a chexcut model file (not a valid safetensors file; pickles are never loaded)"
        ) from None
    if META_KEY not in meta:
        raise ChexcutError(f"{path} is a safetensors file but not a chexcut model (no '{META_KEY}' metadata)")
    text = meta[META_KEY]
    if len(text) > MAX_META_BYTES:  # a spec is a few kB: bounded before it is parsed
        raise ChexcutError(f"{path}: damaged chexcut metadata: {len(text):,} characters (a spec holds at most "
                           f"{MAX_META_BYTES:,})")
    if json_depth(text) > MAX_META_DEPTH:
        raise ChexcutError(f"{path}: damaged chexcut metadata: nested deeper than {MAX_META_DEPTH} levels")
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ChexcutError(f"{path}: the chexcut metadata is not valid JSON") from None
    if not isinstance(spec, dict) or spec.get("format") != "chexcut-model":
        raise ChexcutError(f"{path}: the chexcut metadata does not describe a model")
    return ModelSpec.from_json(spec, path)
