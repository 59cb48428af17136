"""Build an architecture, load its weights, cut its final blocks, attach a new head.

The registry (:mod:`chexcut.models.registry`) says how each family is cut: a *table* family's stem, blocks
and head are moved (with their weights) into a :class:`ChexcutNet`; a *timm* family is cut by timm's own
``prune_intermediate_layers`` and given its new head by timm's ``reset_classifier`` with the model file's
pooling (a ViT's class token or the mean of its patch tokens).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chexcut.choices import Resize, check
from chexcut.errors import ChexcutError
from chexcut.fileio import sha256_file
from chexcut.labels import CHEXPERT_LABELS
from chexcut.models import sources
from chexcut.models.libraries import library_of
from chexcut.models.registry import Arch, check_size_multiple, default_image_size, get_arch, resolve_drop
from chexcut.models.sources import IMAGENET_MEAN, IMAGENET_STD
from chexcut.models.spec import META_KEY, ModelSpec, Preprocess, read_spec
from chexcut.models.tensors import load_state_dict_strict, load_with_metadata, normalise_state_dict, read_state_dict  # noqa: F401
from chexcut.models.weights import ensure_available, offline_advice
from chexcut.version import __version__


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


class ChexcutNet(nn.Module):
    """stem -> blocks -> neck -> global average pool -> Linear: a truncated model.

    Takes a normalised float batch (N, C, H, W); returns logits (N, n_labels).
    """

    def __init__(self, stem: nn.Module, blocks: nn.Module, neck: nn.Module, features: int, n_labels: int):
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.neck = neck
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(features, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.neck(self.blocks(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


def build_architecture(arch: Arch | str, image_size: int | None = None) -> nn.Module:
    """The library's full ImageNet architecture (1000 classes), randomly initialised; a family built for its
    input size (``Family.sized``: ViT, Swin) is built for ``image_size`` (default: chexcut's 320, rounded to a size
    the family takes)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    if arch.family.sized and image_size is None:
        image_size = default_image_size(arch)
    return library_of(arch).build(arch, image_size)


def at_input_size(model: nn.Module, image_size: int) -> nn.Module:
    """A chexcut model (carrying its spec) as it would be built for ``image_size``: a family built for its size
    (ViT, Swin) is rebuilt at that size and its weights loaded through timm's checkpoint filter (position
    embeddings and Swin relative-position tables resampled, as ``timm.create_model(img_size=...)`` loads
    pretrained weights); any other model is returned as it is, since it takes any size."""
    spec: ModelSpec = model.chexcut_spec
    arch = get_arch(spec.arch)
    if not arch.family.sized or int(image_size) == spec.preprocess.image_size:
        return model
    from dataclasses import replace

    fresh = rebuild(replace(spec, preprocess=spec.preprocess.with_size(int(image_size))))
    # the position embeddings' size changed with the grid: the spec counts the parameters of the model it describes
    resized = replace(fresh.chexcut_spec, params=sum(p.numel() for p in fresh.parameters()))
    own = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    load_fitted(fresh, own, arch, f"{spec.arch} resampled from {spec.preprocess.image_size} to {image_size} px")
    fresh.chexcut_spec = resized
    return fresh.train(model.training)


# ----------------------------------------------------------------------------- weights

def load_fitted(model: nn.Module, state: dict, arch: Arch, origin: str) -> None:
    """``state`` made to fit ``model`` by its library's rules (a ViT's position embeddings and a Swin's
    relative-position tables resampled to the model's input size), then loaded strictly (one line naming what
    differs)."""
    load_state_dict_strict(model, library_of(arch).adapt_state(arch, normalise_state_dict(state, arch), model),
                           arch, origin)


def load_imagenet(model: nn.Module, arch: Arch) -> dict:
    """Load the library's ImageNet weights through its own cache; fail loudly, never fall back."""
    meta = library_of(arch).weights_meta(arch)
    ensure_available(arch)
    try:
        state = library_of(arch).state_dict(arch)
    except ChexcutError:
        raise
    except Exception as e:  # no network, a corrupt cache, a proxy: all end here
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        cached = library_of(arch).cache_path(arch)
        if cached.is_file():  # there, but unreadable: a damaged cache entry is named, never used
            raise ChexcutError(
                f"the cached ImageNet weights for {arch.name} at {cached} are damaged ({why}): delete that file and "
                f"run `chexcut weights fetch {arch.name}` (or --mirror DIR)") from None
        raise ChexcutError(
            f"ImageNet weights for {arch.name} are not cached and could not be downloaded ({why}): "
            f"{offline_advice(arch)}") from None
    load_fitted(model, state, arch, f"ImageNet weights {meta['id']} ({meta['file']})")
    return {"kind": "imagenet", "id": meta["id"], "url": meta["url"], "license": meta["license"]}


