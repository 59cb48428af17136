"""finetune: learns, writes loadable outputs, resumes bit-exactly, survives kill -9, DDP, lock, NaN stop."""

import json

import pandas as pd
import pytest
import torch
from conftest import run_cli

import chexcut
from chexcut.data.tables import DataOptions
from chexcut.errors import ChexcutError
from chexcut.training.config import Run, TrainConfig
from chexcut.training.lock import RunLock
from chexcut.training.loop import finetune


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("phantom")
    from conftest import TEST_SEED

    make_phantom(d, n=300, image_size=64, seed=3 + TEST_SEED)
    return d


def small(**kw):
    base = dict(image_size=48, batch_size=16, epochs=2, val_every=10, workers=0, log_every=5, device="cpu")
    return TrainConfig.from_recipe("paper", **{**base, **kw})


def src(**kw):
    return {"arch": "resnet18", "drop": 2, "weights": "none", **kw}


def test_a_short_run_learns_and_writes_loadable_outputs(phantom, tmp_path):
    run_dir = tmp_path / "run"
    from conftest import TEST_SEED

    cfg = small(epochs=6, lr=1e-3, val_every=1000, image_size=64, seed=TEST_SEED)
    result = finetune(Run(run_dir, phantom, DataOptions(uncertain="ignore"), cfg, src()))
    assert result["status"] == "finished"
    print("best mean AUROC", result["best"]["mean_auroc"], "margin", result["best"]["mean_auroc"] - 0.65)
    assert result["best"]["mean_auroc"] > 0.65, result["best"]  # clearly above chance after ~80 steps
    for name in ("config.json", "metrics.csv", "last.ckpt", "best.safetensors", "valid_predictions.csv", "state.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["lr"] == 1e-3 and config["data"]["uncertain"] == "ignore"
    assert len(config["data"]["fingerprint"]) == 64 and "torch" in config["versions"]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert {"step", "epoch", "images_seen", "train_loss", "images_per_s", "val_mean_auroc"} <= set(metrics.columns)
    assert metrics["val_mean_auroc"].notna().sum() == 6  # one validation per epoch end
    model = chexcut.load_model(run_dir / "best.safetensors")
    assert model.chexcut_spec.training["step"] == result["best"]["step"]
    preds = pd.read_csv(run_dir / "valid_predictions.csv")
    assert list(preds.columns) == ["Path", *model.chexcut_spec.labels]
    assert not (run_dir / ".lock").exists()
    # the run directory is what evaluate and inspect take
    rc, out, err = run_cli("evaluate", run_dir, "--data", phantom, "--bootstrap", "50", "--json", "-",
                           "--workers", "0", "--uncertain", "ignore")
    assert rc == 0, err
    assert abs(json.loads(out)["mean_competition"]["auroc"] - result["best"]["mean_auroc"]) < 0.2
    rc, out, err = run_cli("inspect", run_dir / "best.safetensors", "--json", "-")
    assert rc == 0 and json.loads(out)["model"]["arch"] == "resnet18"


def _weights(run_dir):
    return torch.load(run_dir / "last.ckpt", weights_only=True)["model"]


def test_resume_is_bit_exact(phantom, tmp_path):
    opts = DataOptions()
    straight = finetune(Run(tmp_path / "a", phantom, opts, small(max_steps=23), src()))
    assert straight["step"] == 23
    first = finetune(Run(tmp_path / "b", phantom, opts, small(max_steps=9), src()))
    assert first["status"] == "paused" and first["step"] == 9
    again = finetune(Run(tmp_path / "b", phantom, opts, small(max_steps=23), {}, resume=True))
    assert again["step"] == 23
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lock_refuses_a_second_finetune(phantom, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir)
    lock.acquire()  # this (live) process holds it
    try:
        with pytest.raises(ChexcutError, match="in use"):
            finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=2), src(), force=True))
    finally:
        lock.release()
    finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=2), src()))
    with pytest.raises(ChexcutError, match="--force"):
        finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=2), src()))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(phantom, tmp_path, monkeypatch):
    import chexcut.training.loop as train

    real, calls = train.masked_bce, []

    def poisoned(logits, targets, mask):  # the loss turns NaN at step 7, after checkpoints at 2, 4, 6
        calls.append(1)
        loss = real(logits, targets, mask)
        return loss * float("nan") if len(calls) >= 7 else loss

    monkeypatch.setattr(train, "masked_bce", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(ChexcutError, match="loss became nan at step 7.*last good checkpoint"):
        finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=40, val_every=2), src()))
    kept = torch.load(run_dir / "last.ckpt", weights_only=True)
    assert kept["step"] == 6
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "stopped" and "step 7" in state["reason"]
    assert not (run_dir / ".lock").exists()


