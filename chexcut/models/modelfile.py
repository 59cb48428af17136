"""chexcut model files: safetensors weights + a typed spec (:class:`ModelSpec`), loaded without unpickling.

A model file is a plain ``.safetensors`` file whose metadata holds one key, ``chexcut``: the JSON of a
:class:`ModelSpec` (architecture, drop/keep, labels, weights origin, versions) with its
:class:`Preprocess` (image size, resize mode, per-channel mean/std, input channels). Every command that
takes a model reads its preprocessing from here, never from a default. :func:`load_model` rebuilds the
module from the spec and loads the tensors strictly. Nothing in the file is ever executed: safetensors
stores raw tensor bytes and a JSON header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.fileio import atomic_path, check_writable
from chexcut.models.spec import (  # noqa: F401 (the model file's types and its reader)
    DEFAULT_IMAGE_SIZE,
    META_KEY,
    ModelSpec,
    Preprocess,
    read_spec,
)


def save_model(model, path: str | os.PathLike, spec: ModelSpec | None = None, force: bool = True) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically (temp file + rename).

    ``spec`` defaults to the one :func:`chexcut.truncate` attached to the model.
    """
    from safetensors.torch import save_file

    spec = spec or getattr(model, "chexcut_spec", None)
    if not isinstance(spec, ModelSpec):
        raise ChexcutError("save_model needs a chexcut spec: build the model with chexcut.truncate")
    path = Path(path)
    check_writable(path, force=force)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(spec.to_json(), sort_keys=True)})
    return path




def load_model(path: str | os.PathLike, device: str = "cpu", image_size: int | None = None):
    """Rebuild the model a chexcut model file describes, with its weights, in eval mode.

    The returned module carries its :class:`ModelSpec` as ``model.chexcut_spec``. ``image_size``: run it at
    another input size than the file's (a ViT's position embeddings are resampled by timm; the spec says the
    new size).
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
        raise ChexcutError(f"{path}: the tensors do not match the model its spec describes ({spec.arch})")
    load_with_metadata(model, tensors)
    model.chexcut_spec = spec
    if image_size is not None and image_size != spec.preprocess.image_size:
        from chexcut.models.surgery import at_input_size

        model = at_input_size(model, image_size)
    return model.to(device).eval()
