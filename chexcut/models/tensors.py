"""State dicts on disk and into modules: read (never unpickling objects), rename legacy keys, load strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from chexcut.errors import ChexcutError
from chexcut.models.registry import Arch


def normalise_state_dict(state: dict, arch: Arch) -> dict:
    """Strip DataParallel's ``module.`` prefix and apply the family's legacy-key filter."""
    rename = arch.family.key_filter or (lambda key: key)
    return {rename(key.removeprefix("module.")): value for key, value in state.items()}


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little endian) and then '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def read_state_dict(path: Path) -> dict:
    """Tensors from a .safetensors or a .pth/.pt file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ChexcutError(f"weights file not found: {path}")
    if path.suffix == ".safetensors" or is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ChexcutError(f"{path} is not a readable safetensors file ({e})") from None
    if _is_torchscript(path):  # torch.load would warn and hand it to torch.jit.load (code, not a state dict)
        raise ChexcutError(f"{path} is a TorchScript archive, not a state dict; save model.state_dict() with "
                           f"torch.save and pass that file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChexcutError(f"{path}: refused to load (only plain tensor state dicts are read): {first}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ChexcutError(f"{path} does not hold a state dict of tensors")
    return state


def load_state_dict_strict(model: nn.Module, state: dict, arch: Arch, origin: str) -> None:
    state = normalise_state_dict(state, arch)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        raise ChexcutError(f"{origin} does not fit {arch.name}: " + "; ".join(parts))
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ChexcutError(
            f"{origin} does not fit {arch.name}: {len(bad)} tensors of another shape, "
            f"e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    load_with_metadata(model, state)


def load_with_metadata(model: nn.Module, state: dict) -> None:
    """``load_state_dict(strict=True)`` for tensors that lost PyTorch's per-module ``_metadata``
    (safetensors files): the model's own metadata (e.g. MNASNet's ``version``) is used."""
    from collections import OrderedDict

    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = model.state_dict()._metadata
    model.load_state_dict(state, strict=True)


def _is_torchscript(path) -> bool:
    """A zip whose entries include TorchScript's ``code/`` or ``constants.pkl`` (torch.jit.save's layout)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