def load_weights(model: nn.Module, arch: Arch, weights: str | os.PathLike | None) -> dict:
    """Apply ``weights`` ("imagenet" | "none" | a pretraining source ``NAME[:PATH]`` | a path) to the full
    architecture; return its origin."""
    if weights is None or str(weights) == "none":
        return {"kind": "none"}
    if str(weights) == "imagenet":
        return load_imagenet(model, arch)
    named = sources.parse(weights)
    if named is not None:
        return load_source(model, arch, *named)
    published = published_model_file(weights)
    if published is not None:
        return load_published(model, arch, published)
    path = Path(weights)
    if not path.exists():
        raise ChexcutError(f"--weights must be 'imagenet', 'none' or an existing file; {weights!s} does not exist")
    load_fitted(model, read_state_dict(path), arch, str(path))
    return {"kind": "file", "path": str(path), "sha256": sha256_file(path)}


def with_own_head(model: nn.Module, arch: Arch, state: dict) -> dict:
    """``state`` with the full model's own classifier in place of any it holds: the cut replaces the classifier, so
    it keeps its initial values (a published backbone's, or another task's, never has to fit)."""
    head = model.get_classifier() if arch.family.pruning == "timm" else get_module(model, arch.family.head)
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name is None:
        return state

    def in_head(key: str) -> bool:
        return key.startswith(name + ".")

    own = {k: v for k, v in model.state_dict().items() if in_head(k)}
    return {**{k: v for k, v in state.items() if not in_head(k)}, **own}


def published_model_file(weights) -> Path | None:
    """``--weights`` naming a chexcut model rather than a state dict: a published model folder, an
    ``hf-hub:ORG/NAME`` id (read offline), a run directory or a chexcut model file; None otherwise."""
    from chexcut.models.source import HUB_PREFIX, ModelSource

    text, path = str(weights), Path(weights)
    if text.startswith(HUB_PREFIX) or path.is_dir():
        return ModelSource.parse(text).require_file("--weights")
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return path if META_KEY in (f.metadata() or {}) else None
        except Exception:
            return None  # not a safetensors file: read_state_dict says so
    return None


