"""``chexcut probe``: the features of every block by hand and scikit-learn's logistic regression agree with the
command's AUROCs; the features are cached and reused; user errors are one line; maps and tokens both work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

QUICK = ["--bootstrap", "20", "--workers", "0", "--device", "cpu", "-q"]


def _hand_features(name: str, drop: int, size: int, table) -> list[np.ndarray]:
    """Every kept block's pooled output, computed here module by module: a ResNet's stem then its blocks, global
    average; a ViT's patch embedding, position embedding and blocks, the final norm, the class token."""
    from chexcut.data.batches import XrayBatches
    from chexcut.models.surgery import truncate

    model = truncate(name, drop=drop, weights="none", image_size=size, seed=0).eval()
    pre = model.chexcut_spec.preprocess
    images = XrayBatches(table, size, "squash")[list(range(len(table)))][0]
    with torch.no_grad():
        x = pre.normalise(images)
        out = []
        if name == "resnet18":  # drop 1: a ChexcutNet (stem, blocks, neck, pool, head)
            x = model.stem(x)
            for block in model.blocks:
                x = block(x)
                out.append(x.mean((2, 3)))
        else:  # timm's ViT, whole
            x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
            for block in model.blocks:
                x = block(x)
                out.append(model.norm(x)[:, 0])
    return [f.numpy() for f in out]


@pytest.mark.parametrize(("name", "drop", "size"), [("resnet18", 1, 40), ("test_vit", 0, 32)])
def test_auroc_of_every_block_agrees_with_sklearn_on_features_extracted_by_hand(phantom, tmp_path, name, drop, size):
    from safetensors.numpy import load_file
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from chexcut.data.tables import load_split

    out = tmp_path / "probe"
    code, _, err = run_cli("probe", name, "--drop", drop, "--weights", "none", "--data", phantom, "--out", out,
                           "--image-size", size, "--level", "image", *QUICK)
    assert code == 0, err
    res = json.loads((out / "probe.json").read_text())
    train, valid = load_split(phantom, "train"), load_split(phantom, "valid")
    hand_train, hand_valid = _hand_features(name, drop, size, train), _hand_features(name, drop, size, valid)
    assert len(res["blocks"]) == len(hand_train) == (4 - drop if name == "resnet18" else 6)
    cached = load_file(res["features"]["files"]["train"])
    compared = 0
    for k, row in enumerate(res["blocks"]):
        assert row["width"] == hand_train[k].shape[1]
        np.testing.assert_allclose(cached[f"block{k + 1}"], hand_train[k], rtol=2e-3, atol=2e-3)  # float16
        xs = StandardScaler().fit(hand_train[k].astype(np.float16).astype(np.float64))
        for j, label in enumerate(row["labels"]):
            fit, ev = train.mask[:, j] > 0, valid.mask[:, j] > 0
            y, yv = train.targets[fit, j] > 0.5, valid.targets[ev, j] > 0.5
            if label["auroc"] is None or y.all() or not y.any():
                continue
            lr = LogisticRegression(C=row["C"], max_iter=1000).fit(
                xs.transform(hand_train[k][fit].astype(np.float16).astype(np.float64)), y)
            p = lr.predict_proba(xs.transform(hand_valid[k][ev].astype(np.float16).astype(np.float64)))[:, 1]
            assert abs(roc_auc_score(yv, p) - label["auroc"]) < 1e-3, (k, label["label"])
            compared += 1
    assert compared >= 3 * len(res["blocks"])
    best = res["best_block"]
    assert res["blocks"][best - 1]["vs_best"] is None
    assert all(r["vs_best"]["delta"] <= 1e-12 for r in res["blocks"] if r["block"] != best)
    assert (out / "probe.png").stat().st_size > 0


