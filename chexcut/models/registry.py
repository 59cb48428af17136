"""The architecture registry: every family described once, as data: its blocks, what a block outputs (maps or
tokens), how a truncated model is cut and pooled, and the unit ``inspect`` counts in.

A *block* is the unit that ``--drop`` counts (a dense block, a transformer layer, a Swin or ConvNeXt stage).
Everything before block 1 is the *stem*. Families are cut one of two ways (``Family.pruning``):

- ``"table"`` (DenseNet, ResNet, Inception, MNASNet, MobileNet, EfficientNet: the CheXtransfer CNNs): for
  ``drop >= 1`` a chexcut model is ``stem -> blocks[:B - drop] -> neck -> global average pool -> Linear(C, L)``
  built from the declared module paths; for ``drop == 0`` the library's whole model with its final Linear
  replaced (Inception v3 without AuxLogits).
- ``"timm"`` (ViT, DeiT, DINOv2, Swin, ConvNeXt): timm's own ``prune_intermediate_layers`` at the block index,
  then timm's ``reset_classifier(L, pool)``: the final norm stays where its width still fits (a ViT's), goes
  where it does not (a truncated Swin's or ConvNeXt's), exactly as timm prunes.

What consumers need to know about a block's output (``output``: timm's ``NCHW``, ``NHWC`` or ``NLC`` tokens),
the pooling choices (``pools``), whether the model is built for its input size (``sized``: position
embeddings, Swin windows) and which sizes it takes (``size_multiple``: a ViT's patch) is declared here; the
torch-side description (:mod:`chexcut.models.backbone`) measures the rest (widths, grids, prefix tokens).

This module imports no torch: ``chexcut list`` and shell completion stay fast.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable

from chexcut.choices import DEFAULT_IMAGE_SIZE  # noqa: F401 (re-exported: where the families are)
from chexcut.errors import ChexcutError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def _seq(prefix: str, groups: list[list[int]]) -> tuple[tuple[str, ...], ...]:
    """``_seq("features", [[1], [2, 3]])`` -> ``(("features.1",), ("features.2", "features.3"))``."""
    return tuple(tuple(f"{prefix}.{i}" for i in g) for g in groups)


def densenet_legacy_keys(key: str) -> str:
    """torchvision's DenseNet checkpoints name ``denselayerN.norm.1.weight``; the modules say ``norm1``."""
    m = _DENSENET_LEGACY.match(key)
    return m.group(1) + m.group(2) if m else key


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class Neck:
    """Modules of the library's model kept after the last kept block of a truncated model.

    ``modules``: module paths, formatted with ``kept`` (the number of kept blocks), moved in with
    their pretrained weights; ``relu``: a ReLU follows them. DenseNet's is the BatchNorm that opens
    the transition after the last kept dense block (the full model ends in ``norm5`` + ReLU too).
    """

    modules: tuple[str, ...] = ()
    relu: bool = False

    def paths(self, kept: int) -> list[str]:
        return [m.format(kept=kept) for m in self.modules]


