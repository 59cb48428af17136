"""Pretraining sources beyond ImageNet: each layout checked against the library that publishes it.

A random-init transformers ``Dinov2Model`` saved in the Hugging Face layout, and a random-init torchxrayvision
DenseNet pickled the way its weights are published (the legacy and the zip format), are loaded as chexcut
sources: their features equal those of the publishing library's own model on the same input. The pickled model
is read without running any of its code. transformers and torchxrayvision are in the test extra (skipped with the
reason when absent).
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli, write_evil_pickle

from chexcut.errors import ChexcutError


@pytest.fixture(scope="module")
def txrv_model():
    xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision (the test extra) builds the oracle")
    torch.manual_seed(1)
    model = xrv.models.DenseNet(weights=None).eval()
    with torch.no_grad():  # BatchNorm statistics that are not 0 and 1, as trained ones
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("zipped", [False, True])
def test_a_torchxrayvision_densenet_gives_torchxrayvisions_features(txrv_model, tmp_path, zipped):
    import torch.nn.functional as F

    from chexcut.models.surgery import truncate

    path = tmp_path / "xrv.pt"
    torch.save(txrv_model, path, _use_new_zipfile_serialization=zipped)  # the whole model, as published
    model = truncate("densenet121", drop=0, weights=f"txrv-all:{path}", image_size=64).eval()
    spec = model.chexcut_spec
    assert spec.preprocess.in_chans == 1 and spec.weights["name"] == "txrv-all"
    pixels = torch.randint(0, 256, (2, 1, 64, 64)).float()
    ours_in = (pixels / 255 - spec.preprocess.mean[0]) / spec.preprocess.std[0]  # chexcut's preprocessing
    xrv = pytest.importorskip("torchxrayvision")
    theirs_in = torch.from_numpy(xrv.utils.normalize(pixels.numpy(), 255))  # torchxrayvision's
    assert torch.allclose(ours_in, theirs_in, atol=1e-3)
    with torch.no_grad():
        ours = F.adaptive_avg_pool2d(F.relu(model.features(theirs_in)), 1).flatten(1)
        theirs = txrv_model.features2(theirs_in)
    assert (ours - theirs).abs().max() <= 1e-4


def test_a_pickled_model_never_runs_its_code(tmp_path):
    from chexcut.models.unpickle import read_pickled_model

    marker = tmp_path / "ran"
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, evil_zip)
    evil_legacy = tmp_path / "evil_legacy.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, evil_legacy, _use_new_zipfile_serialization=False)
    plain = write_evil_pickle(tmp_path / "plain.pt", marker)
    for path in (evil_zip, evil_legacy, plain):
        with pytest.raises(ChexcutError, match="without running code it names"):
            read_pickled_model(path)
        code, _, err = run_cli("truncate", "densenet121", "--weights", f"txrv-all:{path}", "--image-size", "32",
                               "-o", tmp_path / "m.safetensors")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_cut_legacy_file_and_a_foreign_model_are_one_line(txrv_model, tmp_path):
    path = tmp_path / "xrv.pt"
    torch.save(txrv_model, path, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:-5000])
    code, _, err = run_cli("truncate", "densenet121", "--weights", f"txrv-all:{cut}", "-o", tmp_path / "m.safetensors")
    assert code == 2 and "cut short" in err
    code, _, err = run_cli("truncate", "resnet18", "--weights", f"txrv-all:{path}", "-o", tmp_path / "m.safetensors")
    assert code == 2 and "fits densenet121, not resnet18" in err
    code, _, err = run_cli("truncate", "densenet121", "--weights", f"txrv-all:{path}", "--in-chans", "3", "-o",
                           tmp_path / "m.safetensors")
    assert code == 2 and "takes 1 input channel" in err and "contradicts" in err
    code, _, err = run_cli("truncate", "densenet121", "--weights", "txrv-all", "-o", tmp_path / "m.safetensors")
    assert code == 2 and "weights fetch txrv-all" in err  # not staged: how to stage it
    assert not (tmp_path / "m.safetensors").exists()


def _hf_dinov2(tmp_path, hidden=384, layers=2, heads=6, image_size=56):
    transformers = pytest.importorskip("transformers", reason="transformers (the test extra) builds the oracle")
    torch.manual_seed(2)
    config = transformers.Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                       intermediate_size=4 * hidden, patch_size=14, image_size=image_size,
                                       layerscale_value=0.5)
    model = transformers.Dinov2Model(config).eval()
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.53, 0.53, 0.53], "image_std": [0.26, 0.26, '
                                                     '0.26], "crop_size": {"height": 518, "width": 518}}')
    return model, folder


def test_a_transformers_dinov2_folder_gives_transformers_features(tmp_path):
    from chexcut.models.sources import SOURCES, hf_dinov2_to_timm, read_source
    from chexcut.models.surgery import truncate

    hf, folder = _hf_dinov2(tmp_path, layers=12, image_size=56)
    model = truncate("vit_small_patch14_dinov2", drop=0, weights=f"hf-dinov2:{folder}", image_size=56).eval()
    assert model.chexcut_spec.preprocess.mean == (0.53, 0.53, 0.53)  # read from the folder's own config
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ours = model.forward_features(x)
        theirs = hf(pixel_values=x).last_hidden_state
    assert (ours - theirs).abs().max() <= 1e-4
    state, _ = read_source(SOURCES["hf-dinov2"], folder)  # transformers 4.x key names map the same way
    old = {k.replace("attention.q_proj", "attention.attention.query").replace(
        "attention.k_proj", "attention.attention.key").replace("attention.v_proj", "attention.attention.value")
        .replace("attention.o_proj", "attention.output.dense"): v for k, v in hf.state_dict().items()}
    mapped = hf_dinov2_to_timm(old)
    assert set(mapped) == set(state) and all(torch.equal(mapped[k], state[k]) for k in state)


def test_a_dinov2_of_another_size_is_refused_naming_the_keys(tmp_path):
    _, folder = _hf_dinov2(tmp_path, hidden=64, layers=2, heads=2)
    code, _, err = run_cli("truncate", "vit_small_patch14_dinov2", "--weights", f"hf-dinov2:{folder}", "--image-size",
                           "56", "-o", tmp_path / "m.safetensors")
    assert code == 2 and "does not fit vit_small_patch14_dinov2" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("truncate", "vit_small_patch14_dinov2", "--weights", "hf-dinov2", "-o",
                           tmp_path / "m.safetensors")
    assert code == 2 and "hf-dinov2:PATH" in err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_a_study_with_three_pretraining_sources_reports_them(txrv_model, phantom, tmp_path):
    """none, a torchxrayvision DenseNet and a CC BY-NC DINOv2 checkpoint over densenet121 and a DINOv2 ViT-S:
    each source runs with the architecture it fits; the report compares every source with random init; the card
    of the CC BY-NC run names its licence."""
    import json

    xrv_file = tmp_path / "xrv.pt"
    torch.save(txrv_model, xrv_file, _use_new_zipfile_serialization=False)
    _, folder = _hf_dinov2(tmp_path, layers=12, image_size=42)
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\ntags: [chest-x-ray]\n---\n# a checkpoint\n")
    study = tmp_path / "s"
    code, out, err = run_cli("study", "plan", "--data", phantom, "--out", study, "--archs",
                             "densenet121,vit_small_patch14_dinov2", "--weights",
                             f"none,txrv-all:{xrv_file},hf-dinov2:{folder}", "--drops", "0", "--image-size", "42",
                             "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--workers", "0",
                             "--val-every", "2", "--bootstrap", "20")
    assert code == 0, err
    runs = {r["id"] for r in json.loads((study / "plan.json").read_text())["runs"]}
    assert runs == {"densenet121-none-d0-s0", "densenet121-txrv-all-d0-s0", "vit_small_patch14_dinov2-none-d0-s0",
                    "vit_small_patch14_dinov2-hf-dinov2-d0-s0"}, runs
    assert "densenet121 with hf-dinov2" in out + err  # skipped, and said
    assert "hf-dinov2 is licensed cc-by-nc-4.0" in err  # said once, before any run
    code, _, err = run_cli("study", "run", study, "-q")
    assert code == 0, err[-2000:]
    code, _, err = run_cli("report", study, "-o", tmp_path / "report")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    versus = {(e["arch"], e["weights"]) for e in report["pretraining_sources"]["vs_random"]}
    assert versus == {("densenet121", "txrv-all"), ("vit_small_patch14_dinov2", "hf-dinov2")}
    assert all(e["delta"] is not None and "p_holm" in e for e in report["pretraining_sources"]["vs_random"])
    assert (tmp_path / "report" / "pretraining_sources.png").is_file()
    assert "Pretraining sources against random init" in (tmp_path / "report" / "report.md").read_text()
    run = study / "runs" / "vit_small_patch14_dinov2-hf-dinov2-d0-s0"
    code, _, err = run_cli("card", run, "-o", tmp_path / "card.md")
    assert code == 0, err
    card = (tmp_path / "card.md").read_text()
    assert "cc-by-nc-4.0" in card and "NON-COMMERCIAL" in card
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["weights"]["license"] == "cc-by-nc-4.0"


def test_a_source_is_staged_from_a_mirror_and_then_named_alone(txrv_model, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("CHEXCUT_CACHE", str(tmp_path / "cache"))
    from chexcut.models.sources import SOURCES

    source = SOURCES["txrv-all"]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / source.file).write_bytes(b"not a model")  # a damaged copy is refused, never installed
    code, _, err = run_cli("weights", "fetch", "txrv-all", "--mirror", mirror, "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli("weights", "path", "txrv-all")
    staged = tmp_path / "cache" / "sources" / "txrv-all" / source.file
    assert code == 0 and out.strip() == str(staged) and not staged.exists()
    torch.save(txrv_model, mirror / source.file, _use_new_zipfile_serialization=False)
    code, _, err = run_cli("weights", "fetch", "txrv-all", "--mirror", mirror, "-q")
    assert code == 0 and staged.is_file(), err
    code, _, err = run_cli("truncate", "densenet121", "--weights", "txrv-all", "--drop", "2", "--image-size", "64",
                           "-o", tmp_path / "m.safetensors")
    assert code == 0, err
    code, out, _ = run_cli("inspect", tmp_path / "m.safetensors", "--json", "-")
    spec = json.loads(out)
    assert "txrv-all" in json.dumps(spec) and "apache-2.0" in json.dumps(spec)
    code, out, _ = run_cli("weights", "list")
    assert "txrv-all" in out and "rad-dino" in out and "msrla" in out


def test_a_source_on_an_architecture_it_does_not_fit_is_one_line(tmp_path):
    for weights, arch in (("dinov2", "resnet18"), ("rad-dino", "vit_small_patch14_dinov2")):
        code, _, err = run_cli("truncate", arch, "--weights", weights, "-o", tmp_path / "m.safetensors")
        assert code == 2 and "fits" in err and f"not {arch}" in err, err
    code, _, err = run_cli("study", "plan", "--data", tmp_path, "--out", tmp_path / "s", "--archs", "resnet18",
                           "--weights", "none,rad-dino")
    assert code == 2 and "rad-dino fits vit_base_patch14_dinov2, none of --archs resnet18" in err, err
    code, _, err = run_cli("study", "plan", "--data", tmp_path, "--out", tmp_path / "s", "--archs",
                           "resnet18,vit_small_patch14_dinov2", "--weights", "imagenet,dinov2")
    assert code == 2 and "load the same file for vit_small_patch14_dinov2" in err, err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "s").exists()


def test_a_transformers_dinov2_with_registers_gives_its_features(tmp_path):
    """timm's register ViTs embed no position for the class token: the mapping folds it into the class token."""
    transformers = pytest.importorskip("transformers", reason="transformers (the test extra) builds the oracle")
    from chexcut.models.sources import SOURCES, licence_of
    from chexcut.models.surgery import truncate

    torch.manual_seed(3)
    config = transformers.Dinov2WithRegistersConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                    intermediate_size=1536, patch_size=14, image_size=56,
                                                    num_register_tokens=4, layerscale_value=0.5)
    hf = transformers.Dinov2WithRegistersModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = truncate("vit_small_patch14_reg4_dinov2", drop=0, weights=f"hf-dinov2:{tmp_path / 'hf'}",
                     image_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert (model.forward_features(x) - hf(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    # a folder's own model card never makes a research-only source less restricted
    assert "research" in licence_of(SOURCES["rad-dino"], {"license": "mit"})
    assert licence_of(SOURCES["hf-dinov2"], {"license": "cc-by-nc-4.0"}) == "cc-by-nc-4.0"


def test_a_model_cards_front_matter_is_read_with_bounded_work(tmp_path):
    """A Hugging Face folder's README front matter is YAML a user gives: aliases (a "billion laughs") are one line."""
    from chexcut.models.sources import licence_notes

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "README.md").write_text("---\na: &a [x, x, x]\nb: [*a, *a, *a]\nlicense: cc-by-nc-4.0\n---\n")
    with pytest.raises(ChexcutError, match=r"YAML aliases \(\*a\) are not read"):
        licence_notes([f"hf-dinov2:{folder}"])
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# a model\n")
    assert licence_notes([f"hf-dinov2:{folder}"]) == [
        "hf-dinov2 is licensed cc-by-nc-4.0: models trained from it inherit its terms (no commercial use)"]
