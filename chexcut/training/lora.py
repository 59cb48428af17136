"""LoRA for ``finetune --adapt lora:R``, through peft (the optional ``chexcut[lora]`` extra).

Which layers: every plain ``nn.Linear`` and every ungrouped ``nn.Conv2d`` inside the kept blocks (a transformer's
attention and MLP projections, a Swin stage's patch merging, a ConvNeXt stage's MLP and downsampling convolution, a
CNN's convolutions). peft cannot merge LoRA into a grouped (depthwise) convolution, so those are left frozen and listed
as skipped; so is a subclass of either (timm's ``Conv2dSame`` pads in its forward, which LoRA's own convolution would
not). Each adapted layer gets ``W x + (alpha / r) B A x`` with alpha = r (a scale of 1), A random, B zero: the model
starts as the pretrained one. A Linear's A is ``r x in`` and B ``out x r``; a Conv2d's A is a ``k x k`` convolution to
r channels (``r x in x k x k``) and B a 1 x 1 convolution back (``out x r``).

The training session keeps the unmerged layers (its checkpoint, ``last.ckpt``, holds LoRA's A and B so ``--resume``
continues exactly); a saved model file holds :func:`merged`'s weights: the architecture's own modules with
``W + B A`` folded in, the state dict a model without LoRA has, so every command reads it as any other.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass, field

from torch import nn

from chexcut.errors import ChexcutError

INSTALL_HINT = "pip install 'chexcut[lora]'"


@dataclass(frozen=True)
class LoraPlan:
    """The layers of the kept blocks LoRA adapts (module paths, in the model's order) and those it leaves frozen."""

    modules: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # module path -> why it is not adapted


def check_peft(adapt: str) -> None:
    """One line when peft is not installed (found without importing it: ``--help`` and validation stay fast)."""
    if importlib.util.find_spec("peft") is None:
        raise ChexcutError(f"--adapt {adapt} needs peft: {INSTALL_HINT}")


def import_peft(adapt: str):
    try:
        import peft
    except ImportError:
        raise ChexcutError(f"--adapt {adapt} needs peft: {INSTALL_HINT}") from None
    return peft


def lora_plan(model: nn.Module, block_paths: list[list[str]]) -> LoraPlan:
    """What LoRA adapts among the modules under ``block_paths`` (each kept block's module paths)."""
    modules, skipped = [], {}
    for paths in block_paths:
        for path in paths:
            for name, m in model.get_submodule(path).named_modules(prefix=path):
                if type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1):
                    modules.append(name)
                elif type(m) is nn.Conv2d:
                    skipped[name] = f"grouped convolution (groups={m.groups}): peft cannot merge LoRA into it"
                elif isinstance(m, (nn.Linear, nn.Conv2d)):
                    skipped[name] = f"a {type(m).__name__}, not a plain Linear or Conv2d"
    return LoraPlan(tuple(modules), skipped)


def inject_lora(model: nn.Module, plan: LoraPlan, rank: int, adapt: str) -> set[int]:
    """Add LoRA of rank ``rank`` (alpha = rank) to ``plan.modules`` of ``model``, in place; returns the ids of the
    LoRA parameters (peft leaves only them trainable)."""
    if not plan.modules:
        raise ChexcutError(f"--adapt {adapt}: the kept blocks hold no layer LoRA can adapt "
                           f"({len(plan.skipped)} skipped: {next(iter(plan.skipped.values()), 'none')})")
    peft = import_peft(adapt)
    exact = "^(?:" + "|".join(re.escape(m) for m in plan.modules) + ")$"  # these paths, not every similar name
    config = peft.LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=exact)
    peft.inject_adapter_in_model(config, model)
    return {id(p) for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}


def lora_layers(model: nn.Module) -> list[str]:
    """The module paths of ``model``'s LoRA layers (none when peft never adapted it)."""
    if getattr(model, "peft_config", None) is None:  # what peft's injection sets on the model
        return []
    from peft.tuners.lora import LoraLayer

    return [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def merged(model: nn.Module) -> nn.Module:
    """``model`` with its LoRA folded into the weights (peft's own ``merge``: ``W + (alpha / r) B A``), as a copy
    whose LoRA layers are replaced by their base layers: the architecture's plain modules and state dict. ``model``
    itself is untouched (training goes on with the unmerged layers); a model without LoRA is returned as it is."""
    names = lora_layers(model)
    if not names:
        return model
    out = copy.deepcopy(model)
    for name in names:
        layer = out.get_submodule(name)
        layer.merge(safe_merge=True)  # safe: refuses a merge that is not finite
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, layer.get_base_layer())
    del out.peft_config
    return out