@dataclass(frozen=True)
class Family:
    """Everything chexcut knows about one architecture family: module paths, not guesses.

    stem:    module paths, in forward order, that come before block 1.
    blocks:  one tuple of module paths per block, in forward order.
    head:    path of the final ``nn.Linear`` that ``drop 0`` replaces.
    neck:    what a truncated model keeps after its last kept block (:class:`Neck`).
    discard: modules of the full model that a chexcut model drops (e.g. an auxiliary head);
             ``discard_attrs`` are attributes set with them (so the forward no longer uses them).
    key_filter: renames one state-dict key of old checkpoints to today's name (legacy layouts).
    unit:    what ``inspect`` calls a block ("block", "layer" for a transformer layer, "stage").
    output:  what a block outputs, in timm's vocabulary: ``NCHW`` maps, ``NHWC`` maps (Swin), ``NLC`` tokens
             (prefix tokens such as the class token first, then the patch grid row by row).
    pools:   how a truncated model may pool (the first is the default, recorded in the model file): ``avg``
             (maps: global average; tokens: mean of the patch tokens after the final norm) or ``token`` (the
             class token after the final norm).
    pruning: ``table`` (chexcut cuts by the module paths above) or ``timm`` (timm's prune_intermediate_layers).
    sized:   built for its input size (timm's ``img_size``): a ViT's position embeddings, a Swin's windows;
             timm resamples them when the weights were trained at another size.
    size_multiple: the input size must be a multiple of this (a ViT's patch: 14 for DINOv2).
    cam_module: where Grad-CAM reads a block, within it ("": its output). A ViT's is ``norm1``, the normalised
             tokens its attention reads: at a layer's output only the class token reaches a token-pooling head,
             so the patch tokens' gradients there are zero (pytorch-grad-cam's advice for ViTs, the same).
    """

    name: str
    stem: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]
    head: str
    neck: Neck = Neck()
    discard: tuple[str, ...] = ()
    discard_attrs: tuple[tuple[str, object], ...] = ()
    key_filter: Callable[[str], str] | None = None
    unit: str = "block"
    output: str = "NCHW"
    pools: tuple[str, ...] = ("avg",)
    pruning: str = "table"
    sized: bool = False
    size_multiple: int = 1
    cam_module: str = ""

    @property
    def tokens(self) -> bool:
        """Whether a block outputs tokens (a transformer's sequence) rather than maps."""
        return self.output == "NLC"

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_name(self, index: int) -> str:
        """A readable name for block ``index`` (1-based), e.g. ``transition1+denseblock2``."""
        return "+".join(p.split(".")[-1] if not p.split(".")[-1].isdigit() else p for p in self.blocks[index - 1])


RESNET = Family(
    name="resnet",
    stem=("conv1", "bn1", "relu", "maxpool"),
    blocks=(("layer1",), ("layer2",), ("layer3",), ("layer4",)),
    head="fc",
)

DENSENET = Family(
    name="densenet",
    stem=("features.conv0", "features.norm0", "features.relu0", "features.pool0"),
    blocks=(
        ("features.denseblock1",),
        ("features.transition1", "features.denseblock2"),
        ("features.transition2", "features.denseblock3"),
        ("features.transition3", "features.denseblock4"),
    ),
    head="classifier",
    neck=Neck(modules=("features.transition{kept}.norm",), relu=True),
    key_filter=densenet_legacy_keys,
)

EFFICIENTNET = Family(
    name="efficientnet",
    stem=("features.0",),
    blocks=_seq("features", [[1], [2], [3], [4], [5], [6], [7]]),
    head="classifier.1",
)

MOBILENET_V2 = Family(
    name="mobilenet_v2",
    stem=("features.0",),
    blocks=_seq("features", [[1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17]]),
    head="classifier.1",
)

# MobileNet v3: consecutive inverted-residual blocks with equal output channels form one block.
MOBILENET_V3_LARGE = Family(
    name="mobilenet_v3",
    stem=("features.0",),
    blocks=_seq("features", [[1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 14, 15]]),
    head="classifier.3",
)

MOBILENET_V3_SMALL = Family(
    name="mobilenet_v3",
    stem=("features.0",),
    blocks=_seq("features", [[1], [2, 3], [4, 5, 6], [7, 8], [9, 10, 11]]),
    head="classifier.3",
)

MNASNET = Family(
    name="mnasnet",
    stem=tuple(f"layers.{i}" for i in range(8)),
    blocks=_seq("layers", [[8], [9], [10], [11], [12], [13]]),
    head="classifier.1",
)

INCEPTION_V3 = Family(
    name="inception",
    stem=("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"),
    blocks=tuple(
        (f"Mixed_{n}",) for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
    ),
    head="fc",
    # the auxiliary classifier exists for training the ImageNet model; its weights load, then it goes
    discard=("AuxLogits",),
    discard_attrs=(("aux_logits", False),),
)

INCEPTION_V4 = Family(
    name="inception",
    stem=tuple(f"features.{i}" for i in range(6)),
    blocks=_seq("features", [[i] for i in range(6, 22)]),
    head="last_linear",
)


