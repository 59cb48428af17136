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
from chexcut.models.backbone import as_maps, block_paths, prefix_tokens
from chexcut.models.libraries import WEIGHTS_KEYS, weights_meta
from chexcut.models.registry import Arch, check_size_multiple, default_image_size, get_arch
from chexcut.models.spec import DEFAULT_IMAGE_SIZE
from chexcut.models.surgery import build_architecture, get_module


@dataclass
class BlockInfo:
    index: int
    name: str
    params: int
    cum_params: int  # stem + blocks 1..index
    out_channels: int  # a map's channels, or a token's width
    reduction: int  # input pixels per output pixel (a ViT's patch size)
    spatial: tuple[int, int]  # the map, or the patch grid
    macs: int
    tokens: int | None = None  # a transformer layer's output tokens: the patch grid plus the prefix tokens


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
    unit: str = "block"  # what a block is: block, layer (a transformer's), stage
    output: str = "maps"  # maps | tokens
    prefix_tokens: int = 0  # class and register tokens before the patch grid
    pools: tuple[str, ...] = ("avg",)  # how a truncated model may pool; the first is the default
    weights: dict | None = None  # the ImageNet weights: id, license, mean, std, input_size

    def to_json(self) -> dict:
        d = asdict(self)
        for b in d["blocks"]:
            b["spatial"] = list(b["spatial"])
        d["pools"] = list(d["pools"])
        return d


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=8)
def _meta_model(name: str, image_size: int | None) -> nn.Module:
    arch = get_arch(name)
    with torch.device("meta"):
        model = build_architecture(arch, image_size)
    return model.eval()


def meta_model(name: str, image_size: int | None = None) -> nn.Module:
    """The library's full architecture on the meta device (shapes, no memory); shared, do not modify. A family
    built for its input size is built for ``image_size`` (default: its default size); the others take any."""
    arch = get_arch(name)
    size = (image_size or default_image_size(arch)) if arch.family.sized else None
    return _meta_model(arch.name, size)


def full_params(name: str) -> int:
    """Parameters of the library's ImageNet model, less the modules chexcut discards (aux heads)."""
    arch = get_arch(name)
    model = meta_model(arch.name)
    return _params(model) - sum(_params(get_module(model, p)) for p in arch.family.discard)


def _forward_ok(name: str, size: int) -> bool:
    x = torch.empty(1, 3, size, size, device="meta")
    try:
        model = meta_model(name, size)
        with torch.no_grad():
            model(x)
        return True
    except (RuntimeError, ValueError, AssertionError):  # timm asserts on sizes its windows cannot take
        return False


def min_image_size(name: str) -> int:
    """The smallest square input the whole architecture accepts (binary search on meta, in steps of the
    family's size multiple)."""
    step = get_arch(name).family.size_multiple
    lo, hi = 1, 1024 // step
    if not _forward_ok(name, hi * step):
        raise RuntimeError(f"{name} fails even at {hi * step} px")
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward_ok(name, mid * step):
            hi = mid
        else:
            lo = mid + 1
    return lo * step


def check_image_size(name: str, size: int) -> None:
    from chexcut.choices import MAX_IMAGE_SIZE

    if size > MAX_IMAGE_SIZE:  # before any allocation: 10^9 px a side would ask the allocator for exabytes
        raise ChexcutError(f"--image-size {size} is more than chexcut handles ({MAX_IMAGE_SIZE} px a side)")
    arch = get_arch(name)
    if size >= 1:
        check_size_multiple(arch, size)
    if size < 1 or not _forward_ok(arch.name, size):
        raise ChexcutError(
            f"--image-size {size} is too small for {arch.name}: the minimum is {min_image_size(arch.name)} px"
        )


def _probe(model, arch: Arch, image_size: int):
    """One meta-device forward: each block's output shape as a map ``(C, H, W)`` (tokens laid on their grid)
    with its token count, and the FLOP counter of every module."""
    from torch.utils.flop_counter import FlopCounterMode

    fam = arch.family
    prefix = prefix_tokens(model, fam)
    shapes: dict[int, tuple] = {}
    hooks = []
    for i, path in enumerate(block_paths(arch), start=1):
        def hook(_m, _inp, out, i=i):
            shapes[i] = (tuple(as_maps(out, fam, prefix).shape[1:]), out.shape[1] if fam.tokens else None)

        hooks.append(get_module(model, path).register_forward_hook(hook))
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return shapes, fc


