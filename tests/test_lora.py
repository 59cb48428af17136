"""finetune --adapt lora:R (peft): what is trained (by closed form), the merged model file, a run, its resume."""

import json
import sys

import pytest
import torch
from conftest import run_cli
from torch import nn

from chexcut.errors import ChexcutError
from chexcut.models.modelfile import load_model, save_model
from chexcut.models.surgery import rebuild, truncate
from chexcut.training.adapt import apply_adapt, parse_adapt, train_mode
from chexcut.training.config import TrainConfig
from chexcut.training.lora import lora_layers, merged
from chexcut.training.session import make_optimizer

# Where each test model keeps its blocks and its head, read off the models (not from chexcut's code).
CASES = {  # (arch, drop): (the module holding the kept blocks, the head's modules)
    ("resnet18", 1): ("blocks", ["head"]),  # a table family's truncated model: stem, blocks, neck, pool, head
    ("test_vit", 1): ("blocks", ["norm", "fc_norm", "head"]),
    ("test_convnext", 0): ("stages", ["head"]),  # depthwise 7x7 convolutions (groups = channels): skipped
}


def _model(arch, drop, size=32):
    return truncate(arch, drop=drop, weights="none", image_size=size, seed=0)


def _lora_size(m: nn.Module, r: int) -> int:
    """LoRA's parameters on one layer: A (r x in) and B (out x r); a convolution's A is a k x k convolution."""
    if isinstance(m, nn.Linear):
        return r * (m.in_features + m.out_features)
    kh, kw = m.kernel_size
    return r * m.in_channels * kh * kw + r * m.out_channels


@pytest.mark.parametrize("text, shown", [("lora:8", "lora:8"), (" LoRA:16 ", "lora:16"), ("lora:1", "lora:1")])
def test_parse(text, shown):
    assert str(parse_adapt(text)) == shown and parse_adapt(text).rank == int(shown.split(":")[1])


@pytest.mark.parametrize("text", ["lora:0", "lora:x", "lora:", "lora", "lora:-1", "lora:2.5"])
def test_parse_refuses(text):
    with pytest.raises(ChexcutError, match="--adapt"):
        parse_adapt(text)


@pytest.mark.parametrize("arch, drop", list(CASES))
def test_trainable_parameters_are_the_closed_form(arch, drop):
    r = 4
    model = _model(arch, drop)
    container, head = CASES[(arch, drop)]
    layers = {f"{container}.{n}": m for n, m in model.get_submodule(container).named_modules() if n}
    adaptable = {n: m for n, m in layers.items() if type(m) in (nn.Linear, nn.Conv2d) and getattr(m, "groups", 1) == 1}
    grouped = {n for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.groups > 1}
    head_params = sum(p.numel() for h in head for p in model.get_submodule(h).parameters())
    base_total = sum(p.numel() for p in model.parameters())
    expected = sum(_lora_size(m, r) for m in adaptable.values())

    adapted = apply_adapt(model, model.chexcut_spec, f"lora:{r}")
    assert set(adapted.modules) == set(adaptable) and set(adapted.skipped) == grouped
    assert bool(grouped) == (arch == "test_convnext")
    assert adapted.trainable == expected + head_params
    assert adapted.total == base_total + expected
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == ({n for n in trained if ".lora_A." in n or ".lora_B." in n}
                       | {f"{h}.{n}" for h in head for n, _ in model.get_submodule(h).named_parameters()})
    assert sum(model.get_parameter(n).numel() for n in trained) == adapted.trainable
    assert sorted(lora_layers(model)) == sorted(adaptable)


