"""What a backbone's blocks output, read from the declaration and the model: one place every consumer asks.

The registry (:class:`chexcut.models.registry.Family`) declares what varies between families: a block outputs
``NCHW`` maps (CNNs, ConvNeXt), ``NHWC`` maps (timm's Swin) or ``NLC`` tokens (ViT, DeiT, DINOv2: prefix tokens
such as the class and register tokens first, then the patch grid row by row). This module turns any block's
output into an ``NCHW`` map (:func:`as_maps`), so the anatomy's shapes, Grad-CAM and the randomisation check
never unpack a shape themselves, and finds the modules that are blocks (:func:`block_modules`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chexcut.models.registry import Arch, Family


def prefix_tokens(model: nn.Module, family: Family) -> int:
    """Tokens before the patch grid (class token, register tokens): timm's ``num_prefix_tokens``; 0 for maps."""
    return int(getattr(model, "num_prefix_tokens", 0)) if family.tokens else 0


def as_maps(x: torch.Tensor, family: Family, prefix: int = 0) -> torch.Tensor:
    """A block's output as an ``NCHW`` map: ``NHWC`` permuted; ``NLC`` tokens without their ``prefix`` tokens,
    the patch tokens laid back on their (square) grid. A view where it can be (gradients flow through it)."""
    if family.output == "NCHW":
        return x
    if family.output == "NHWC":
        return x.permute(0, 3, 1, 2)
    patches = x[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def block_paths(arch: Arch) -> list[str]:
    """The module path whose output is each block's output (its last module), block 1 first."""
    return [paths[-1] for paths in arch.family.blocks]


def kept_block_paths(model: nn.Module, arch: Arch, drop: int) -> list[list[str]]:
    """Each kept block's module paths in a chexcut model, block 1 first, as the family declares them (a DenseNet
    block is its dense block and its transition; the last path is the block's output).

    A table family's truncated model (:class:`chexcut.models.surgery.ChexcutNet`) holds its blocks in
    ``model.blocks``; a whole model and a timm-pruned one keep the library's module paths."""
    if drop > 0 and arch.family.pruning == "table":
        return [[f"blocks.{i}"] for i in range(len(model.blocks))]
    return [list(paths) for paths in arch.family.blocks[:arch.family.num_blocks - drop]]


def block_modules(model: nn.Module, arch: Arch, drop: int) -> list[nn.Module]:
    """The kept blocks of a chexcut model, in order (index 1 = block 1 of ``inspect``): the module whose output is
    each block's output."""
    return [model.get_submodule(paths[-1]) for paths in kept_block_paths(model, arch, drop)]
