"""How much of a model a run trains (``finetune --adapt``): everything, the head alone on a frozen backbone
(``probe``), or the last K kept blocks and the head (``last:K``).

The head is everything after the last kept block (a CNN's final norm, pooling and classifier; a ViT's final norm and
classifier). Frozen parameters get no gradient and are left out of the optimizer; a frozen block's BatchNorm
layers stay in eval mode while training (their running statistics are the pretrained ones, never re-estimated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chexcut.errors import ChexcutError

ADAPT_HELP = "full (every parameter), probe (the head on a frozen backbone) or last:K (the last K kept blocks and the head)"


@dataclass(frozen=True)
class Adapt:
    kind: str  # full | probe | last
    blocks: int = 0  # last:K: the K kept blocks trained

    def __str__(self) -> str:
        return f"last:{self.blocks}" if self.kind == "last" else self.kind


def parse_adapt(value: str) -> Adapt:
    """``full``, ``probe`` or ``last:K`` (K >= 1); anything else is one line."""
    text = str(value).strip().lower()
    if text in ("full", "probe"):
        return Adapt(text)
    m = re.fullmatch(r"last:([0-9]{1,4})", text)
    if m and int(m.group(1)) >= 1:
        return Adapt("last", int(m.group(1)))
    raise ChexcutError(f"--adapt {value!r}: {ADAPT_HELP}, e.g. last:2")


def apply_adapt(model, spec, adapt: str) -> tuple[int, int]:
    """Freeze what ``adapt`` does not train (``requires_grad`` off); returns (trainable, total) parameters."""
    a = parse_adapt(adapt)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if a.kind == "full":
        return total, total
    blocks = kept_block_parameters(model, spec)
    if a.blocks > len(blocks):
        raise ChexcutError(f"--adapt {a}: this model keeps {len(blocks)} blocks (see `chexcut inspect`)")
    in_blocks = set().union(*blocks)
    order = [id(p) for p in params]
    last_block_param = max(i for i, p in enumerate(order) if p in in_blocks)
    head = {pid for pid in order[last_block_param + 1:] if pid not in in_blocks}  # registered after the blocks
    trained = head.union(*blocks[len(blocks) - a.blocks:])
    for p in params:
        p.requires_grad_(id(p) in trained)
    return sum(p.numel() for p in params if p.requires_grad), total


def kept_block_parameters(model, spec) -> list[set[int]]:
    """The ids of each kept block's parameters, block 1 first: every module of the block (a DenseNet block is its
    dense block and its transition), as the family declares them; a table family's truncated model holds them in
    ``model.blocks``."""
    from chexcut.models.registry import get_arch

    arch = get_arch(spec.arch)
    if spec.drop > 0 and arch.family.pruning == "table":
        return [{id(p) for p in b.parameters()} for b in model.blocks]
    kept = arch.family.num_blocks - spec.drop
    return [{id(p) for path in paths for p in model.get_submodule(path).parameters()}
            for paths in arch.family.blocks[:kept]]


def frozen_batchnorms(model) -> list:
    """The BatchNorm layers whose parameters are all frozen (kept in eval mode while training)."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and list(m.parameters(recurse=False)) and not any(p.requires_grad for p in m.parameters(recurse=False))]


def train_mode(model) -> None:
    """``model.train()``, with the frozen BatchNorm layers left in eval mode."""
    model.train()
    for m in frozen_batchnorms(model):
        m.eval()
