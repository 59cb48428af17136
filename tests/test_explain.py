"""`chexcut explain`: Grad-CAM (Captum) for every architecture, scored against where the phantom drew each
finding (pointing game) and checked against randomised weights (Adebayo et al. 2018)."""

import json

import pytest
from conftest import run_cli

import chexcut
from chexcut.models.registry import PAPER_ARCHS, get_arch

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def masked_phantom(tmp_path_factory):
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("pm")
    make_phantom(d, n=500, image_size=64, seed=0, masks=True)
    return d


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_explain_every_architecture_at_drop_0_and_deepest(arch, masked_phantom, tmp_path):
    from chexcut.data.chexpert import load_split
    from chexcut.deploy import explain as ex

    size = 80 if arch.startswith("inception") else 48
    t = load_split(masked_phantom, "valid", chexcut.data.chexpert.DataOptions())
    for drop in (0, get_arch(arch).family.num_blocks - 1):
        model = chexcut.truncate(arch, drop=drop, weights="none", image_size=size)
        inputs = ex.read_images(t.files[:2], t.paths[:2], size, "squash", False)
        res = ex.explain(model, model.chexcut_spec, inputs, tmp_path / f"d{drop}", ["Cardiomegaly"])
        assert len(res["images"]) == 2 and all((tmp_path / f"d{drop}" / r["file"]).is_file() for r in res["images"])
        row = res["images"][0]
        assert 0 <= row["probability"] <= 1 and all(0 <= v < size for v in row["peak"])
        assert len(list((tmp_path / f"d{drop}").glob("*-sheet.png"))) == 2


def test_trained_maps_point_at_the_findings_and_fail_randomisation(masked_phantom, tmp_path):
    from chexcut.data.chexpert import DataOptions
    from chexcut.training.config import Run, TrainConfig
    from chexcut.training.loop import finetune

    cfg = TrainConfig.from_recipe("paper", image_size=64, epochs=6, lr=1e-3, batch_size=32, val_every=1000,
                                  workers=0, device="cpu", precise_bn=256)
    finetune(Run(tmp_path / "run", masked_phantom, DataOptions(uncertain="ignore"), cfg,
                 {"arch": "resnet18", "drop": 1, "weights": "none"}))
    # the training rows: ~4x the positives of the validation split, so the verdict rests on a test with power,
    # not on a rate of 10 images (which differs from one CPU's kernels to another's)
    rc, out, err = run_cli("explain", tmp_path / "run", "--data", masked_phantom, "--split", "train", "--limit",
                           "200", "--check", "--labels", "Cardiomegaly,Pleural Effusion", "--out", tmp_path / "maps",
                           "--json", "-")
    assert rc == 0, err
    res = json.loads(out)
    from scipy.stats import binomtest

    for name in ("Cardiomegaly", "Pleural Effusion"):
        p = res["pointing_game"][name]
        test = binomtest(p["hits"], p["n"], p["chance"], alternative="greater")
        print(name, p, "binomial p", test.pvalue)
        assert p["n"] >= 25 and test.pvalue < 1e-3, (p, test.pvalue)  # the peaks land on the findings, not by chance
    r = res["randomisation"]
    print("randomisation", r)
    assert r["rank_correlation"] < 0.5 and len(r["cascade"]) == 4
    assert {"path", "label", "probability", "peak", "file"} <= set(res["files"][0])


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