def _timm_family(name: str, prefix: str, count: int, unit: str, output: str, pools=("avg",), sized=False,
                 size_multiple=1, head="head", cam_module="") -> Family:
    """A family timm prunes: ``count`` blocks named ``prefix.0`` ... (timm's ``feature_info`` modules)."""
    return Family(name=name, stem=(), blocks=_seq(prefix, [[i] for i in range(count)]), head=head, unit=unit,
                  output=output, pools=pools, pruning="timm", sized=sized, size_multiple=size_multiple,
                  cam_module=cam_module)


def _vit(count: int, patch: int) -> Family:
    return _timm_family("vit", "blocks", count, "layer", "NLC", pools=("token", "avg"), sized=True,
                        size_multiple=patch, cam_module="norm1")


VIT_12, VIT_TEST, DINOV2_12 = _vit(12, 16), _vit(6, 16), _vit(12, 14)
SWIN = _timm_family("swin", "layers", 4, "stage", "NHWC", sized=True, size_multiple=32, head="head.fc")
CONVNEXT = _timm_family("convnext", "stages", 4, "stage", "NCHW", head="head.fc")


@dataclass(frozen=True)
class Arch:
    """One supported architecture.

    ``library`` builds it and loads its weights (:mod:`chexcut.models.libraries`). ``weights`` names the
    ImageNet weights: a torchvision ``Weights`` enum member (``"IMAGENET1K_V1"``, the weights of the
    CheXtransfer era) or a timm pretrained tag. torchvision's offline ``Weights.meta`` gives top-1;
    timm carries no accuracy in its pretrained config, so ``top1`` records the figure from timm's
    published ``results-imagenet.csv`` for that tag at its own input size (None: the weights have no ImageNet
    classifier, e.g. DINOv2's self-supervised ones). The weights' preprocessing and licence come from the
    library (timm's ``pretrained_cfg``); ``mean``/``std`` declare a torchvision model's, which torchvision's
    weights do not carry in a form chexcut can use. ``test``: one of timm's tiny test models (for checks).
    """

    name: str
    family: Family
    library: str  # the name of the model library (chexcut.models.libraries) that builds it
    weights: str
    paper: bool = True  # one of the 16 CheXtransfer architectures
    top1: float | None = None
    build_kwargs: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test: bool = False

    @property
    def source(self) -> str:
        return self.library


