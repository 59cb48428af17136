"""What an architecture looks like, block by block, measured rather than assumed.

Everything here runs the library's model on PyTorch's ``meta`` device: shapes and
FLOPs are real (a genuine forward pass through every module), no memory is
allocated and no weights are needed, so ``chexcut inspect densenet201`` is quick.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS
from chexcut.models.libraries import weights_meta
from chexcut.models.registry import Arch, get_arch
from chexcut.models.spec import DEFAULT_IMAGE_SIZE
from chexcut.models.surgery import build_architecture, get_module


@dataclass
class BlockInfo:
    index: int
    name: str
    params: int
    cum_params: int  # stem + blocks 1..index
    out_channels: int
    reduction: int
    spatial: tuple[int, int]
    macs: int


@dataclass
class TruncationInfo:
    drop: int
    keep: int
    params: int
    macs: int
    out_channels: int
    fraction: float  # params / params at drop 0
    compression: float  # params at drop 0 / params


@dataclass
class Anatomy:
    arch: str
    source: str
    image_size: int
    num_blocks: int
    n_labels: int
    stem_params: int
    blocks: list[BlockInfo]
    truncations: list[TruncationInfo]
    top1: float | None

    def to_json(self) -> dict:
        d = asdict(self)
        for b in d["blocks"]:
            b["spatial"] = list(b["spatial"])
        return d


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=8)
def meta_model(name: str) -> nn.Module:
    """The library's full architecture on the meta device (shapes, no memory); shared, do not modify."""
    arch = get_arch(name)
    with torch.device("meta"):
        model = build_architecture(arch)
    return model.eval()


def full_params(name: str) -> int:
    """Parameters of the library's ImageNet model, less the modules chexcut discards (aux heads)."""
    arch = get_arch(name)
    model = meta_model(arch.name)
    return _params(model) - sum(_params(get_module(model, p)) for p in arch.family.discard)


def _forward_ok(model: nn.Module, size: int) -> bool:
    x = torch.empty(1, 3, size, size, device="meta")
    try:
        with torch.no_grad():
            model(x)
        return True
    except (RuntimeError, ValueError):
        return False


def min_image_size(name: str) -> int:
    """The smallest square input the whole architecture accepts (binary search on meta)."""
    model = meta_model(name)
    lo, hi = 1, 1024
    if not _forward_ok(model, hi):
        raise RuntimeError(f"{name} fails even at {hi} px")
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward_ok(model, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def check_image_size(name: str, size: int) -> None:
    from chexcut.choices import MAX_IMAGE_SIZE

    if size > MAX_IMAGE_SIZE:  # before any allocation: 10^9 px a side would ask the allocator for exabytes
        raise ChexcutError(f"--image-size {size} is more than chexcut handles ({MAX_IMAGE_SIZE} px a side)")
    if size < 1 or not _forward_ok(meta_model(name), size):
        raise ChexcutError(
            f"--image-size {size} is too small for {name}: the minimum is {min_image_size(name)} px"
        )


def _probe(model, fam, image_size: int):
    """One meta-device forward: each block's output shape, and the FLOP counter of every module."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[int, tuple] = {}
    hooks = []
    for i, paths in enumerate(fam.blocks, start=1):
        def hook(_m, _inp, out, i=i):
            shapes[i] = tuple(out.shape)

        hooks.append(get_module(model, paths[-1]).register_forward_hook(hook))
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return shapes, fc


def anatomy(name: str, image_size: int = DEFAULT_IMAGE_SIZE, n_labels: int = len(CHEXPERT_LABELS)) -> Anatomy:
    """Per-block and per-truncation figures for ``name`` at ``image_size``."""
    arch: Arch = get_arch(name)
    fam = arch.family
    check_image_size(arch.name, image_size)
    model = meta_model(arch.name)
    root = type(model).__name__

    shapes, fc = _probe(model, fam, image_size)
    counts = fc.get_flop_counts()

    def macs(path: str) -> int:
        return int(sum(counts.get(f"{root}.{path}", {}).values()) // 2)

    stem_params = sum(_params(get_module(model, p)) for p in fam.stem)
    stem_macs = sum(macs(p) for p in fam.stem)
    blocks: list[BlockInfo] = []
    cum = stem_params
    for i, paths in enumerate(fam.blocks, start=1):
        p = sum(_params(get_module(model, q)) for q in paths)
        cum += p
        _, c, h, w = shapes[i]
        blocks.append(BlockInfo(
            index=i, name=fam.block_name(i), params=p, cum_params=cum, out_channels=c,
            reduction=2 ** round(math.log2(image_size / h)), spatial=(h, w),
            macs=sum(macs(q) for q in paths),
        ))

    head = get_module(model, fam.head)
    total_params = full_params(arch.name)  # the function; the figure is `full`
    full = total_params - _params(head) + (head.in_features + 1) * n_labels
    full_macs = int(fc.get_total_flops() // 2) - head.in_features * head.out_features + head.in_features * n_labels
    truncations = [TruncationInfo(0, fam.num_blocks, full, full_macs, head.in_features, 1.0, 1.0)]
    run_macs = stem_macs
    block_macs = [b.macs for b in blocks]
    for drop in range(1, fam.num_blocks):
        kept = fam.num_blocks - drop
        c = blocks[kept - 1].out_channels
        neck = sum(_params(get_module(model, p)) for p in fam.neck.paths(kept))
        params = blocks[kept - 1].cum_params + neck + (c + 1) * n_labels
        run_macs = stem_macs + sum(block_macs[:kept]) + c * n_labels
        truncations.append(TruncationInfo(
            drop, kept, params, run_macs, c, params / full, full / params,
        ))
    top1 = weights_meta(arch)["top1"]
    return Anatomy(arch.name, arch.source, image_size, fam.num_blocks, n_labels, stem_params,
                   blocks, truncations, top1)

