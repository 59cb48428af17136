"""Nothing a user (or a cluster) can do ends in "internal error" or a silently wrong number."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from chexcut.data.chexpert import DataOptions
from chexcut.errors import ChexcutError
from chexcut.train import Run, RunLock, TrainConfig, finetune
from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("phantom")
    make_phantom(d, n=200, image_size=48, seed=4)
    return d


def small(**kw):
    base = dict(image_size=40, batch_size=8, epochs=2, val_every=4, workers=0, log_every=2, device="cpu")
    return TrainConfig.from_recipe("paper", **{**base, **kw})


SRC = {"arch": "resnet18", "drop": 2, "weights": "none"}


def _finetune_cmd(phantom, run_dir, *more):
    return [sys.executable, "-m", "chexcut", "finetune", "resnet18", "--drop", "2", "--weights", "none", "--data",
            str(phantom), "--out", str(run_dir), "--image-size", "40", "--batch-size", "8", "--epochs", "50",
            "--val-every", "3", "--log-every", "1", "--workers", "0", "--quiet", *more]


def _wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        time.sleep(0.1)
    assert path.exists()


# ----------------------------------------------------------------------------- signals and crashes

def test_sigterm_checkpoints_and_exits_143(phantom, tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.Popen(_finetune_cmd(phantom, run_dir), env=dict(os.environ, PYTHONPATH=str(REPO)))
    _wait_for(run_dir / "last.ckpt")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted"
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["step"] == state["step"]
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".lock").exists()


def test_kill_9_then_resume_logs_each_step_once_and_removes_stale_temp_files(phantom, tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.Popen(_finetune_cmd(phantom, run_dir), env=dict(os.environ, PYTHONPATH=str(REPO)))
    _wait_for(run_dir / "last.ckpt")
    time.sleep(2.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    (run_dir / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    (run_dir / ".lock").write_text("1\n")  # a lock file naming a live pid (1) blocks nothing: the kernel lock is gone
    step = torch.load(run_dir / "last.ckpt", weights_only=True)["step"]
    rc, _, err = run_cli("finetune", "--resume", run_dir, "--max-steps", str(step + 4), "--quiet")
    assert rc == 0, err
    steps = pd.read_csv(run_dir / "metrics.csv")["step"].tolist()
    assert steps == sorted(set(steps)) and steps[-1] == step + 4  # no step logged twice
    assert not list(run_dir.glob(".*.tmp"))


def test_resume_before_the_first_checkpoint_starts_from_config(phantom, tmp_path):
    run_dir = tmp_path / "run"
    finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=1, val_every=1000), SRC))
    (run_dir / "last.ckpt").unlink()  # as if killed before its first checkpoint
    result = finetune(Run.from_run_dir(run_dir, max_steps=3))
    assert result["step"] == 3


def test_damaged_checkpoint_is_named(phantom, tmp_path):
    run_dir = tmp_path / "run"
    finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=2), SRC))
    for junk in (b"", os.urandom(2000), b"PK\x03\x04" + os.urandom(100)):
        (run_dir / "last.ckpt").write_bytes(junk)
        rc, _, err = run_cli("finetune", "--resume", run_dir, "--max-steps", "4")
        assert rc == 2 and "last.ckpt is damaged" in err and "--force" in err and err.count("\n") == 1, err


def test_lock_is_a_kernel_lock(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    a.acquire()
    with pytest.raises(ChexcutError, match=f"pid {os.getpid()}"):
        b.acquire()
    a.release()
    b.acquire()  # free again at once
    b.release()


def test_a_run_without_an_evaluable_label_says_so(phantom, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    valid = data / "CheXpert-v1.0-small" / "valid.csv"
    df = pd.read_csv(valid)
    df["Edema"] = 0.0  # one class only in the validation set: Edema is never evaluable there
    df.to_csv(valid, index=False)
    run_dir = tmp_path / "run"
    opts = DataOptions(labels=("Edema",))
    result = finetune(Run(run_dir, data, opts, small(epochs=1, val_every=1000), {**SRC, "drop": 3}))
    assert result["status"] == "finished" and result["best"]["mean_auroc"] is None
    rc, _, err = run_cli("evaluate", run_dir)
    assert rc == 2 and "finished without a best model" in err and "evaluable" in err, err


# ----------------------------------------------------------------------------- full disks

def test_full_disk_is_one_line_and_keeps_the_checkpoint(phantom, tmp_path, monkeypatch):
    """A write wrapper raises ENOSPC when the next checkpoint is saved: exit 2, the previous one intact."""
    run_dir = tmp_path / "run"
    finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=4), SRC))
    before = (run_dir / "last.ckpt").read_bytes()
    code = ("import sys, torch, errno\nreal = torch.save\n"
            "def full(obj, f, *a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device', str(f))\n"
            "torch.save = full\nfrom chexcut.cli import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "finetune", "--resume", str(run_dir), "--max-steps", "8", "--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 2 and "no space left" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert (run_dir / "last.ckpt").read_bytes() == before and not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "state.json").read_text())["status"] == "stopped"


def test_prepare_reserves_its_cache_before_writing(phantom, tmp_path, monkeypatch):
    import chexcut.data.cache as cache

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    from chexcut.data.chexpert import load_split

    files = load_split(phantom, "all", DataOptions()).files
    with pytest.raises(ChexcutError, match="no room for the image cache .* MiB"):
        cache.prepare_cache(files, 32, folder=tmp_path / "c")
    monkeypatch.undo()
    got, stats = cache.prepare_cache(files, 32, folder=tmp_path / "c")  # resumes once there is room
    assert stats["decoded"] == len(files)


# ----------------------------------------------------------------------------- output paths and arguments

@pytest.mark.parametrize("args,msg", [
    (["phantom", "{file}"], "is a file"),
    (["prepare", "{data}", "--cache", "{file}"], "is a file"),
    (["study", "plan", "--data", "{data}", "--out", "{file}", "--archs", "resnet18"], "is a file"),
    (["report", "{data}", "--out", "{file}"], "is a file"),
    (["demo", "{file}", "--offline"], "is a file"),
    (["inspect", "resnet18", "--image-size", "0"], "too small"),
    (["truncate", "resnet18", "--labels", ",", "--weights", "none", "-o", "{tmp}/m.safetensors"], "label list is empty"),
    (["phantom", "{tmp}/ph", "--image-size", "100000"], "32..2048"),
])
def test_outputs_and_arguments_are_checked_before_work(phantom, tmp_path, args, msg):
    (tmp_path / "file").write_text("x")
    fill = {"file": tmp_path / "file", "data": phantom, "tmp": tmp_path}
    rc, out, err = run_cli(*[a.format(**fill) for a in args])
    assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert "━" not in err  # no progress bar before the error


def test_evaluate_checks_its_outputs_before_inference(phantom, tmp_path):
    run_dir = tmp_path / "run"
    finetune(Run(run_dir, phantom, DataOptions(), small(max_steps=4), SRC))
    for flag in ("--json", "--predictions-out", "--csv-out"):
        rc, _, err = run_cli("evaluate", run_dir, flag, tmp_path / "missing" / "x")
        assert rc == 2 and "does not exist" in err and flag in err and err.count("\n") == 1, err
        rc, _, err = run_cli("evaluate", run_dir, flag, tmp_path)
        assert rc == 2 and "is a folder" in err, err
