"""Parameter and MAC counts per truncation level, against the worked figures and real modules."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from chexcut.models.anatomy import anatomy
from chexcut.models.registry import REGISTRY, default_image_size
from chexcut.models.surgery import truncate


@pytest.mark.parametrize("name,drop,params", [
    ("densenet121", 1, 4_283_790),
    ("resnet50", 1, 8_557_646),
    ("resnet50", 0, 23_536_718),
])
def test_worked_figures(name, drop, params):
    assert anatomy(name).truncations[drop].params == params
    assert sum(p.numel() for p in truncate(name, drop=drop, weights="none").parameters()) == params


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_truncation_counts_match_the_built_module(name):
    """params and MACs that inspect reports == those of the module truncate builds, every drop;
    forward gives (2, 14) at 320 (322 for a /14 ViT) and, for a family that takes any size, at 224 too
    (on the meta device: real shapes, no compute)."""
    arch = REGISTRY[name]
    size = default_image_size(arch)
    anat = anatomy(name, size)
    for t in anat.truncations:
        with torch.device("meta"):  # built where it is checked: shapes and counts, no initialisation compute
            meta = truncate(name, drop=t.drop, weights="none", image_size=size)
        assert sum(p.numel() for p in meta.parameters()) == t.params, t.drop
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            y = meta(torch.empty(2, 3, size, size, device="meta"))
        assert y.shape == (2, 14)
        assert fc.get_total_flops() // 2 == 2 * t.macs
        if not arch.family.sized:
            with torch.no_grad():
                assert meta(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 14)


def test_json_schema_fields():
    a = anatomy("densenet121").to_json()
    assert a["arch"] == "densenet121" and a["source"] == "torchvision" and a["image_size"] == 320
    assert a["num_blocks"] == 4 and len(a["blocks"]) == 4 and len(a["truncations"]) == 4
    for b in a["blocks"]:
        assert {"index", "name", "params", "out_channels", "reduction"} <= set(b)
    for t in a["truncations"]:
        assert {"drop", "params", "macs", "out_channels"} <= set(t)
    assert a["truncations"][0]["out_channels"] == 1024


def test_anatomy_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    import json

    from chexcut.models.anatomy_cache import cached_anatomy

    monkeypatch.setenv("CHEXCUT_CACHE", str(tmp_path))
    first = cached_anatomy("resnet18", 96, 14)
    files = list((tmp_path / "anatomy").glob("resnet18-96-14-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == first
    files[0].write_text(json.dumps({**first, "marker": 1}))
    assert cached_anatomy("resnet18", 96, 14)["marker"] == 1  # served from the cache
    files[0].write_text("{corrupt")
    assert cached_anatomy("resnet18", 96, 14) == first  # a corrupt entry is recomputed
    assert cached_anatomy("resnet18", 96, 2)["truncations"][0]["params"] != first["truncations"][0]["params"]


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_shipped_anatomy_equals_the_installed_libraries_models(arch):
    """The package data `inspect` answers from is what the models say today: every entry recomputed (one
    architecture per test, so that the work spreads over the workers)."""
    from chexcut.models.anatomy_cache import SHIPPED_SIZES, compute_shipped, shipped

    fresh, store = compute_shipped([arch]), shipped()
    stale = "stale anatomy_shipped.json: run `python -m chexcut.models.anatomy_cache`"
    assert store["full_params"][arch] == fresh["full_params"][arch] > 0, stale
    assert store["weights"][arch] == fresh["weights"][arch], stale
    mine = {k: v for k, v in store["anatomy"].items() if k.rsplit("-", 2)[0] == arch}
    assert mine == fresh["anatomy"], stale
    for size in (224, default_image_size(REGISTRY[arch])):
        assert f"{arch}-{size}-14" in fresh["anatomy"]
    assert 64 in SHIPPED_SIZES


def test_shipped_anatomy_holds_exactly_the_registry():
    from chexcut.models.anatomy_cache import shipped

    store = shipped()
    assert set(store["full_params"]) == set(store["weights"]) == set(REGISTRY)
    assert {k.rsplit("-", 2)[0] for k in store["anatomy"]} == set(REGISTRY)


def test_inspect_and_list_import_no_torch_for_shipped_sizes(tmp_path):
    """`inspect ARCH` at a shipped size answers without torch (the cold-start cost), the same figures."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys, json; from typer.testing import CliRunner; from chexcut.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); assert r.exit_code == 0, r.output; "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'out': r.stdout}))")
    env = {**os.environ, "CHEXCUT_CACHE": str(tmp_path)}
    for args in (["inspect", "resnet50", "--json", "-"], ["inspect", "mobilenet_v2", "--image-size", "224", "--json", "-"],
                 ["list", "--json", "-"]):
        res = json.loads(subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                                        text=True, check=True).stdout)
        assert res["torch"] is False, args
    a = json.loads(subprocess.run([sys.executable, "-c", code, "inspect", "resnet50", "--json", "-"], env=env,
                                  capture_output=True, text=True, check=True).stdout)["out"]
    assert json.loads(a) == anatomy("resnet50").to_json()
    assert not (tmp_path / "anatomy").exists()  # nothing computed, nothing cached