@pytest.mark.parametrize("args,msg", [
    (["--batch-size", "60000"], "larger than the training set"),
    (["--image-size", "20", "--drop", "0", "--epochs", "1"], None),
    (["--precision", "fp16"], "needs a GPU"),
    (["--recipe", "slow"], "--recipe"),
])
def test_bad_input(phantom, tmp_path, args, msg):
    base = ["finetune", "resnet18", "--weights", "none", "--data", phantom, "--out", tmp_path / "r", "--workers", "0",
            "--image-size", "48", "--device", "cpu", "-q"]
    rc, out, err = run_cli(*base, *args)
    if msg is None:  # 20 px is small, yet enough for a resnet: the run trains and keeps a best model
        assert rc == 0, err
        state = json.loads((tmp_path / "r" / "state.json").read_text())
        assert state["status"] == "finished" and (tmp_path / "r" / "best.safetensors").is_file()
        assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["image_size"] == 20
        return
    assert rc == 2 and msg in err and err.count("\n") == 1, err


def test_unwritable_out_and_missing_data(phantom, tmp_path):
    rc, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--data", tmp_path / "nope", "--out", tmp_path / "r")
    assert rc == 2 and "does not exist" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--data", phantom, "--out", tmp_path / "file")
    assert rc == 2 and "not a folder" in err


def test_resume_is_bit_exact_from_the_cache(phantom, tmp_path):
    """The same with the prepared cache (threaded loader) instead of per-image decoding."""
    from chexcut.data.cache import prepare_cache
    from chexcut.data.tables import load_split

    t = load_split(phantom, "all", DataOptions())
    prepare_cache(t.files, 48, folder=tmp_path / "cache", workers=1)
    opts = DataOptions()
    cfg = dict(workers=2)
    finetune(Run(tmp_path / "a", phantom, opts, small(max_steps=15, **cfg), src(), cache=tmp_path / "cache"))
    finetune(Run(tmp_path / "b", phantom, opts, small(max_steps=6, **cfg), src(), cache=tmp_path / "cache"))
    finetune(Run(tmp_path / "b", phantom, opts, small(max_steps=15, **cfg), {}, resume=True, cache=tmp_path / "cache"))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["data"]["cache"] == str(tmp_path / "cache")


def test_precise_bn_sets_exact_running_statistics_and_keeps_the_rng():
    from chexcut.training.batchnorm import reestimate_batchnorm

    model = chexcut.truncate("resnet18", drop=3, weights="none")
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1 for _ in range(3)]
    seen = []
    hook = model.stem[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    state = torch.get_rng_state()
    assert reestimate_batchnorm(model, batches) == 5  # bn1 + the two blocks' four
    hook.remove()
    assert torch.equal(state, torch.get_rng_state()) and not model.training
    x = torch.cat(seen)  # the first BatchNorm's inputs: its running mean is their exact mean per channel
    assert torch.allclose(model.stem[1].running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert model.stem[1].momentum == 0.1


def test_precise_bn_run_resumes_bit_exactly(phantom, tmp_path):
    straight = tmp_path / "straight"  # validations (and BatchNorm re-estimates) at steps 10 and 20
    finetune(Run(straight, phantom, DataOptions(), small(max_steps=20, precise_bn=40), src()))
    paused = tmp_path / "paused"
    finetune(Run(paused, phantom, DataOptions(), small(max_steps=12, precise_bn=40), src()))
    finetune(Run.from_run_dir(paused, max_steps=20))
    a, b = _weights(straight), _weights(paused)
    assert all(torch.equal(a[k], b[k]) for k in a)
