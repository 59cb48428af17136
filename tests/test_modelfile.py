"""Model files: round trips for every architecture and drop; foreign and hostile files refused."""

import pytest
import torch

import chexcut
from chexcut.errors import ChexcutError
from chexcut.models.anatomy import anatomy
from chexcut.models.modelfile import read_spec
from chexcut.models.registry import REGISTRY, default_image_size


def _cases():
    """Every architecture at drop 0 and its deepest drop; every drop for the first architecture of each family
    (the block table is the family's, so one member per family covers every cut point's code path)."""
    seen, cases = set(), []
    for name in REGISTRY:  # declaration order: the smallest member of each family comes first
        family = REGISTRY[name].family
        n = family.num_blocks
        # a timm family's other members are cut by the same call: their deepest cut (the cheapest) suffices
        drops = range(n) if id(family) not in seen else (n - 1,) if family.pruning == "timm" else (0, n - 1)
        seen.add(id(family))
        cases += [(name, d) for d in drops]
    return cases


@pytest.mark.parametrize("name,drop", _cases())
def test_round_trip(name, drop, tmp_path):
    size = 75 if name.startswith("inception") else default_image_size(REGISTRY[name], 64)
    sized = REGISTRY[name].family.sized  # built for its input size: counted at that size
    t = anatomy(name, size if sized else 320).truncations[drop]
    torch.manual_seed(drop)
    model = chexcut.truncate(name, drop=drop, weights="none", image_size=size if sized else None)
    path = chexcut.save_model(model, tmp_path / f"{name}-{drop}.safetensors")
    again = chexcut.load_model(path)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert a.shape == (2, 14)
    assert torch.equal(a, b)
    assert again.chexcut_spec.drop == drop and again.chexcut_spec.arch == name
    assert sum(p.numel() for p in again.parameters()) == t.params
    assert not again.training


def test_spec_contents(tmp_path):
    m = chexcut.truncate("resnet18", drop=1, weights="none", image_size=224)
    p = chexcut.save_model(m, tmp_path / "m.safetensors")
    spec = read_spec(p).to_json()
    for key in ("arch", "source", "drop", "keep", "kept_blocks", "head", "labels", "normalisation",
                "image_size", "weights", "chexcut_version"):
        assert key in spec
    assert spec["kept_blocks"] == ["layer1", "layer2", "layer3"] and spec["image_size"] == 224


def test_existing_file_needs_force(tmp_path):
    m = chexcut.truncate("resnet18", drop=3, weights="none")
    p = chexcut.save_model(m, tmp_path / "m.safetensors")
    with pytest.raises(ChexcutError, match="--force"):
        chexcut.save_model(m, p, force=False)


def test_pickle_model_file_is_refused_and_not_executed(tmp_path):
    from conftest import write_evil_pickle

    marker = tmp_path / "pwned"
    p = write_evil_pickle(tmp_path / "evil.safetensors", marker)
    with pytest.raises(ChexcutError, match="not a chexcut model file"):
        chexcut.load_model(p)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tmp_path):
    m = chexcut.truncate("resnet18", drop=3, weights="none")
    p = chexcut.save_model(m, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(ChexcutError):
        chexcut.load_model(cut)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ChexcutError, match="not a chexcut model"):
        chexcut.load_model(foreign)
    with pytest.raises(ChexcutError, match="not found"):
        chexcut.load_model(tmp_path / "nope.safetensors")
