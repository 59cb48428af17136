"""`chexcut export` (ONNX with chexcut's preprocessing, parity-checked in ONNX Runtime) and `chexcut bench`."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli

import chexcut
from chexcut.errors import ChexcutError
from chexcut.models.registry import PAPER_ARCHS, get_arch

onnx = pytest.importorskip("onnx", reason="the [export] extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxruntime) is not installed")


def _size(arch: str) -> int:
    return 80 if arch.startswith("inception") else 48


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_every_architecture_exports_with_parity_at_drop_0_and_deepest(arch, tmp_path):
    from chexcut.deploy.export import export_onnx

    deepest = get_arch(arch).family.num_blocks - 1
    for drop in (0, deepest):
        f = tmp_path / f"{arch}-{drop}.safetensors"
        chexcut.save_model(chexcut.truncate(arch, drop=drop, weights="none", image_size=_size(arch)), f)
        res = export_onnx(f, tmp_path / f"{arch}-{drop}.onnx")
        assert res["max_abs_diff"] <= 1e-4 and (tmp_path / f"{arch}-{drop}.onnx").is_file()


def test_graph_takes_uint8_grey_images_and_returns_chexcuts_probabilities(tmp_path):
    from chexcut.deploy.export import export_onnx

    model = chexcut.truncate("densenet121", drop=2, weights="none", image_size=64)
    chexcut.save_model(model, tmp_path / "m.safetensors")
    res = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in g.metadata_props}
    assert json.loads(meta["labels"]) == list(model.chexcut_spec.labels) and json.loads(meta["chexcut"])["drop"] == 2
    inp = g.graph.input[0]
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert res["image_size"] == 64
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)  # any batch size: the batch axis is dynamic
    got = sess.run(None, {"images": x.numpy()})[0]
    spec = model.chexcut_spec
    with torch.no_grad():
        want = torch.sigmoid(model(spec.preprocess.normalise(x))).numpy()
    assert got.shape == (5, 14) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


def test_export_bad_input(tmp_path, monkeypatch):
    from chexcut.deploy.export import export_onnx

    model = chexcut.truncate("resnet18", drop=3, weights="none", image_size=48)
    chexcut.save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model file at all")
    for args, msg in (([tmp_path / "junk.safetensors", "-o", tmp_path / "a.onnx"], "not a chexcut model file"),
                      ([tmp_path / "m.safetensors", "-o", tmp_path / "nodir" / "a.onnx"], "does not exist"),
                      ([tmp_path / "m.safetensors", "-o", tmp_path / "a.txt"], ".onnx"),
                      ([tmp_path / "nope.safetensors", "-o", tmp_path / "a.onnx"], "not found")):
        rc, _, err = run_cli("export", *args)
        assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "a.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(ChexcutError, match=r'pip install "chexcut\[export\]"'):
        export_onnx(tmp_path / "m.safetensors", tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


def test_failed_parity_leaves_no_file(tmp_path, monkeypatch):
    import chexcut.deploy.export as ex

    chexcut.save_model(chexcut.truncate("resnet18", drop=3, weights="none", image_size=48), tmp_path / "m.safetensors")
    monkeypatch.setattr(ex, "parity", lambda *a, **k: 0.5)
    with pytest.raises(ChexcutError, match="refused and not written"):
        ex.export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == [tmp_path / "m.safetensors"]


def test_bench_every_level_of_resnet18(tmp_path):
    rc, out, err = run_cli("bench", "resnet18", "--image-size", "64", "--max-time", "0.2", "--batch", "1,8",
                           "--json", "-")
    assert rc == 0, err
    res = json.loads(out)
    assert [r["drop"] for r in res["levels"]] == [0, 1, 2, 3] and res["device"] == "cpu"
    for r in res["levels"]:
        assert {"drop", "params", "macs", "latency_ms", "throughput_img_s", "peak_mem_mb", "device",
                "precision"} <= set(r)
        lat = r["latency_ms"]
        assert 0 < lat["p10"] <= lat["median"] <= lat["p90"] and lat["repetitions"] >= 1
        assert r["throughput_img_s"] > 0 and r["peak_mem_mb"] >= 0 and r["params"] > 0 and r["macs"] > 0
        assert r["precision"] == "fp32"
    params = [r["params"] for r in res["levels"]]
    assert params == sorted(params, reverse=True) and res["levels"][3]["params_ratio"] > 50


def test_bench_onnxruntime_and_a_model_file(tmp_path):
    chexcut.save_model(chexcut.truncate("resnet18", drop=2, weights="none", image_size=48), tmp_path / "m.safetensors")
    rc, out, err = run_cli("bench", tmp_path / "m.safetensors", "--runtime", "onnxruntime", "--max-time", "0.2",
                           "--threads", "1", "--json", tmp_path / "bench.json")
    assert rc == 0, err
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["runtime"] == "onnxruntime" and [r["drop"] for r in res["levels"]] == [2]
    assert res["levels"][0]["throughput_img_s"] > 0


def test_bench_bad_input(tmp_path):
    for args, msg in ((["resnet18", "--device", "cuda"], "no CUDA GPU"), (["resnet18", "--precision", "fp16"], "needs a GPU"),
                      (["inception_v3", "--image-size", "40"], "too small"), (["resnet18", "--drops", "7"], "out of range"),
                      (["resnet18", "--runtime", "tensorrt"], "torch or onnxruntime"),
                      (["resnet18", "--json", tmp_path / "no" / "b.json"], "does not exist")):
        rc, _, err = run_cli("bench", *args, "--max-time", "0.1")
        assert rc == 2 and msg in err and err.count("\n") == 1, (args, err)
