"""Nothing a user (or a cluster) can do ends in "internal error" or a silently wrong number."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_cli

from chexcut.data.tables import DataOptions
from chexcut.errors import ChexcutError
from chexcut.training.config import Run, TrainConfig
from chexcut.training.lock import RunLock
from chexcut.training.loop import finetune


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


def test_damaged_checkpoint_is_named(run_copy):
    run_dir = run_copy
    for junk in (b"", os.urandom(2000), b"PK\x03\x04" + os.urandom(100)):
        (run_dir / "last.ckpt").write_bytes(junk)
        rc, _, err = run_cli("finetune", "--resume", run_dir, "--max-steps", "4")
        assert rc == 2 and "last.ckpt is damaged" in err and "--force" in err and err.count("\n") == 1, err
    # a run keeps its settings: a training option beside --resume is refused (it was ignored without a word)
    for option in (["--epochs", "9"], ["--lr", "0.1"], ["--no-compile"], ["--recipe", "fast"]):
        rc, _, err = run_cli("finetune", "--resume", run_dir, *option)
        flag = option[0].replace("--no-", "--")
        assert rc == 2 and f"{flag}" in err and "cannot change on --resume" in err and err.count("\n") == 1, err


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

def test_full_disk_is_one_line_and_keeps_the_checkpoint(run_copy, monkeypatch):
    """A write wrapper raises ENOSPC when the next checkpoint is saved: exit 2, the previous one intact."""
    run_dir = run_copy
    before = (run_dir / "last.ckpt").read_bytes()
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full)
    rc, _, err = run_cli("finetune", "--resume", run_dir, "--max-steps", "8", "--quiet")
    assert rc == 2 and "no space left" in err and err.count("\n") == 1, err
    assert (run_dir / "last.ckpt").read_bytes() == before and not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "state.json").read_text())["status"] == "stopped"


def test_prepare_reserves_its_cache_before_writing(phantom, tmp_path, monkeypatch):
    import chexcut.data.cache as cache

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    from chexcut.data.tables import load_split

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
    (["inspect", "resnet18", "--image-size", "0"], "'--image-size': Input should be greater than or equal to 16"),
    (["truncate", "resnet18", "--labels", ",", "--weights", "none", "-o", "{tmp}/m.safetensors"], "--labels ',' is an empty list"),
    (["phantom", "{tmp}/ph", "--image-size", "100000"], "'--image-size': Input should be less than or equal to 4096"),
    (["phantom", "{tmp}/ph", "--image-size", "3000"], "32..2048"),
])
def test_outputs_and_arguments_are_checked_before_work(phantom, tmp_path, args, msg):
    (tmp_path / "file").write_text("x")
    fill = {"file": tmp_path / "file", "data": phantom, "tmp": tmp_path}
    rc, out, err = run_cli(*[a.format(**fill) for a in args])
    assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert "━" not in err  # no progress bar before the error


def test_evaluate_checks_its_outputs_before_inference(trained_run, tmp_path):
    run_dir = trained_run
    for flag in ("--json", "--predictions-out", "--csv-out"):
        rc, _, err = run_cli("evaluate", run_dir, flag, tmp_path / "missing" / "x")
        assert rc == 2 and "does not exist" in err and flag in err and err.count("\n") == 1, err
        rc, _, err = run_cli("evaluate", run_dir, flag, tmp_path)
        assert rc == 2 and "is a folder" in err, err


def test_study_plan_checks_options_at_plan_time(phantom, tmp_path):
    base = ["study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "resnet18"]
    for extra, msg in ((["--recipe", "bogus"], "'bogus' is not one of"), (["--no-such-option", "1"], "No such option"),
                       (["--epochs", "0"], "'--epochs': Input should be greater than or equal to 1"), (["--drops", "99"], "no runs to plan")):
        rc, _, err = run_cli(*base, *extra)
        assert rc == 2 and msg in err and err.count("\n") == 1, err
        assert not (tmp_path / "s" / "plan.json").exists()
    rc, _, err = run_cli(*base, "--slurm", "--nodes", "2")
    assert rc == 0, err
    sbatch = (tmp_path / "s" / "study.sbatch").read_text()
    assert "--nodes=2" in sbatch and "srun torchrun --nnodes 2" in sbatch and "--rdzv-backend c10d" in sbatch
    rc, _, err = run_cli(*base)
    assert rc == 2 and "--force" in err


def test_duplicate_headers_rows_and_images_that_lie(phantom, tmp_path):
    from PIL import Image

    from chexcut.data.images import load_image
    from chexcut.data.tables import load_split

    base = phantom / "CheXpert-v1.0-small"
    df = pd.read_csv(base / "train.csv")
    (tmp_path / "dup_header.csv").write_text(df.to_csv(index=False).replace("Edema", "Cardiomegaly", 1))
    with pytest.raises(ChexcutError, match="'Cardiomegaly' more than once"):
        load_split(phantom, "all", DataOptions(csv=str(tmp_path / "dup_header.csv")))
    pd.concat([df, df.head(3)]).to_csv(tmp_path / "dup_rows.csv", index=False)
    with pytest.raises(ChexcutError, match="repeat an image path"):
        load_split(phantom, "all", DataOptions(csv=str(tmp_path / "dup_rows.csv")))
    big = tmp_path / "bomb.png"
    Image.new("L", (8000, 8000)).save(big)  # 64 million pixels: over the default limit
    with pytest.raises(ChexcutError, match="more than the limit"):
        load_image(big, 32)
    real = tmp_path / "real.png"
    Image.new("L", (4500, 4200)).save(real)  # a real radiograph's size passes
    assert load_image(real, 32).shape == (32, 32)
    absolute = df.head(20).copy()  # absolute paths elsewhere in a CSV: used as they are, with the permission
    absolute["Path"] = [str(phantom / p) for p in absolute["Path"]]
    absolute.to_csv(tmp_path / "abs.csv", index=False)
    with pytest.raises(ChexcutError, match="20 image paths lead outside the data folder"):
        load_split(tmp_path, "all", DataOptions(csv=str(tmp_path / "abs.csv"), views="all"))
    t = load_split(tmp_path, "all", DataOptions(csv=str(tmp_path / "abs.csv"), views="all", images_outside=True))
    assert all(os.path.isfile(f) for f in t.files)


def test_predictions_missing_a_competition_column(tmp_path):
    paths = [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(40)]
    rng = np.random.default_rng(0)
    comp = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    pd.DataFrame({"Path": paths, "Frontal/Lateral": "Frontal", **{c: rng.integers(0, 2, 40) for c in comp}}
                 ).to_csv(tmp_path / "valid.csv", index=False)
    pd.DataFrame({"Path": paths, **{c: rng.random(40) for c in comp[:4]}}).to_csv(tmp_path / "p.csv", index=False)
    rc, _, err = run_cli("evaluate", "--predictions", tmp_path / "p.csv", "--truth", tmp_path / "valid.csv")
    assert rc == 2 and "Pleural Effusion" in err and "--allow-missing" in err
    rc, out, err = run_cli("evaluate", "--predictions", tmp_path / "p.csv", "--truth", tmp_path / "valid.csv",
                           "--allow-missing", "--bootstrap", "0", "--json", "-")
    assert rc == 0 and json.loads(out)["mean_competition"]["labels"] == 4
    pd.DataFrame({"Path": []}).to_csv(tmp_path / "empty.csv", index=False)
    rc, _, err = run_cli("evaluate", "--predictions", tmp_path / "empty.csv", "--truth", tmp_path / "valid.csv")
    assert rc == 2 and "no rows" in err


def test_damaged_model_spec_and_run_files(tmp_path, phantom):
    from safetensors.torch import load_file, save_file

    import chexcut

    good = tmp_path / "m.safetensors"
    chexcut.save_model(chexcut.truncate("resnet18", drop=3, weights="none"), good)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        spec = json.loads(f.metadata()["chexcut"])
    tensors = load_file(str(good))
    cases = [({"arch": 5}, "should be str"), ({"labels": "Edema"}, "should be list"),
             ({"format_version": "one"}, "should be int"), ({"drop": 9}, "not a truncation"),
             ({"arch": None}, "no 'arch'"), ({"resize": "stretch"}, "resize"), ({"image_size": "320px"}, "image_size")]
    for change, msg in cases:
        bad = {k: v for k, v in {**spec, **change}.items() if v is not None}  # None: the key is missing
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"chexcut": json.dumps(bad)})
        for cmd in (["inspect", tmp_path / "bad.safetensors"], ["evaluate", tmp_path / "bad.safetensors", "--data", phantom]):
            rc, _, err = run_cli(*cmd)
            assert rc == 2 and "damaged chexcut metadata" in err and msg in err and err.count("\n") == 1, (cmd, err)
    # report: a corrupt plan.json, and a run whose config.json lacks its model (listed, not a traceback)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "plan.json").write_text("{not json")
    rc, _, err = run_cli("report", tmp_path / "study")
    assert rc == 2 and "plan.json" in err


def test_a_decoding_workers_error_ends_the_command(phantom, tmp_path):
    """A zero-byte image read by a DataLoader worker: one line and exit 2 for evaluate and finetune, and the
    process ends (it used to print the worker's traceback and hang at exit: multiprocessing waits for workers that
    ignore SIGTERM). A real process: the hang is the interpreter's exit."""
    import shutil

    from conftest import run_process

    data = Path(shutil.copytree(phantom, tmp_path / "data"))
    broken = sorted((data / "CheXpert-v1.0-small" / "valid").rglob("*.jpg"))[0]
    broken.write_bytes(b"")
    model = tmp_path / "m.safetensors"
    assert run_cli("truncate", "resnet18", "--drop", "3", "--weights", "none", "--image-size", "32", "-o", model,
                   "-q")[0] == 0
    for args in (["evaluate", model, "--data", data, "--bootstrap", "0", "--workers", "2", "-q"],
                 ["finetune", model, "--data", data, "--out", tmp_path / "r", "--workers", "2", "--epochs", "1",
                  "--image-size", "32", "-q"]):
        rc, _, err = run_process(*args, timeout=180)
        assert rc == 2 and err.count("\n") == 1 and "cannot read image" in err and broken.name in err, err
        assert "Traceback" not in err and "DataLoader worker" not in err
