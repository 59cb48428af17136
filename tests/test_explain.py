"""`chexcut explain`: Grad-CAM (Captum) for every architecture, scored against where the phantom drew each
finding (pointing game) and checked against randomised weights (Adebayo et al. 2018)."""

import json

import pytest
import torch
from conftest import run_cli

import chexcut
from chexcut.models.registry import PAPER_ARCHS, get_arch

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def masked_phantom(tmp_path_factory):
    from conftest import TEST_SEED

    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("pm")
    make_phantom(d, n=500, image_size=64, seed=TEST_SEED, masks=True)
    return d


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_explain_every_architecture_at_drop_0_and_deepest(arch, masked_phantom, tmp_path):
    from chexcut.data.tables import load_split
    from chexcut.deploy import explain as ex

    size = 80 if arch.startswith("inception") else 48
    t = load_split(masked_phantom, "valid", chexcut.data.tables.DataOptions())
    for drop in (0, get_arch(arch).family.num_blocks - 1):
        model = chexcut.truncate(arch, drop=drop, weights="none", image_size=size)
        inputs = ex.read_images(t.files[:2], t.paths[:2], size, "squash", False)
        res = ex.explain(model, model.chexcut_spec, inputs, tmp_path / f"d{drop}", ["Cardiomegaly"])
        assert len(res["images"]) == 2 and all((tmp_path / f"d{drop}" / r["file"]).is_file() for r in res["images"])
        row = res["images"][0]
        assert 0 <= row["probability"] <= 1 and all(0 <= v < size for v in row["peak"])
        assert len(list((tmp_path / f"d{drop}").glob("*-sheet.png"))) == 2


def test_trained_maps_point_at_the_findings_and_fail_randomisation(masked_phantom, tmp_path):
    from conftest import TEST_SEED

    from chexcut.data.tables import DataOptions
    from chexcut.training.config import Run, TrainConfig
    from chexcut.training.loop import finetune

    cfg = TrainConfig.from_recipe("paper", image_size=64, epochs=6, lr=1e-3, batch_size=32, val_every=1000,
                                  workers=0, device="cpu", precise_bn=256, seed=TEST_SEED)
    finetune(Run(tmp_path / "run", masked_phantom, DataOptions(uncertain="ignore"), cfg,
                 {"arch": "resnet18", "drop": 1, "weights": "none"}))
    # the pointing game runs on every masked frontal image of the split (--limit bounds only the overlays): on the
    # training rows ~4x the positives of the validation split, so the verdict rests on a test with power, not on
    # a rate of 10 images (which differs from one CPU's kernels to another's)
    rc, out, err = run_cli("explain", tmp_path / "run", "--data", masked_phantom, "--split", "train", "--limit",
                           "8", "--check", "--labels", "Cardiomegaly,Pleural Effusion", "--out", tmp_path / "maps",
                           "--json", "-")
    assert rc == 0, err
    res = json.loads(out)
    from scipy.stats import binomtest

    assert res["pointing_game_images"] > 200 and len(res["files"]) == 2 * 8
    for name in ("Cardiomegaly", "Pleural Effusion"):
        p = res["pointing_game"][name]
        test = binomtest(p["hits"], p["n"], p["chance"], alternative="greater")
        print(name, p)
        assert p["p"] == pytest.approx(test.pvalue, rel=1e-12)
        assert p["n"] >= 25 and p["p"] < 1e-3 and p["verdict"] == "passed", p  # the peaks land on the findings
        assert p["ci_low"] < p["rate"] < p["ci_high"] and p["ci_low"] > p["chance"]
    r = res["randomisation"]
    print("randomisation", r)
    assert r["rank_correlation"] < 0.5 and len(r["cascade"]) == 4 and r["verdict"] == "passed"
    assert res["verdict"] == "passed"
    assert {"path", "label", "probability", "peak", "file"} <= set(res["files"][0])


