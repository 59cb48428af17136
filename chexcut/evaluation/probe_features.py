"""``chexcut probe``'s features: one forward pass over a table's images keeps the pooled output of every kept block,
stored float16 (safetensors) and reused by a later probe with the same key.

How a block's output is pooled belongs to the family's declaration (:class:`chexcut.models.registry.Family`):

- maps (``NCHW``; ``NHWC`` read through :func:`chexcut.models.backbone.as_maps`): the global average of the block's
  output, as a truncated model's head pools (without a table family's neck: DenseNet's BatchNorm + ReLU after the
  last kept block is a part of the truncated model, not of the block);
- tokens (``NLC``): the final norm applied to the block's tokens, then the model's pool (``ModelSpec.pool``, the
  family's ``pools[0]`` unless the model file says otherwise): ``token`` = the class token, ``avg`` = the mean of
  the patch tokens. This is what the head of the model truncated at that depth reads (timm keeps a ViT's final
  norm when it prunes), so block ``k``'s features are those of ``chexcut truncate ARCH --keep k``.

A family timm prunes (ViT, DINOv2, Swin, ConvNeXt) runs timm's ``forward_intermediates`` (``stop_early``: no block
after the last kept one runs, no head); a table family (the CheXtransfer CNNs) runs its forward with a hook on each
kept block (:func:`chexcut.models.backbone.block_modules`) that stops the forward after the last one.

A cached file is ``OUT/features/SPLIT-KEY.safetensors`` (tensors ``block1`` ... ``blockK``, rows in the table's
order); KEY hashes what determines the features: the model (a model file's sha256, or the architecture, drop,
weights and seed), the preprocessing (image size, resize, mean/std, channels), the precision, and the rows (each
image file's path, size and mtime, in order). The key's content is in the file's metadata and checked on reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chexcut.errors import ChexcutError

FORMAT = 1
METADATA_KEY = "chexcut_probe_features"


class _Stop(Exception):
    """Raised by the last kept block's hook: the rest of the forward (neck, pool, head) never runs."""


def pool_tokens(patches: torch.Tensor, prefix: torch.Tensor | None, pool: str) -> torch.Tensor:
    """(N, C) from normed patch tokens (N, L, C) and prefix tokens (N, P, C): the class token or the patch mean."""
    if pool == "token":
        if prefix is None or prefix.shape[1] == 0:
            raise ChexcutError("pool token: this model has no class token; use a model that pools by avg")
        return prefix[:, 0]
    return patches.mean(1)


def hooked_outputs(model: torch.nn.Module, modules: list[torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of ``modules`` (in forward order) from one forward of ``model`` stopped after the last one."""
    outs: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        outs.append(output)
        if len(outs) == len(modules):
            raise _Stop

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return outs


def block_features(model: torch.nn.Module, arch, spec, x: torch.Tensor) -> list[torch.Tensor]:
    """The pooled features (N, C_k) of every kept block k of a chexcut model for a normalised batch ``x``."""
    from chexcut.models.backbone import as_maps, block_modules

    family, kept = arch.family, spec.num_blocks - spec.drop
    if family.pruning == "timm":  # timm's own intermediates, up to the last kept block only
        if family.tokens:
            outs = model.forward_intermediates(x, indices=list(range(kept)), norm=True, stop_early=True,
                                               output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
            outs = [(o, None) if torch.is_tensor(o) else o for o in outs]  # no prefix tokens: plain tensors
            return [pool_tokens(patches, prefix, spec.pool) for patches, prefix in outs]
        outs = model.forward_intermediates(x, indices=list(range(kept)), stop_early=True, intermediates_only=True)
        return [o.mean((2, 3)) for o in outs]  # timm's NCHW maps (a Swin's too)
    outs = hooked_outputs(model, block_modules(model, arch, spec.drop), x)
    return [as_maps(o, family).mean((2, 3)) for o in outs]


@dataclass(frozen=True)
class FeatureKey:
    """What determines a table's features (``material``, JSON) and its hash, the file name's ``key``."""

    material: dict

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.material, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, folder: Path, split: str) -> Path:
        return Path(folder) / f"{split}-{self.key}.safetensors"


def feature_key(identity: dict, pre, precision: str, files: list) -> FeatureKey:
    """The key of the features of ``files`` (in order) from the model ``identity`` under preprocessing ``pre``."""
    from chexcut.data.cache import fingerprint

    return FeatureKey({"format": FORMAT, "model": identity, "precision": precision, "rows": len(files),
                       "files": fingerprint([Path(f) for f in files]),
                       "preprocess": {"image_size": pre.image_size, "resize": pre.resize, "mean": list(pre.mean),
                                      "std": list(pre.std), "in_chans": pre.in_chans}})


def model_identity(source, spec) -> dict:
    """What the model contributes to the key: a model file's bytes, or how an architecture was built."""
    from chexcut.fileio import sha256_file

    if source.file is not None:
        return {"file_sha256": sha256_file(source.file)}
    return {**source.to_json(), "weights_origin": json.loads(json.dumps(spec.weights, default=str)),
            "pool": spec.pool}


def read_features(path: Path, key: FeatureKey) -> list[np.ndarray] | None:
    """The cached features of ``key`` (float16, block 1 first), or None when there are none (or not these)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            if json.loads((f.metadata() or {}).get(METADATA_KEY, "null")) != key.material:
                return None
            n = len(f.keys())
            return [f.get_tensor(f"block{k}") for k in range(1, n + 1)]
    except Exception:  # damaged or another file under the name: computed again, written over it
        return None


def write_features(path: Path, key: FeatureKey, blocks: list[np.ndarray]) -> None:
    """``blocks`` as float16 tensors ``block1`` ... with the key's material, written atomically."""
    from safetensors.numpy import save_file

    from chexcut.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"block{k}": np.ascontiguousarray(b, dtype=np.float16) for k, b in enumerate(blocks, 1)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(key.material, sort_keys=True)})


@dataclass(frozen=True)
class Extractor:
    """A chexcut model ready to give the pooled features of every kept block: on ``device`` under ``precision``."""

    model: torch.nn.Module
    arch: object  # chexcut.models.registry.Arch
    spec: object  # ModelSpec, with the preprocessing the features are computed with
    device: torch.device
    precision: str

    @torch.no_grad()
    def table_features(self, table, infer, cache=None, progress=None) -> list[np.ndarray]:
        """One forward pass over ``table``'s images (the evaluation's loader; ``cache``: an image cache holding
        them): per kept block, (rows, width) float16, in the table's row order."""
        from chexcut.data.batches import XrayBatches, batch_order, make_loader
        from chexcut.models.infer import autocast

        pre = self.spec.preprocess
        ds = XrayBatches(table, pre.image_size, pre.resize, cache=cache)
        loader = make_loader(ds, batch_order(len(ds), infer.batch_size, False, 0, 0), infer.workers,
                             pin=self.device.type == "cuda")
        out: list[np.ndarray] | None = None
        done = 0
        for images, _t, _m, rows in loader:
            x = pre.normalise(images.to(self.device, non_blocking=True))
            with autocast(self.device, self.precision):
                feats = block_features(self.model, self.arch, self.spec, x)
            if out is None:
                out = [np.zeros((len(ds), f.shape[1]), dtype=np.float16) for f in feats]
            for block, f in zip(out, feats):
                block[rows.numpy()] = f.float().cpu().numpy().astype(np.float16)
            done += len(rows)
            if progress:
                progress(done, len(ds))
        if out is None:
            raise ChexcutError("no rows to compute features for")
        return out
