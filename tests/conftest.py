import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALCXR = REPO.parent / "shared" / "realcxr-sample"

# Tests never touch the network: any hub download attempt must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A private chexcut cache per test session (anatomy cache, etc.).
if "CHEXCUT_CACHE" not in os.environ:
    import tempfile

    os.environ["CHEXCUT_CACHE"] = tempfile.mkdtemp(prefix="chexcut-cache-")


# Tests whose verdict rests on what a model learned draw their data and seeds from this offset: CI runs 0; a
# developer checks the margin on other seeds with CHEXCUT_TEST_SEED=1..4 (see README, "Tests").
TEST_SEED = int(os.environ.get("CHEXCUT_TEST_SEED", "0"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch/HF cache so 'imagenet' weights are never found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess: (exit code, stdout, stderr)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "chexcut", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=600)
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
