"""How much of a model a run trains (``finetune --adapt``): everything, the head alone on a frozen backbone
(``probe``), the last K kept blocks and the head (``last:K``), or LoRA of rank R in the kept blocks and the head
(``lora:R``, through peft: :mod:`chexcut.training.lora`).

The head is everything after the last kept block (a CNN's final norm, pooling and classifier; a ViT's final norm and
classifier). Frozen parameters get no gradient and are left out of the optimizer; a frozen block's BatchNorm
layers stay in eval mode while training (their running statistics are the pretrained ones, never re-estimated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from chexcut.errors import ChexcutError

ADAPT_HELP = ("full (every parameter), probe (the head on a frozen backbone), last:K (the last K kept blocks and the "
              "head) or lora:R (LoRA of rank R, alpha R, in the kept blocks' Linear and Conv2d layers, and the head)")


@dataclass(frozen=True)
class Adapt:
    kind: str  # full | probe | last | lora
    blocks: int = 0  # last:K: the K kept blocks trained
    rank: int = 0  # lora:R: LoRA's rank (its alpha is the same: a scale of 1)

    def __str__(self) -> str:
        return {"last": f"last:{self.blocks}", "lora": f"lora:{self.rank}"}.get(self.kind, self.kind)


@dataclass(frozen=True)
class Adapted:
    """What :func:`apply_adapt` left trainable: parameter counts (the LoRA matrices included in both), and for
    ``lora:R`` the layers LoRA adapts and the kept blocks' layers it leaves frozen (path -> why)."""

    trainable: int
    total: int
    modules: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def parse_adapt(value: str) -> Adapt:
    """``full``, ``probe``, ``last:K`` (K >= 1) or ``lora:R`` (R >= 1); anything else is one line."""
    text = str(value).strip().lower()
    if text in ("full", "probe"):
        return Adapt(text)
    m = re.fullmatch(r"(last|lora):([0-9]{1,4})", text)
    if m and int(m.group(2)) >= 1:
        return Adapt("last", blocks=int(m.group(2))) if m.group(1) == "last" else Adapt("lora", rank=int(m.group(2)))
    raise ChexcutError(f"--adapt {value!r}: {ADAPT_HELP}, e.g. last:2 or lora:8")


def apply_adapt(model, spec, adapt: str) -> Adapted:
    """Freeze what ``adapt`` does not train (``requires_grad`` off); ``lora:R`` first adds LoRA to the kept blocks
    (in place). Returns what is trained."""
    a = parse_adapt(adapt)
    if a.kind == "full":
        total = sum(p.numel() for p in model.parameters())
        return Adapted(total, total)
    blocks = kept_block_parameters(model, spec)
    if a.blocks > len(blocks):
        raise ChexcutError(f"--adapt {a}: this model keeps {len(blocks)} blocks (see `chexcut inspect`)")
    head = head_parameters(model, blocks)
    plan = None
    if a.kind == "lora":
        from chexcut.training.lora import inject_lora, lora_plan

        plan = lora_plan(model, kept_block_paths(model, spec))
        trained = head | inject_lora(model, plan, a.rank, str(a))
    else:
        trained = head.union(*blocks[len(blocks) - a.blocks:])
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(id(p) in trained)
    return Adapted(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params),
                   plan.modules if plan else (), plan.skipped if plan else {})


def head_parameters(model, blocks: list[set[int]]) -> set[int]:
    """The ids of the head's parameters: those registered after the last block's, outside the blocks."""
    in_blocks = set().union(*blocks)
    order = [id(p) for p in model.parameters()]
    last_block_param = max(i for i, p in enumerate(order) if p in in_blocks)
    return {pid for pid in order[last_block_param + 1:] if pid not in in_blocks}


def kept_block_paths(model, spec) -> list[list[str]]:
    """Each kept block's module paths, block 1 first (:func:`chexcut.models.backbone.kept_block_paths`)."""
    from chexcut.models import backbone
    from chexcut.models.registry import get_arch

    return backbone.kept_block_paths(model, get_arch(spec.arch), spec.drop)


def kept_block_parameters(model, spec) -> list[set[int]]:
    """The ids of each kept block's parameters, block 1 first: every module of the block."""
    return [{id(p) for path in paths for p in model.get_submodule(path).parameters()}
            for paths in kept_block_paths(model, spec)]


def adapt_listing(model, spec, adapt: str) -> dict:
    """What ``adapt`` trains in ``model`` (adapted in place), as ``inspect --adapt`` shows it: ``{"adapt",
    "trainable_params", "total_params", "adapted_modules": [{"module", "block", "layer", "lora_params"}],
    "skipped_modules": {path: why}}`` (``block``: 1 = the first block, as inspect counts them)."""
    adapted = apply_adapt(model, spec, adapt)
    blocks = kept_block_paths(model, spec)
    rows = []
    for name in adapted.modules:
        layer = model.get_submodule(name)
        block = next(i for i, paths in enumerate(blocks, 1) if any(name.startswith(p + ".") for p in paths))
        rows.append({"module": name, "block": block, "layer": layer_shape(layer.get_base_layer()),
                     "lora_params": sum(p.numel() for n, p in layer.named_parameters() if n.startswith("lora_"))})
    return {"adapt": str(parse_adapt(adapt)), "trainable_params": adapted.trainable, "total_params": adapted.total,
            "adapted_modules": rows, "skipped_modules": adapted.skipped}


def layer_shape(m) -> str:
    """``Linear(64, 192)``, ``Conv2d(64, 128, 3x3, stride 2)``: a layer's type and shape, in short."""
    if not hasattr(m, "kernel_size"):
        return f"{type(m).__name__}({m.in_features}, {m.out_features})"
    stride = f", stride {m.stride[0]}" if max(m.stride) > 1 else ""
    return f"{type(m).__name__}({m.in_channels}, {m.out_channels}, {'x'.join(map(str, m.kernel_size))}{stride})"


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