def load_published(model: nn.Module, arch: Arch, path: Path) -> dict:
    """A chexcut model of the same architecture, uncut, as the starting weights (its classifier left out: the cut
    gives the model its own head); its preprocessing and licence come along."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    if spec.arch != arch.name:
        raise ChexcutError(f"--weights {path} is a {spec.arch} model, not {arch.name}")
    if spec.drop != 0:
        raise ChexcutError(f"--weights {path} keeps {spec.keep} of {spec.num_blocks} blocks: its final blocks are "
                           f"gone, so it cannot start another cut; use an uncut (drop 0) model")
    load_fitted(model, with_own_head(model, arch, load_file(str(path))), arch, f"the chexcut model {path}")
    pre = spec.preprocess
    return {"kind": "file", "path": str(path), "sha256": sha256_file(path), "model": spec.weights_name,
            "license": spec.weights.get("license"), "mean": list(pre.mean), "std": list(pre.std)}


def load_source(model: nn.Module, arch: Arch, source: sources.Source, path: Path | None) -> dict:
    """Load a declared pretraining source (its staged file, or ``path``) by its layout; its origin records the
    source, the file and its hash, its licence and the preprocessing it was trained with."""
    source.check_arch(arch.name)
    described = {"kind": "source", "name": source.name, "layout": source.layout, "license": source.license,
                 "in_chans": source.in_chans, "image_size": source.image_size}
    if source.layout == "timm" and path is None:  # the library's own weights under this name
        origin = load_imagenet(model, arch)
        return {**origin, **described, "mean": list(source.mean), "std": list(source.std)}
    where = sources.locate(source, path)
    state, pre = sources.read_source(source, where)
    # a source publishes its backbone (its own classifier is left out when it is read)
    load_fitted(model, with_own_head(model, arch, state), arch, f"the {source.name} weights {where}")
    return {**described, "license": sources.licence_of(source, pre), "path": str(where),
            "sha256": sha256_file(sources.weights_file(where)), "mean": list(pre["mean"]), "std": list(pre["std"])}


# ----------------------------------------------------------------------------- cutting

def neck_modules(model: nn.Module, arch: Arch, kept: int) -> list[nn.Module]:
    neck = arch.family.neck
    return [get_module(model, p) for p in neck.paths(kept)] + ([nn.ReLU(inplace=True)] if neck.relu else [])


def cut(model: nn.Module, arch: Arch, drop: int, n_labels: int, pool: str = "avg") -> nn.Module:
    """Cut a full (weighted) architecture to ``drop`` final blocks fewer, with an ``n_labels`` head pooling by
    ``pool`` (one of the family's ``pools``)."""
    fam = arch.family
    if fam.pruning == "timm":  # timm's own pruning at the block index, and its own new classifier
        model.prune_intermediate_layers([fam.num_blocks - drop - 1], prune_norm=False, prune_head=False)
        model.reset_classifier(n_labels, pool)
        return model
    if drop == 0:
        for path in fam.discard:
            set_module(model, path, None)
        for attr, value in fam.discard_attrs:
            setattr(model, attr, value)
        old = get_module(model, fam.head)
        set_module(model, fam.head, nn.Linear(old.in_features, n_labels))
        return model
    kept = fam.num_blocks - drop
    stem = nn.Sequential(*[get_module(model, p) for p in fam.stem])
    blocks = nn.Sequential(
        *[nn.Sequential(*[get_module(model, p) for p in paths]) for paths in fam.blocks[:kept]]
    )
    neck = neck_modules(model, arch, kept)
    # Channel count of the last kept block, measured by a shape probe on the meta device.
    first_conv = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
    with torch.device("meta"):  # as many channels as the stem takes (one for a grey-image source)
        probe = torch.empty(1, first_conv.in_channels, 299, 299)
    with torch.no_grad():
        channels = _probe_channels(nn.Sequential(stem, blocks), probe)
    return ChexcutNet(stem, blocks, nn.Sequential(*neck), channels, n_labels)


def _probe_channels(module: nn.Module, probe: torch.Tensor) -> int:
    meta = _meta_copy(module)
    return int(meta(probe).shape[1])


def _meta_copy(module: nn.Module) -> nn.Module:
    import copy

    # deepcopy onto meta without copying real storage: swap parameters for meta tensors.
    memo = {}
    for t in list(module.parameters()) + list(module.buffers()):
        memo[id(t)] = t.detach().to("meta")
    clone = copy.deepcopy(module, memo)
    return clone


def adapt_in_chans(model: nn.Module, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    """Make the first conv take one grayscale channel.

    A grey X-ray replicated to RGB and normalised per channel feeds the conv
    ``sum_c W_c (g - m_c) / s_c``; the single-channel conv gets ``W' = s' * sum_c W_c / s_c``
    with ``s'`` the mean of the stds and ``m'`` the mean of the means, which preserves the
    pretrained filters' response up to a constant per output channel.
    """
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels != 3:
        raise ChexcutError("--in-chans 1 needs a model whose first convolution takes 3 channels")
    s1 = sum(std) / 3
    m1 = sum(mean) / 3
    scale = torch.tensor([s1 / s for s in std], dtype=conv.weight.dtype).view(1, 3, 1, 1)
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_((conv.weight * scale).sum(1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    for name, m in model.named_modules():
        if m is conv:
            set_module(model, name, new)
            break
    return (m1,), (s1,)


def input_channels(weights, in_chans: int | None) -> tuple[int, int]:
    """(the model's input channels, the weights' own): ``in_chans`` given, else the pretraining source's (a source
    trained on grey images takes one channel), else 3; one line when they contradict."""
    named = None if weights is None else sources.parse(weights)
    source_chans = named[0].in_chans if named else 3
    if in_chans is None:
        in_chans = source_chans
    elif named and in_chans != source_chans:
        raise ChexcutError(f"--weights {named[0].name} takes {source_chans} input channel"
                           f"{'s' if source_chans > 1 else ''} (as it was trained); --in-chans {in_chans} contradicts it")
    if in_chans not in (1, 3):
        raise ChexcutError(f"in_chans (--in-chans) must be 1 or 3, not {in_chans}")
    return in_chans, source_chans


def truncate(
    arch: str,
    drop: int | None = None,
    keep: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    labels: tuple[str, ...] | list[str] | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    seed: int | None = 0,
    resize: str = "squash",
    pool: str | None = None,
):
    """Build ``arch`` with ``weights``, cut ``drop`` final blocks, attach a ``len(labels)``-way head
    (``labels``: default the 14 CheXpert observations) that pools by ``pool`` (default: the family's first,
    ``token`` for a ViT, ``avg`` for maps).

    Random initialisation (``weights="none"`` and the new head) is seeded by ``seed``
    (``None``: the global RNG). ``image_size``: default chexcut's 320, rounded to a size the family takes.
    Returns the ``nn.Module`` in eval mode. Its ``chexcut_spec`` attribute is the
    :class:`~chexcut.models.spec.ModelSpec` (with the preprocessing: ``image_size``, ``resize``, the weights'
    mean/std, ``in_chans``) that :func:`chexcut.save_model` records so :func:`chexcut.load_model` can rebuild it.
    """
    a = get_arch(arch)
    d = resolve_drop(a, drop, keep)
    labels = tuple(CHEXPERT_LABELS if labels is None else labels)
    if not labels:
        raise ChexcutError("the head needs at least one label; the label list is empty")
    if len(set(labels)) != len(labels):
        raise ChexcutError(f"the head labels have duplicate names: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    in_chans, source_chans = input_channels(weights, in_chans)
    image_size = int(image_size or default_image_size(a))
    check_size_multiple(a, image_size)
    pool = pool or a.family.pools[0]
    if pool not in a.family.pools:
        raise ChexcutError(f"--pool {pool} does not apply to {a.name}: it pools by {' or '.join(a.family.pools)}")
    with torch.random.fork_rng(devices=[]):  # seeded init (random weights, the new head) without side effects
        if seed is not None:
            torch.manual_seed(seed)
        full = build_architecture(a, image_size)
        if source_chans == 1:  # the source's weights are one-channel already: the first conv takes one first
            adapt_in_chans(full, IMAGENET_MEAN, IMAGENET_STD)
        origin = load_weights(full, a, weights)
        model = cut(full, a, d, len(labels), pool)
    float32_head(head_of(model, a, d))
    meta = library_of(a).weights_meta(a)  # the weights' own normalisation (timm's pretrained_cfg), also for none
    mean, std = tuple(origin.get("mean") or meta["mean"]), tuple(origin.get("std") or meta["std"])
    if in_chans == 1 and source_chans == 3:
        mean, std = adapt_in_chans(model, mean, std)
    model.eval()
    n = a.family.num_blocks
    model.chexcut_spec = ModelSpec(
        arch=a.name, source=a.source, drop=d, keep=n - d, num_blocks=n,
        kept_blocks=tuple(a.family.block_name(i) for i in range(1, n - d + 1)),
        head={"type": "linear", "in_features": int(head_of(model, a, d).in_features), "out_features": len(labels)},
        labels=labels, preprocess=Preprocess(mean=tuple(mean), std=tuple(std), image_size=int(image_size),
                                             resize=check(Resize, resize, "--resize"), in_chans=in_chans),
        weights=origin, params=sum(p.numel() for p in model.parameters()), seed=seed, chexcut_version=__version__,
        pool=pool)
    return model


def _float32_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.float()
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        with torch.autocast(device_type=device, enabled=False):
            return F.linear(x.float(), self.weight.float(), bias)
    return F.linear(x.float(), self.weight.float(), bias)


def float32_head(head: nn.Linear) -> None:
    """Make ``head`` compute in float32 even inside a bf16/fp16 autocast region.

    Under autocast the classifier's output would be rounded to bf16 (8 significant bits): distinct
    images would get equal scores, and AUROC would count them as ties. Only the forward changes
    (an instance attribute); parameters, state-dict keys and model files stay the same."""
    import types

    head.forward = types.MethodType(_float32_forward, head)


def head_of(model: nn.Module, arch: Arch, drop: int) -> nn.Linear:
    """The model's 14-way (``n_labels``-way) Linear head."""
    if arch.family.pruning == "timm":
        return model.get_classifier()
    return model.head if drop else get_module(model, arch.family.head)


def rebuild(spec: ModelSpec) -> nn.Module:
    """An untrained module with the structure ``spec`` describes (weights come from the file), carrying ``spec``."""
    model = truncate(spec.arch, drop=spec.drop, weights="none", labels=spec.labels, in_chans=spec.preprocess.in_chans,
                     image_size=spec.preprocess.image_size, resize=spec.preprocess.resize, pool=spec.pool)
    model.chexcut_spec = spec
    return model