def test_pointing_game_judges_with_wilson_interval_and_refuses_small_samples():
    import math

    from chexcut.deploy.explain import judge_pointing

    r = judge_pointing(30, 40, 0.2)
    z, n, ph = 1.959963984540054, 40, 30 / 40  # Wilson's interval by its formula
    centre, half = (ph + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert r["ci_low"] == pytest.approx(centre - half, abs=1e-9) and r["ci_high"] == pytest.approx(centre + half, abs=1e-9)
    assert r["verdict"] == "passed" and r["p"] < 1e-9
    assert judge_pointing(9, 40, 0.2)["verdict"] == "failed"  # 22% on a 20% chance: no better than chance
    small = judge_pointing(12, 12, 0.1)  # a perfect rate on 12 positives: cannot judge
    assert small["verdict"] == "not judged" and "12 positives" in small["reason"] and small["p"] < 1e-9
    assert judge_pointing(0, 0, None)["verdict"] == "not judged"


def test_check_on_few_positives_warns_and_is_not_passed(masked_phantom, tmp_path):
    model = tmp_path / "m.safetensors"
    chexcut.save_model(chexcut.truncate("resnet18", drop=2, weights="none", image_size=48), model)
    rc, out, err = run_cli("explain", model, "--data", masked_phantom, "--check", "--check-limit", "30", "--labels",
                           "Cardiomegaly", "--out", tmp_path / "o", "--json", tmp_path / "c.json")
    assert rc == 0, err
    res = json.loads((tmp_path / "c.json").read_text())
    p = res["pointing_game"]["Cardiomegaly"]
    assert res["pointing_game_images"] == 30 and p["n"] < 20 and p["verdict"] == "not judged"
    assert res["verdict"] in ("not judged", "failed") and "fewer than 20" in err and "Cardiomegaly" in err
    assert "95% CI" in out and "not judged" in out
    imgs = sorted((masked_phantom / "CheXpert-v1.0-small" / "valid").rglob("*frontal.jpg"))[:2]
    rc, out, err = run_cli("explain", model, *imgs, "--check", "--out", tmp_path / "o2", "--json", "-")
    res = json.loads(out)
    assert rc == 0 and res["verdict"] != "passed" and "pointing_game" not in res and "--masks" in res["pointing_game_reason"]


def test_batched_gradcam_equals_one_image_at_a_time(masked_phantom):
    """Batches of images and per-image targets (each image's top K) give the maps of one image at a time."""
    import numpy as np

    from chexcut.data.tables import load_split
    from chexcut.deploy import explain as ex

    t = load_split(masked_phantom, "valid", chexcut.data.tables.DataOptions())
    model = chexcut.truncate("densenet121", drop=1, weights="none", image_size=48).eval()
    spec = model.chexcut_spec
    inputs = ex.read_images(t.files[:10], t.paths[:10], 48, "squash", False)
    targets = np.array([[1, 4], [2, 4], [1, 3], [0, 2], [5, 6], [1, 4], [7, 1], [8, 9], [2, 3], [10, 13]])
    batched = ex.gradcam(model, spec, inputs.images, targets, batch=4)
    single = np.concatenate([ex.gradcam(model, spec, inputs.images[i:i + 1], targets[i]) for i in range(10)])
    assert batched.shape == (10, 2, 48, 48) and np.abs(batched - single).max() < 1e-5
    reference = ex.captum_gradcam(model, spec, inputs.images, [2, 8])  # Captum's LayerGradCam, per target
    assert np.abs(ex.gradcam(model, spec, inputs.images, [2, 8]) - reference).max() < 1e-5
    for arch in ("resnet18", "mobilenet_v2"):
        other = chexcut.truncate(arch, drop=0, weights="none", image_size=48).eval()
        assert np.abs(ex.gradcam(other, other.chexcut_spec, inputs.images, [0, 5]) -
                      ex.captum_gradcam(other, other.chexcut_spec, inputs.images, [0, 5])).max() < 1e-5
    same = ex.gradcam(model, spec, inputs.images, [2, 8], batch=3)
    assert np.abs(same - np.concatenate([ex.gradcam(model, spec, inputs.images[i:i + 1], [2, 8])
                                         for i in range(10)])).max() < 1e-5


def test_explain_listing_and_bad_input(masked_phantom, tmp_path):
    model = tmp_path / "m.safetensors"
    chexcut.save_model(chexcut.truncate("resnet18", drop=2, weights="none", image_size=48), model)
    imgs = sorted((masked_phantom / "CheXpert-v1.0-small" / "valid").rglob("*frontal.jpg"))[:3]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rc, out, err = run_cli("explain", model, *imgs, "--out", tmp_path / "o", "--top", "2", "--json", "-")
    assert rc == 0, err
    rows = json.loads(out)["images"]
    assert len(rows) == 6 and {"path", "label", "probability", "peak", "file"} <= set(rows[0])
    (tmp_path / "afile").write_text("x")
    for args, msg in (([model, tmp_path / "broken.jpg", "--out", tmp_path / "o2"], "cannot read image"),
                      ([model, imgs[0], "--labels", "Headache", "--out", tmp_path / "o3"], "no head output"),
                      ([model, imgs[0], "--layer", "9", "--out", tmp_path / "o4"], "--layer 9 is out of range"),
                      ([tmp_path / "afile", imgs[0], "--out", tmp_path / "o5"], "not a chexcut model"),
                      ([model, imgs[0], "--out", tmp_path / "afile"], "is a file")):
        rc, _, err = run_cli("explain", *args)
        assert rc == 2 and msg in err and err.count("\n") == 1, (args, err)
    rc, out, err = run_cli("explain", model, imgs[0], tmp_path / "broken.jpg", "--skip-bad", "--out", tmp_path / "o6",
                           "--json", "-")
    assert rc == 0 and json.loads(out)["skipped"] == [str(tmp_path / "broken.jpg")]


class _AsMaps(torch.nn.Module):
    """A block (or its part Grad-CAM reads) whose output is shown as an NCHW map, for Captum to read."""

    def __init__(self, inner, family, prefix):
        super().__init__()
        self.inner, self.family, self.prefix, self.kept = inner, family, prefix, None

    def forward(self, x):
        from chexcut.models.backbone import as_maps

        out = self.inner(x)
        self.kept = out[:, :self.prefix] if self.family.output == "NLC" else None
        return as_maps(out, self.family, self.prefix)


class _Back(torch.nn.Module):
    """The map back to the block's own format (tokens with their prefix tokens, or NHWC)."""

    def __init__(self, maps):
        super().__init__()
        self.maps = [maps]  # not a submodule: Captum hooks the maps module only

    def forward(self, m):
        maps = self.maps[0]
        if maps.family.output == "NHWC":
            return m.permute(0, 2, 3, 1)
        if maps.family.output == "NLC":
            return torch.cat([maps.kept, m.flatten(2).transpose(1, 2)], 1)
        return m


@pytest.mark.parametrize("arch", ["test_vit", "swin_tiny_patch4_window7_224", "test_convnext"])
def test_token_and_nhwc_gradcam_equal_captum_on_the_map_view(arch, masked_phantom):
    """A ViT layer's tokens (class token left out) and a Swin stage's NHWC output give Captum's LayerGradCam maps
    of the same activations shown as an NCHW map (the model's output is unchanged by the view)."""
    import copy

    import numpy as np
    from captum.attr import LayerAttribution, LayerGradCam

    from chexcut.deploy import explain as ex
    from chexcut.models.backbone import prefix_tokens
    from chexcut.models.surgery import set_module

    torch.manual_seed(0)
    model = chexcut.truncate(arch, drop=1, weights="none", image_size=64).eval()
    spec = model.chexcut_spec
    images = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8)
    ours = ex.gradcam(model, spec, images, [2, 8])
    viewed = copy.deepcopy(model)
    target, _ = ex.target_layer(viewed, spec, None)
    path = next(n for n, m in viewed.named_modules() if m is target)
    family = get_arch(arch).family
    maps = _AsMaps(target, family, prefix_tokens(viewed, family))
    set_module(viewed, path, torch.nn.Sequential(maps, _Back(maps)))
    x = spec.preprocess.normalise(images)
    with torch.no_grad():
        assert torch.allclose(viewed(x), model(x), atol=1e-5)
    cam = LayerGradCam(viewed, maps)
    for t, j in enumerate([2, 8]):
        a = LayerAttribution.interpolate(cam.attribute(x, target=j, relu_attributions=True), (64, 64),
                                         interpolate_mode="bilinear").detach().reshape(4, -1)
        a = (a / a.max(dim=1, keepdim=True).values.clamp_min(1e-12)).reshape(4, 64, 64).numpy()
        assert np.abs(ours[:, t] - a).max() < 1e-4, arch
