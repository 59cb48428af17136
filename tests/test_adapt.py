"""finetune --adapt: what is trained (full, probe, last:K), and that exactly that changes (lora:R: test_lora.py)."""

import json

import pytest
import torch
from conftest import run_cli

from chexcut.errors import ChexcutError
from chexcut.models.surgery import truncate
from chexcut.training.adapt import apply_adapt, kept_block_parameters, parse_adapt, train_mode
from chexcut.training.config import TrainConfig
from chexcut.training.session import make_optimizer


@pytest.mark.parametrize("text, shown", [("full", "full"), ("probe", "probe"), ("last:2", "last:2"),
                                         (" LAST:1 ", "last:1")])
def test_parse(text, shown):
    assert str(parse_adapt(text)) == shown


@pytest.mark.parametrize("text", ["last:0", "last:", "last:x", "lora", "half", ""])
def test_parse_refuses(text):
    with pytest.raises(ChexcutError, match="--adapt"):
        parse_adapt(text)


def _step(model, size: int):
    """One Adam step on random images; returns {name: changed?} and the BatchNorm running means before/after."""
    torch.manual_seed(0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(TrainConfig(lr=1e-2), model)
    train_mode(model)
    loss = model(torch.randn(4, 3, size, size)).square().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before}


@pytest.mark.parametrize("arch, drop, size, adapt", [
    ("resnet18", 1, 32, "last:1"), ("resnet18", 0, 32, "probe"), ("densenet121", 0, 32, "last:1"),
    ("test_vit", 1, 32, "last:2"), ("test_vit", 0, 32, "probe")])
def test_exactly_the_adapted_blocks_and_the_head_change(arch, drop, size, adapt):
    model = truncate(arch, drop=drop, weights="none", image_size=size, seed=0)
    spec = model.chexcut_spec
    adapted = apply_adapt(model, spec, adapt)
    trainable, total = adapted.trainable, adapted.total
    blocks = kept_block_parameters(model, spec)
    a = parse_adapt(adapt)
    trained_blocks = set().union(*blocks[len(blocks) - a.blocks:]) if a.blocks else set()
    names = {id(p): n for n, p in model.named_parameters()}
    expected_trained = {n for p, n in names.items() if p in trained_blocks}
    in_blocks = {names[p] for p in set().union(*blocks)}
    changed = _step(model, size)
    params = dict(model.named_parameters())
    moved = {n for n in params if changed[n]}
    head = moved - in_blocks
    assert head and moved == expected_trained | head  # the head (what follows the blocks) and the adapted blocks
    assert all(params[n].requires_grad == (n in moved) for n in params)
    assert trainable == sum(params[n].numel() for n in moved) and total == sum(p.numel() for p in params.values())
    frozen_stats = [k for k in changed if k.endswith("running_mean") and k.rsplit(".", 1)[0] + ".weight" in params
                    and k.rsplit(".", 1)[0] + ".weight" not in moved]
    assert not any(changed[k] for k in frozen_stats)  # a frozen block's BatchNorm stays in eval mode


def test_full_trains_every_parameter():
    model = truncate("resnet18", drop=2, weights="none", image_size=32, seed=0)
    adapted = apply_adapt(model, model.chexcut_spec, "full")
    assert adapted.trainable == adapted.total and all(_step(model, 32)[n] for n, _ in model.named_parameters())


def test_a_run_records_what_it_trains_and_resume_keeps_it(phantom, tmp_path):
    from chexcut.training.reproduce import finetune_argv

    out = tmp_path / "r"
    code, _, err = run_cli("finetune", "resnet18", "--drop", "2", "--weights", "none", "--data", phantom, "--out", out,
                           "--adapt", "last:1", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                           "--workers", "0", "--max-steps", "2", "--val-every", "2", "--device", "cpu", "-q")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["adapt"] == "last:1"
    assert 0 < config["resolved"]["trainable_params"] < config["resolved"]["total_params"]
    argv = finetune_argv(config, tmp_path / "again")
    assert argv[argv.index("--adapt") + 1] == "last:1"
    code, _, err = run_cli("finetune", "--resume", out, "--adapt", "full")
    assert code == 2 and "--adapt cannot change on --resume" in err
    code, _, err = run_cli("finetune", "resnet18", "--drop", "2", "--weights", "none", "--data", phantom, "--out",
                           tmp_path / "r2", "--adapt", "last:5", "--device", "cpu", "-q")
    assert code == 2 and "keeps 2 blocks" in err and err.count("\n") == 1