def _train_a_few_steps(model, size=32, steps=3):
    torch.manual_seed(1)
    optimizer = make_optimizer(TrainConfig(lr=1e-2), model)
    train_mode(model)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(model(torch.randn(4, 3, size, size)),
                                                              torch.rand(4, len(model.chexcut_spec.labels)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("arch, drop", [("resnet18", 1), ("test_vit", 1)])
def test_the_merged_model_file_predicts_what_the_unmerged_model_does(arch, drop, tmp_path):
    model = _model(arch, drop)
    apply_adapt(model, model.chexcut_spec, "lora:4")
    _train_a_few_steps(model)
    bs = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert bs and all(b.abs().sum() > 0 for b in bs)  # trained: B moved away from its zero start
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        unmerged = torch.sigmoid(model(x))
        plain = merged(model)
        path = save_model(plain, tmp_path / "m.safetensors")
        loaded = load_model(path)
        from_file = torch.sigmoid(loaded(x))
    assert set(loaded.state_dict()) == set(rebuild(model.chexcut_spec).state_dict())  # the architecture's own keys
    assert not lora_layers(plain) and not any("lora" in k or "base_layer" in k for k in plain.state_dict())
    assert (from_file - unmerged).abs().max().item() <= 1e-5
    # the session goes on training the unmerged model: it is untouched by the merge
    after = model.state_dict()
    assert lora_layers(model) and all(torch.equal(before[k], after[k]) for k in before)


def test_the_merge_is_w_plus_b_a():
    """peft's merge, checked by hand on the Linear layers: W' = W + (alpha / r) B A with alpha = r."""
    model = _model("test_vit", 1)
    apply_adapt(model, model.chexcut_spec, "lora:2")
    _train_a_few_steps(model, steps=2)
    plain = merged(model)
    for name in lora_layers(model):
        layer = model.get_submodule(name)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        want = layer.base_layer.weight + b @ a
        assert torch.allclose(plain.get_submodule(name).weight, want, atol=1e-6), name


def test_without_peft_it_is_one_line(phantom, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if the extra were not installed
    out = tmp_path / "r"
    code, _, err = run_cli("finetune", "resnet18", "--drop", "2", "--weights", "none", "--data", phantom, "--out", out,
                           "--adapt", "lora:8", "--device", "cpu", "-q")
    assert code == 2 and err.count("\n") == 1 and "--adapt lora:8 needs peft: pip install 'chexcut[lora]'" in err
    assert not out.exists()
    code, _, err = run_cli("inspect", "resnet18", "--adapt", "lora:2")
    assert code == 2 and err.count("\n") == 1 and "needs peft" in err
    model = _model("resnet18", 2)
    with pytest.raises(ChexcutError, match="needs peft"):
        apply_adapt(model, model.chexcut_spec, "lora:8")


@pytest.mark.parametrize("arch, drop", [("resnet18", 2), ("test_vit", 3)])
def test_a_lora_run_records_what_it_adapts_and_evaluate_reads_its_model_file(arch, drop, phantom, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli("finetune", arch, "--drop", str(drop), "--weights", "none", "--data", phantom, "--out", out,
                           "--adapt", "lora:4", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                           "--workers", "0", "--max-steps", "3", "--val-every", "3", "--device", "cpu")
    assert code == 0, err
    assert "--adapt lora:4: " in err and "parameters trained" in err
    config = json.loads((out / "config.json").read_text())
    resolved = config["resolved"]
    assert config["train"]["adapt"] == "lora:4" and 0 < resolved["trainable_params"] < resolved["total_params"]
    model = load_model(out / "best.safetensors")  # the architecture's plain state dict, LoRA merged in
    assert set(model.state_dict()) == set(rebuild(model.chexcut_spec).state_dict())
    layers = dict(model.named_modules())
    assert resolved["adapted_modules"] and all(type(layers[m]) in (nn.Linear, nn.Conv2d)
                                               for m in resolved["adapted_modules"])
    assert resolved["skipped_modules"] == {}
    ckpt = torch.load(out / "last.ckpt", weights_only=True)["model"]  # the checkpoint keeps A and B unmerged
    assert any(".lora_A." in k for k in ckpt) and any(".lora_B." in k for k in ckpt)
    code, stdout, err = run_cli("evaluate", out, "--data", phantom, "--bootstrap", "20", "--json", "-",
                                "--workers", "0")
    assert code == 0, err
    assert "mean_competition" in json.loads(stdout)


def test_a_lora_run_resumes_exactly(phantom, tmp_path):
    from chexcut.data.tables import DataOptions
    from chexcut.training.config import Run
    from chexcut.training.loop import finetune

    def cfg(steps):
        return TrainConfig.from_recipe("paper", image_size=32, batch_size=8, epochs=1, val_every=2, workers=0,
                                       log_every=1, device="cpu", max_steps=steps, adapt="lora:4", lr=1e-2)

    source = {"arch": "test_vit", "drop": 4, "weights": "none"}
    finetune(Run(tmp_path / "a", phantom, DataOptions(), cfg(5), source))
    finetune(Run(tmp_path / "b", phantom, DataOptions(), cfg(3), source))
    finetune(Run(tmp_path / "b", phantom, DataOptions(), cfg(5), {}, resume=True))
    a, b = (torch.load(tmp_path / d / "last.ckpt", weights_only=True)["model"] for d in "ab")
    assert set(a) == set(b) and any(".lora_B." in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)  # and LoRA did train: B left zero
    assert any(v.abs().sum() > 0 for k, v in first["model"].items() if ".lora_B." in k)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["adapted_modules"]


def test_inspect_lists_the_layers_lora_would_adapt(tmp_path):
    code, out, err = run_cli("inspect", "test_vit", "--image-size", "32", "--adapt", "lora:8", "--json", "-")
    assert code == 0, err
    listing = json.loads(out)["adapt"]
    model = _model("test_vit", 0)
    linears = {n: m for n, m in model.named_modules() if n.startswith("blocks.") and isinstance(m, nn.Linear)}
    assert [r["module"] for r in listing["adapted_modules"]] == list(linears)  # qkv, proj, fc1, fc2 of each layer
    assert [r["lora_params"] for r in listing["adapted_modules"]] == [_lora_size(m, 8) for m in linears.values()]
    assert [r["block"] for r in listing["adapted_modules"]] == [int(n.split(".")[1]) + 1 for n in linears]
    assert listing["adapt"] == "lora:8" and listing["skipped_modules"] == {}
    path = save_model(_model("resnet18", 2), tmp_path / "m.safetensors")  # a model file: its own (truncated) blocks
    code, out, err = run_cli("inspect", path, "--adapt", "lora:2", "--json", "-")
    assert code == 0, err
    assert {r["block"] for r in json.loads(out)["adapt"]["adapted_modules"]} == {1, 2}
    code, out, err = run_cli("inspect", "resnet18", "--adapt", "lora:2")
    assert code == 0 and "layer1.0.conv1" in out and "Conv2d(64, 64, 3x3)" in out
    code, _, err = run_cli("inspect", "resnet18", "--adapt", "lora:0")
    assert code == 2 and "--adapt 'lora:0'" in err and err.count("\n") == 1
