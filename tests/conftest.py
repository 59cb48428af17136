import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALCXR = REPO.parent / "shared" / "realcxr-sample"

# Tests never touch the network: any hub download attempt must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (-n 2 on two cores) each worker computes on one thread: two workers of two threads each
# would oversubscribe the cores. Set before torch is imported; subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Commands run in-process (run_cli): rich's consoles read the width once, when chexcut.cli.ui is first imported.
os.environ["COLUMNS"] = "200"
# A private chexcut cache per test session (anatomy cache, etc.), removed when the session ends (pytest-xdist's
# workers inherit it from the controller, which made it and removes it).
if "CHEXCUT_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["CHEXCUT_CACHE"] = tempfile.mkdtemp(prefix="chexcut-cache-")
    atexit.register(shutil.rmtree, os.environ["CHEXCUT_CACHE"], ignore_errors=True)


# Tests whose verdict rests on what a model learned draw their data and seeds from this offset: CI runs 0; a
# developer checks the margin on other seeds with CHEXCUT_TEST_SEED=1..4 (see docs/development.md, "Tests").
TEST_SEED = int(os.environ.get("CHEXCUT_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """The shared phantom data set: 200 images at 48 px in the CheXpert layout, one per worker. Read-only: a test
    that changes it copies it first (shutil.copytree). A module that needs other data defines its own."""
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("phantom")
    make_phantom(d, n=200, image_size=48, seed=4)
    return d


@pytest.fixture(scope="session")
def trained_run(phantom, tmp_path_factory):
    """One short finetune of the shared phantom (resnet18 drop 2, 4 steps at 40 px, validated at step 4: a best
    model, a checkpoint, metrics) for every test that only needs "a run". Read-only: use ``run_copy`` to change it."""
    from chexcut.data.tables import DataOptions
    from chexcut.training.config import Run, TrainConfig
    from chexcut.training.loop import finetune

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig.from_recipe("paper", image_size=40, batch_size=8, epochs=2, val_every=4, workers=0, log_every=2,
                                  device="cpu", max_steps=4)
    finetune(Run(run_dir, phantom, DataOptions(), cfg, {"arch": "resnet18", "drop": 2, "weights": "none"}))
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the shared run, for a test that changes it."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch/HF cache so 'imagenet' weights are never found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def run_cli(*args, cwd=None):
    """Run ``chexcut.cli.main(argv)`` in this process, as the console script would: (exit code, stdout, stderr).

    Every check of a user error's line and exit code goes through here; a real process (:func:`run_process`) only
    where the process itself is under test (signals, kill -9, torchrun, imports, pipes). The process-wide state a
    command may change (cwd, signal handlers, torch's threads, the signal module's flags) is restored after it."""
    import contextlib
    import io
    import signal

    import torch

    from chexcut import signals
    from chexcut.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, here, state = torch.get_num_threads(), os.getcwd(), dict(signals._state)
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)
        signals._state.clear()
        signals._state.update(state)
    return code, out.getvalue(), err.getvalue()


def run_process(*args, cwd=None, env=None, timeout=600):
    """Run ``python -m chexcut ARGS`` in a real subprocess: (exit code, stdout, stderr). Only for tests of the
    process itself (signals, exit status of the interpreter, imports, pipes); everything else uses run_cli."""
    import subprocess

    env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "chexcut", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class Evil:
    """A pickle payload whose loading would create ``marker``: proof that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_pickle(path, marker, wrap=lambda evil: evil):
    import pickle

    Path(path).write_bytes(pickle.dumps(wrap(Evil(marker))))
    return Path(path)


def public_truth(folder, rng, n: int = 500):
    """``groundtruth.csv`` shaped like rajpurkarlab/cheXpert-test-set-labels (a ``Study`` key, 14 labels, one study
    per patient) in ``folder``, labels drawn from ``rng``: (study keys, truth DataFrame)."""
    import pandas as pd

    from chexcut.labels import CHEXPERT_LABELS

    study = [f"CheXpert-v1.0/test/patient{64741 + i}/study1" for i in range(n)]
    truth = pd.DataFrame({"Study": study})
    for lab in CHEXPERT_LABELS:
        truth[lab] = (rng.random(n) < 0.25).astype(int)
    truth.to_csv(Path(folder) / "groundtruth.csv", index=False)
    return study, truth