def test_features_are_cached_reused_and_recomputed_for_another_key(phantom, tmp_path, monkeypatch):
    from chexcut.evaluation import probe_features

    batches = []
    original = probe_features.block_features
    monkeypatch.setattr(probe_features, "block_features", lambda *a: batches.append(1) or original(*a))
    out = tmp_path / "probe"
    args = ["probe", "resnet18", "--keep", "2", "--weights", "none", "--data", phantom, "--out", out, *QUICK]

    assert run_cli(*args, "--image-size", "40")[0] == 0
    assert batches
    first = json.loads((out / "probe.json").read_text())
    assert first["features"]["reused"] == {"train": False, "evaluation": False}
    batches.clear()
    code, _, err = run_cli(*args, "--image-size", "40", "--label-fraction", "0.5")
    assert code == 0, err
    assert not batches  # no forward pass: the features of every training row were kept
    again = json.loads((out / "probe.json").read_text())
    assert again["features"]["reused"] == {"train": True, "evaluation": True}
    assert again["features"]["files"] == first["features"]["files"]
    budget = again["data"]["label_budget"]
    assert budget["fraction"] == 0.5 and again["data"]["train_images"] == budget["images"] < first["data"]["train_images"]
    assert any("reused" in n for n in again["notes"])

    code, _, err = run_cli(*args, "--image-size", "32")  # another key: computed again, beside the first
    assert code == 0, err
    assert batches
    other = json.loads((out / "probe.json").read_text())
    assert other["features"]["reused"] == {"train": False, "evaluation": False}
    assert set(other["features"]["files"].values()).isdisjoint(first["features"]["files"].values())
    assert len(list((out / "features").glob("*.safetensors"))) == 4
    assert not list((out / "features").glob(".*"))  # no temporary file left


@pytest.mark.parametrize(("args", "words"), [
    (["resnet1800"], "unknown architecture"),
    (["resnet18", "--data", "/no/such/folder"], "does not exist"),
    (["resnet18", "--label-fraction", "1.5"], "--label-fraction"),
    (["resnet18", "--label-fraction", "0"], "--label-fraction"),
    (["resnet18", "--split", "train"], "--split train"),
    (["resnet18", "--split", "all"], "of its patients are the probe's training patients"),
    (["missing.safetensors"], "model file not found"),
])
def test_user_errors_are_one_line_and_write_nothing(phantom, tmp_path, args, words):
    out = tmp_path / "probe"
    full = ["probe", *args] + ([] if "--data" in args else ["--data", phantom])
    code, stdout, err = run_cli(*full, "--out", out, "--weights", "none", "--image-size", "32", *QUICK)
    assert code == 2, err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "probe.json").exists()


@pytest.mark.parametrize(("name", "drop", "pool", "size"), [
    ("test_vit", 0, "token", 32), ("test_vit", 2, "avg", 32), ("resnet18", 0, None, 40), ("resnet18", 2, None, 40),
    ("test_convnext", 1, None, 64)])
def test_the_last_block_features_are_what_the_truncated_head_reads(name, drop, pool, size):
    """The pooling rule: block k's features are the input of the head of the model truncated at k (a ViT's final
    norm and its pool; a CNN's global average), and the forward stops there (the head never runs)."""
    from chexcut.evaluation.probe_features import block_features
    from chexcut.models.registry import get_arch
    from chexcut.models.surgery import head_of, truncate

    model = truncate(name, drop=drop, weights="none", image_size=size, pool=pool).eval()
    arch, spec = get_arch(name), model.chexcut_spec
    head, seen = head_of(model, arch, drop), {}
    handle = head.register_forward_hook(lambda m, i, o: seen.setdefault("input", i[0]))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = block_features(model, arch, spec, x)
        assert not seen  # no head computed
        model(x)
    handle.remove()
    assert len(feats) == spec.num_blocks - drop
    torch.testing.assert_close(feats[-1], seen["input"].reshape(2, -1), rtol=1e-5, atol=1e-5)


def test_a_model_file_and_json_to_stdout(phantom, tmp_path):
    """A model file from truncate (a ViT pooling the mean of its patch tokens) and --json -: the JSON alone."""
    model = tmp_path / "vit.safetensors"
    assert run_cli("truncate", "test_vit", "--drop", "3", "--pool", "avg", "--weights", "none", "--image-size", "32",
                   "-o", model, "-q")[0] == 0
    code, stdout, err = run_cli("probe", model, "--data", phantom, "--out", tmp_path / "p", "--json", "-", *QUICK)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["model"]["pool"] == "avg" and res["model"]["keep"] == 3 and len(res["blocks"]) == 3
    assert "patch tokens" in res["features"]["pooling"]
    assert res == json.loads(Path(tmp_path / "p" / "probe.json").read_text())
