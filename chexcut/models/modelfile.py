"""chexcut model files: safetensors weights + a JSON spec, loaded without unpickling.

A model file is a plain ``.safetensors`` file whose metadata holds one key,
``chexcut``, a JSON object (see :func:`chexcut.models.surgery.truncate`'s spec): architecture,
drop/keep, labels, normalisation, weights origin, version. :func:`load_model` rebuilds
the module from the spec and loads the tensors strictly. Nothing in the file is ever
executed: safetensors stores raw tensor bytes and a JSON header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.fileio import atomic_path, check_writable

META_KEY = "chexcut"


def save_model(model, path: str | os.PathLike, spec: dict | None = None, force: bool = True,
               extra: dict | None = None) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically (temp file + rename).

    ``spec`` defaults to the one :func:`chexcut.truncate` attached to the model.
    """
    from safetensors.torch import save_file

    spec = dict(spec or getattr(model, "chexcut_spec", None) or {})
    if spec.get("format") != "chexcut-model":
        raise ChexcutError("save_model needs a chexcut spec: build the model with chexcut.truncate")
    if extra:
        spec.update(extra)
    path = Path(path)
    check_writable(path, force=force)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(spec, sort_keys=True)})
    return path


def read_spec(path: str | os.PathLike) -> dict:
    """The JSON spec of a chexcut model file, without reading its tensors."""
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
    try:
        spec = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise ChexcutError(f"{path}: the chexcut metadata is not valid JSON") from None
    if not isinstance(spec, dict) or spec.get("format") != "chexcut-model":
        raise ChexcutError(f"{path}: the chexcut metadata does not describe a model")
    check_spec(spec, path)
    return spec


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
    try:
        arch = get_arch(spec["arch"])
    except ChexcutError as e:
        raise ChexcutError(f"{path}: damaged chexcut metadata: {e}") from None
    if not 0 <= spec["drop"] < arch.family.num_blocks:
        raise ChexcutError(f"{path}: damaged chexcut metadata: drop {spec['drop']} is not a truncation of {arch.name}")


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the model a chexcut model file describes, with its weights, in eval mode.

    The returned module carries its spec as ``model.chexcut_spec``.
    """
    from safetensors.torch import load_file

    from chexcut.models.surgery import load_with_metadata, rebuild

    spec = read_spec(path)
    try:
        tensors = load_file(str(path), device=device)
    except Exception:
        raise ChexcutError(f"{path}: the tensors could not be read (truncated or corrupt file)") from None
    model = rebuild(spec)
    own = model.state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        raise ChexcutError(f"{path}: the tensors do not match the model its spec describes ({spec['arch']})")
    load_with_metadata(model, tensors)
    model.chexcut_spec = spec
    return model.to(device).eval()