_ARCHS: tuple[Arch, ...] = (
    Arch("densenet121", DENSENET, "torchvision", "IMAGENET1K_V1"),
    Arch("densenet169", DENSENET, "torchvision", "IMAGENET1K_V1"),
    Arch("densenet201", DENSENET, "torchvision", "IMAGENET1K_V1"),
    Arch("resnet18", RESNET, "torchvision", "IMAGENET1K_V1"),
    Arch("resnet34", RESNET, "torchvision", "IMAGENET1K_V1"),
    Arch("resnet50", RESNET, "torchvision", "IMAGENET1K_V1"),
    Arch("resnet101", RESNET, "torchvision", "IMAGENET1K_V1"),
    # torchvision's inception_v3 weights expect inputs normalised with mean = std = 0.5 (its ``transform_input``
    # converts ImageNet-normalised inputs to that); chexcut normalises so directly, with transform_input=False.
    Arch("inception_v3", INCEPTION_V3, "torchvision", "IMAGENET1K_V1",
         build_kwargs={"aux_logits": True, "transform_input": False, "init_weights": True},
         mean=INCEPTION_MEAN, std=INCEPTION_STD),
    Arch("inception_v4", INCEPTION_V4, "timm", "tf_in1k", top1=80.168),
    Arch("mnasnet1_0", MNASNET, "torchvision", "IMAGENET1K_V1"),
    Arch("mobilenet_v2", MOBILENET_V2, "torchvision", "IMAGENET1K_V1"),
    Arch("mobilenet_v3_large", MOBILENET_V3_LARGE, "torchvision", "IMAGENET1K_V1"),
    Arch("mobilenet_v3_small", MOBILENET_V3_SMALL, "torchvision", "IMAGENET1K_V1", paper=False),
    Arch("efficientnet_b0", EFFICIENTNET, "torchvision", "IMAGENET1K_V1"),
    Arch("efficientnet_b1", EFFICIENTNET, "torchvision", "IMAGENET1K_V1"),
    Arch("efficientnet_b2", EFFICIENTNET, "torchvision", "IMAGENET1K_V1"),
    Arch("efficientnet_b3", EFFICIENTNET, "torchvision", "IMAGENET1K_V1"),
    # Since 2021: Vision Transformers, DINOv2, Swin, ConvNeXt (timm; top-1 from timm's results-imagenet.csv,
    # the tag's row at 224 px).
    Arch("vit_tiny_patch16_224", VIT_12, "timm", "augreg_in21k_ft_in1k", paper=False, top1=75.452),
    Arch("vit_small_patch16_224", VIT_12, "timm", "augreg_in21k_ft_in1k", paper=False, top1=81.402),
    Arch("vit_base_patch16_224", VIT_12, "timm", "augreg2_in21k_ft_in1k", paper=False, top1=85.108),
    Arch("deit_small_patch16_224", VIT_12, "timm", "fb_in1k", paper=False, top1=79.856),
    Arch("vit_small_patch14_dinov2", DINOV2_12, "timm", "lvd142m", paper=False),
    Arch("vit_base_patch14_dinov2", DINOV2_12, "timm", "lvd142m", paper=False),
    Arch("vit_small_patch14_reg4_dinov2", DINOV2_12, "timm", "lvd142m", paper=False),
    Arch("vit_base_patch14_reg4_dinov2", DINOV2_12, "timm", "lvd142m", paper=False),
    Arch("swin_tiny_patch4_window7_224", SWIN, "timm", "ms_in1k", paper=False, top1=81.388),
    Arch("convnext_tiny", CONVNEXT, "timm", "in12k_ft_in1k", paper=False, top1=84.192),
    Arch("convnext_small", CONVNEXT, "timm", "in12k_ft_in1k", paper=False, top1=85.164),
    Arch("convnext_base", CONVNEXT, "timm", "fb_in22k_ft_in1k", paper=False, top1=85.814),
    # timm's tiny test models (a few hundred thousand parameters): every command on a CPU in seconds
    Arch("test_vit", VIT_TEST, "timm", "r160_in1k", paper=False, top1=40.982, test=True),
    Arch("test_convnext", CONVNEXT, "timm", "r160_in1k", paper=False, top1=47.774, test=True),
)

REGISTRY: dict[str, Arch] = {a.name: a for a in _ARCHS}
PAPER_ARCHS: tuple[str, ...] = tuple(a.name for a in _ARCHS if a.paper)


def get_arch(name: str) -> Arch:
    """The registry entry for ``name``; an unknown name is a one-line error with the closest matches."""
    key = name.strip().lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ChexcutError(
        f"unknown architecture {name!r}.{hint} (`chexcut list` shows all {len(REGISTRY)})"
    )


def default_image_size(arch: Arch, size: int = DEFAULT_IMAGE_SIZE) -> int:
    """``size`` (chexcut's default, CheXpert's 320) rounded to a size ``arch`` takes (322 for a /14 patch)."""
    m = arch.family.size_multiple
    return max(m, int(round(size / m)) * m)


def check_size_multiple(arch: Arch, size: int) -> None:
    """One line when ``size`` is not a multiple of the family's patch (a ViT would silently crop the rest)."""
    m = arch.family.size_multiple
    if size % m:
        lo, hi = size // m * m, (size // m + 1) * m
        raise ChexcutError(f"--image-size {size} is not a multiple of {arch.name}'s {m} px "
                           f"{'patches' if arch.family.tokens else 'stride'}: use {lo or hi} or {hi}")


def resolve_drop(arch: Arch, drop: int | None = None, keep: int | None = None) -> int:
    """``drop`` from ``--drop`` or ``--keep`` (exactly one or neither), validated against the arch."""
    n = arch.family.num_blocks
    if drop is not None and keep is not None:
        raise ChexcutError("give drop (--drop) or keep (--keep), not both")
    if keep is not None:
        if not 1 <= keep <= n:
            raise ChexcutError(f"keep {keep} is out of range for {arch.name}: valid 1..{n}")
        return n - keep
    drop = 0 if drop is None else drop
    if not 0 <= drop <= n - 1:
        raise ChexcutError(f"drop {drop} is out of range for {arch.name}: valid 0..{n - 1} ({n} blocks)")
    return drop

