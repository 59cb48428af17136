"""The typed model spec: it carries the preprocessing, and every command that takes a model uses it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from PIL import Image

import chexcut
from chexcut.errors import ChexcutError
from chexcut.models.spec import DEFAULT_IMAGE_SIZE, ModelSpec, Preprocess


def test_spec_round_trips_through_json_and_the_model_file(tmp_path):
    model = chexcut.truncate("resnet18", drop=2, weights="none", image_size=48, resize="pad")
    spec = model.chexcut_spec
    assert isinstance(spec, ModelSpec) and spec.preprocess == Preprocess(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size=48, resize="pad", in_chans=3)
    assert ModelSpec.from_json(spec.to_json()) == spec
    chexcut.save_model(model, tmp_path / "m.safetensors")
    assert chexcut.load_model(tmp_path / "m.safetensors").chexcut_spec == spec


def test_an_older_file_without_resize_reads_as_squash_with_a_note():
    old = chexcut.truncate("resnet18", drop=2, weights="none").chexcut_spec.to_json()
    del old["resize"]
    spec = ModelSpec.from_json(old, "old.safetensors")
    assert spec.preprocess.resize == "squash" and spec.preprocess.image_size == DEFAULT_IMAGE_SIZE
    assert spec.notes and "read as squash" in spec.notes[0]


@pytest.mark.parametrize("change,msg", [({"resize": "stretch"}, "resize"), ({"image_size": "320px"}, "image_size"),
                                        ({"image_size": 10**9}, "image_size")])
def test_a_damaged_preprocessing_is_one_line(change, msg):
    bad = {**chexcut.truncate("resnet18", drop=2, weights="none").chexcut_spec.to_json(), **change}
    with pytest.raises(ChexcutError, match=f"damaged chexcut metadata: {msg}"):
        ModelSpec.from_json(bad, "bad.safetensors")


def test_normalise_replicates_grey_and_uses_each_channels_statistics():
    pre = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    out = pre.normalise(x)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    grey = Preprocess(mean=(0.5,), std=(0.25,), in_chans=1).normalise(x)
    assert grey.shape == (2, 1, 4, 4) and torch.allclose(grey, torch.full_like(grey, 2.0))


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    """A phantom whose X-rays are portrait (48 x 80): pad and squash give different inputs."""
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("portrait")
    root = make_phantom(d, n=120, image_size=64, seed=5)
    for f in root.rglob("*.jpg"):
        Image.open(f).convert("L").resize((48, 80), Image.BILINEAR).save(f, quality=95)
    return d


def test_a_model_trained_with_pad_is_evaluated_explained_and_exported_with_pad(portrait, tmp_path):
    run = tmp_path / "run"
    rc, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--drop", "2", "--data", portrait, "--out", run,
                         "--image-size", "32", "--resize", "pad", "--epochs", "1", "--batch-size", "16", "--workers",
                         "0", "--device", "cpu", "-q")
    assert rc == 0, err
    alone = tmp_path / "shared" / "model.safetensors"  # the model file alone, out of its run directory
    alone.parent.mkdir()
    alone.write_bytes((run / "best.safetensors").read_bytes())
    assert chexcut.load_model(alone).chexcut_spec.preprocess.resize == "pad"
    rc, _, err = run_cli("evaluate", alone, "--data", portrait, "--bootstrap", "0", "--workers", "0",
                         "--predictions-out", tmp_path / "p.csv", "--json", tmp_path / "e.json", "--device", "cpu")
    assert rc == 0, err
    own = pd.read_csv(run / "valid_predictions.csv", index_col="Path")
    again = pd.read_csv(tmp_path / "p.csv", index_col="Path").loc[own.index]
    assert np.abs(own.to_numpy() - again.to_numpy()).max() < 1e-5
    # squash would have given other inputs, so other predictions: the check above can fail
    from chexcut.data.images import load_image

    f = next(portrait.rglob("*.jpg"))
    assert not np.array_equal(load_image(f, 32, "pad"), load_image(f, 32, "squash"))

    from chexcut.deploy import explain as ex

    spec = chexcut.load_model(alone).chexcut_spec
    inputs = ex.gather([f], None, None, "valid", 1, spec.preprocess, False)
    assert np.array_equal(inputs.images[0, 0].numpy(), load_image(f, 32, "pad"))
    pytest.importorskip("onnxruntime")
    rc, out, err = run_cli("export", alone, "-o", tmp_path / "m.onnx", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["resize"] == "pad"


def test_cuda_out_of_memory_in_the_loop_is_one_line_with_the_batch_size_advice(portrait, tmp_path, monkeypatch,
                                                                                  capsys):
    import chexcut.training.loop as loop
    from chexcut.cli import main

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "masked_bce", oom)
    with pytest.raises(SystemExit) as e:
        main(["finetune", "resnet18", "--weights", "none", "--drop", "2", "--data", str(portrait), "--out",
              str(tmp_path / "r"), "--image-size", "32", "--batch-size", "16", "--workers", "0", "--device", "cpu",
              "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "CUDA out of memory at --batch-size 16; try --batch-size 8" in err and err.count("\n") == 1
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["status"] == "stopped" and "out of memory" in state["reason"]