def _measured_truncation(model: nn.Module, arch: Arch, drop: int, n_labels: int, image_size: int) -> tuple[int, int]:
    """(params, MACs) of the chexcut model a timm family's ``drop`` gives, measured: timm's own pruning of a meta
    copy (no memory), one counted forward."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from chexcut.models.surgery import cut

    cutted = cut(copy.deepcopy(model), arch, drop, n_labels, arch.family.pools[0])
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        cutted(torch.empty(1, 3, image_size, image_size, device="meta"))
    return _params(cutted), int(fc.get_total_flops() // 2)


def _timm_trunk_params(model: nn.Module, keep: int) -> int:
    """Parameters of timm's ``prune_intermediate_layers`` at block ``keep`` with its norm and head pruned."""
    import copy

    trunk = copy.deepcopy(model)
    trunk.prune_intermediate_layers([keep - 1], prune_norm=True, prune_head=True)
    return _params(trunk)


def _measured_truncations(model, arch: Arch, blocks: list[BlockInfo], n_labels: int,
                          image_size: int) -> list[TruncationInfo]:
    """A timm family's truncations, each measured on the model timm's pruning gives (see
    :func:`_measured_truncation`)."""
    n = arch.family.num_blocks
    rows = []
    for drop in range(n):
        params, macs = _measured_truncation(model, arch, drop, n_labels, image_size)
        rows.append(TruncationInfo(drop, n - drop, params, macs, blocks[n - drop - 1].out_channels, 0.0, 0.0))
    for t in rows:
        t.fraction, t.compression = t.params / rows[0].params, rows[0].params / t.params
    return rows


def _table_truncations(model, arch: Arch, blocks: list[BlockInfo], stem_macs: int, total_macs: int,
                       n_labels: int) -> list[TruncationInfo]:
    """A table family's truncations, added up from its blocks: stem + kept blocks + neck + the new head."""
    fam = arch.family
    head = get_module(model, fam.head)
    full = full_params(arch.name) - _params(head) + (head.in_features + 1) * n_labels
    full_macs = total_macs - head.in_features * head.out_features + head.in_features * n_labels
    rows = [TruncationInfo(0, fam.num_blocks, full, full_macs, head.in_features, 1.0, 1.0)]
    for drop in range(1, fam.num_blocks):
        kept = fam.num_blocks - drop
        c = blocks[kept - 1].out_channels
        neck = sum(_params(get_module(model, p)) for p in fam.neck.paths(kept))
        params = blocks[kept - 1].cum_params + neck + (c + 1) * n_labels
        macs = stem_macs + sum(b.macs for b in blocks[:kept]) + c * n_labels
        rows.append(TruncationInfo(drop, kept, params, macs, c, params / full, full / params))
    return rows


def anatomy(name: str, image_size: int = DEFAULT_IMAGE_SIZE, n_labels: int = len(CHEXPERT_LABELS)) -> Anatomy:
    """Per-block and per-truncation figures for ``name`` at ``image_size``."""
    arch: Arch = get_arch(name)
    fam = arch.family
    check_image_size(arch.name, image_size)
    model = meta_model(arch.name, image_size)
    root = type(model).__name__

    shapes, fc = _probe(model, arch, image_size)
    counts = fc.get_flop_counts()

    def macs(path: str) -> int:
        return int(sum(counts.get(f"{root}.{path}", {}).values()) // 2)

    block_params = [sum(_params(get_module(model, q)) for q in paths) for paths in fam.blocks]
    stem_macs = 0
    if fam.pruning == "timm":  # timm's own trunk at block 1 (no norm, no head) less block 1: what runs before it
        stem_params = _timm_trunk_params(model, 1) - block_params[0]
    else:
        stem_params = sum(_params(get_module(model, p)) for p in fam.stem)
        stem_macs = sum(macs(p) for p in fam.stem)
    blocks: list[BlockInfo] = []
    cum = stem_params
    for i, paths in enumerate(fam.blocks, start=1):
        cum += block_params[i - 1]
        (c, h, w), tokens = shapes[i]
        blocks.append(BlockInfo(
            index=i, name=fam.block_name(i), params=block_params[i - 1], cum_params=cum, out_channels=c,
            reduction=2 ** round(math.log2(image_size / h)) if not fam.tokens else image_size // h, spatial=(h, w),
            macs=sum(macs(q) for q in paths), tokens=tokens,
        ))

    if fam.pruning == "timm":
        truncations = _measured_truncations(model, arch, blocks, n_labels, image_size)
    else:
        truncations = _table_truncations(model, arch, blocks, stem_macs, int(fc.get_total_flops() // 2), n_labels)
    meta = weights_meta(arch)
    weights = {k: meta[k] for k in WEIGHTS_KEYS if k != "top1"}  # top-1 has its own field
    return Anatomy(arch.name, arch.source, image_size, fam.num_blocks, n_labels, stem_params,
                   blocks, truncations, meta["top1"], unit=fam.unit, output="tokens" if fam.tokens else "maps",
                   prefix_tokens=prefix_tokens(model, fam), pools=fam.pools, weights=weights)
