"""The registry and the block tables, checked against a shape probe for every architecture."""

import pytest
import torch

from chexcut.errors import ChexcutError
from chexcut.models.anatomy import anatomy, check_image_size, min_image_size
from chexcut.models.libraries import weights_meta
from chexcut.models.registry import PAPER_ARCHS, REGISTRY, get_arch

EXPECTED_BLOCKS = {
    "densenet121": 4, "densenet169": 4, "densenet201": 4,
    "resnet18": 4, "resnet34": 4, "resnet50": 4, "resnet101": 4,
    "inception_v3": 11, "inception_v4": 16, "mnasnet1_0": 6, "mobilenet_v2": 7,
    "mobilenet_v3_large": 6, "mobilenet_v3_small": 5,
    "efficientnet_b0": 7, "efficientnet_b1": 7, "efficientnet_b2": 7, "efficientnet_b3": 7,
    "vit_tiny_patch16_224": 12, "vit_small_patch16_224": 12, "vit_base_patch16_224": 12, "deit_small_patch16_224": 12,
    "vit_small_patch14_dinov2": 12, "vit_base_patch14_dinov2": 12, "vit_small_patch14_reg4_dinov2": 12,
    "vit_base_patch14_reg4_dinov2": 12, "swin_tiny_patch4_window7_224": 4, "convnext_tiny": 4, "convnext_small": 4,
    "convnext_base": 4, "test_vit": 6, "test_convnext": 4,
}
TABLE_ARCHS = sorted(n for n, a in REGISTRY.items() if a.family.pruning == "table")


def test_sixteen_paper_architectures():
    assert len(PAPER_ARCHS) == 16
    assert set(REGISTRY) == set(EXPECTED_BLOCKS)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_block_count_and_metadata(name):
    a = get_arch(name)
    assert a.family.num_blocks == EXPECTED_BLOCKS[name]
    meta = weights_meta(a)
    if "dinov2" in name:  # self-supervised: no ImageNet classifier, no top-1 in timm's results table
        assert meta["top1"] is None
    else:
        assert (30 if a.test else 60) < meta["top1"] < 90
    assert meta["url"].startswith("https://")
    assert meta["license"] and len(meta["mean"]) == len(meta["std"]) == 3


def _probe_out_channels(name, size=224):
    """Run a real (tiny-batch, CPU) forward through stem + each block and read the channels."""
    from chexcut.models.surgery import build_architecture

    a = get_arch(name)
    model = build_architecture(a).eval()
    x = torch.zeros(1, 3, size, size)
    shapes = []
    with torch.no_grad():
        for p in a.family.stem:
            x = model.get_submodule(p)(x)
        for paths in a.family.blocks:
            for p in paths:
                x = model.get_submodule(p)(x)
            shapes.append(tuple(x.shape))
    return shapes


@pytest.mark.parametrize("name", TABLE_ARCHS)
def test_block_table_matches_shape_probe(name):
    """The table's forward order is the model's: running stem + blocks in sequence works,
    and channels / reductions equal what anatomy() reports."""
    shapes = _probe_out_channels(name)
    anat = anatomy(name, 224)
    assert [b.out_channels for b in anat.blocks] == [s[1] for s in shapes]
    assert [b.spatial for b in anat.blocks] == [s[2:] for s in shapes]
    # resolution never grows, channels never shrink along the blocks
    assert all(a.reduction <= b.reduction for a, b in zip(anat.blocks, anat.blocks[1:]))


def test_mobilenet_v3_blocks_group_equal_output_channels():
    """The rule behind the v3 tables: a block = consecutive inverted residuals of equal out channels."""
    from chexcut.models.surgery import build_architecture

    for name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        a = get_arch(name)
        model = build_architecture(a)
        outs = [model.features[i].out_channels for i in range(1, len(model.features) - 1)]
        groups, cur = [], [1]
        for i in range(2, len(outs) + 1):
            if outs[i - 1] == outs[i - 2]:
                cur.append(i)
            else:
                groups.append(cur)
                cur = [i]
        groups.append(cur)
        assert [[int(p.split(".")[1]) for p in paths] for paths in a.family.blocks] == groups


def test_unknown_arch_names_close_matches():
    with pytest.raises(ChexcutError, match="resnet50"):
        get_arch("resnet5")


def test_min_image_size_inception():
    assert min_image_size("inception_v3") == 75
    check_image_size("inception_v3", 75)
    with pytest.raises(ChexcutError, match="minimum is 75"):
        check_image_size("inception_v3", 74)
