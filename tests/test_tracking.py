"""MLflow tracking (the chexcut[track] extra): a tracked 2-run phantom study read back with MLflow's own client,
a resumed run that continues its MLflow run, a failing store that only warns, and a base install without it."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, run_cli

from chexcut.errors import ChexcutError

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

# every training setting (TrainConfig's fields with a value), the model's identity, the data and versions
PARAMS = {"arch", "drop", "weights", "in_chans", "seed", "recipe", "optimizer", "schedule", "warmup", "weight_decay",
          "image_size", "resize", "batch_size", "lr", "epochs", "val_every", "precision", "channels_last", "compile",
          "workers", "log_every", "precise_bn", "views", "uncertain", "blank", "valid_frac", "labels", "data_dir",
          "data_fingerprint", "version_chexcut", "version_torch", "version_torchvision", "version_timm"}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("trackdata")
    make_phantom(d / "ph", n=400, image_size=32, seed=0)
    return d / "ph"


TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "32", "--workers", "0", "--val-every", "4",
         "--log-every", "2"]


def test_a_tracked_study_reads_back_in_mlflow(phantom, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, out, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "st", "--archs", "resnet18",
                           "--weights", "none", "--drops", "1,2", "--bootstrap", "200", "--track", db, *TRAIN,
                           "--in-chans", "1", "--track-tag", "team=cxr")
    assert rc == 0, err
    env = dict(os.environ, PYTHONPATH=str(REPO), CHEXCUT=f"{sys.executable} -m chexcut")
    p = subprocess.run(["bash", str(tmp_path / "st" / "run.sh")], env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    client = MlflowClient(db)
    exp = client.get_experiment_by_name("st")
    assert exp is not None and [e.name for e in client.search_experiments() if e.name != "Default"] == ["st"]
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["resnet18-none-d1-s0", "resnet18-none-d2-s0"]
    for r in runs:
        run_dir = tmp_path / "st" / "runs" / r.info.run_name
        assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == r.info.run_id
        assert PARAMS <= set(r.data.params) and r.info.status == "FINISHED"
        assert r.data.params["drop"] == r.info.run_name[-4] and r.data.params["arch"] == "resnet18"
        assert r.data.tags["chexcut.grid_cell"] == f"resnet18/none/drop{r.data.params['drop']}"
        # finetune options given to `study plan` reach every run: a grayscale model, the plan's tag
        assert r.data.params["in_chans"] == "1" and r.data.tags["team"] == "cxr"
        assert json.loads((run_dir / "config.json").read_text())["model"]["in_chans"] == 1
        metrics = pd.read_csv(run_dir / "metrics.csv")
        validations = metrics.dropna(subset=["val_mean_auroc"])
        history = client.get_metric_history(r.info.run_id, "val_mean_auroc")
        assert [m.step for m in history] == list(validations["step"]) and len(history) >= 2
        assert [m.value for m in history] == pytest.approx(list(validations["val_mean_auroc"]))
        assert len(client.get_metric_history(r.info.run_id, "val_auroc/Edema")) == len(history)
        ev = json.loads((run_dir / "eval.json").read_text())
        m = r.data.metrics
        for part in ("auroc", "ci_low", "ci_high"):
            assert m[f"eval_mean_competition_{part}"] == pytest.approx(ev["mean_competition"][part])
        assert m["model_params"] > 0 and m["model_macs"] > 0 and m["best_step"] >= 1
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"eval.json", "config.json", "metrics.csv", "best.safetensors"} <= artifacts


def test_a_resumed_run_continues_its_mlflow_run_and_a_failing_store_only_warns(phantom, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    rc, out, err = run_cli("finetune", "resnet18", "--drop", "2", "--weights", "none", "--data", phantom, "--out",
                           run, "--max-steps", "4", "--track", db, "--track-no-models", *TRAIN)
    assert rc == 0, err
    first = json.loads((run / "mlflow.json").read_text())["run_id"]
    rc, out, err = run_cli("finetune", "--resume", run, "--max-steps", "1000")  # no --track: the run's own record
    assert rc == 0, err
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == first
    client = MlflowClient(db)
    steps = [m.step for m in client.get_metric_history(first, "train_loss")]
    assert steps == list(pd.read_csv(run / "metrics.csv")["step"]) and len(set(steps)) == len(steps)
    assert max(steps) > 4 and client.get_run(first).info.status == "FINISHED"
    assert "best.safetensors" not in {a.path for a in client.list_artifacts(first)}
    # a re-evaluation of the run updates the same MLflow run
    rc, out, err = run_cli("evaluate", run, "--bootstrap", "50", "--json", run / "eval.json", "--quiet")
    assert rc == 0, err
    assert "eval_mean_competition_auroc" in client.get_run(first).data.metrics
    assert len(client.search_runs([client.get_experiment_by_name("chexcut").experiment_id])) == 1
    # a store that cannot be written: one warning, the run trains and finishes
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, out, err = run_cli("finetune", "resnet18", "--drop", "2", "--weights", "none", "--data", phantom, "--out",
                           tmp_path / "run2", "--max-steps", "2", "--track", f"sqlite:///{blocker}/mlflow.db", *TRAIN)
    assert rc == 0, err
    assert err.count("MLflow tracking at") == 1 and "goes on without tracking" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run2" / "state.json").read_text())["status"] == "paused"  # at --max-steps 2
    # another store for a tracked run: refused (mlflow.json keeps the link to its training)
    rc, _, err = run_cli("evaluate", run, "--bootstrap", "0", "--track", f"sqlite:///{tmp_path / 'other.db'}")
    assert rc == 2 and "would lose that link" in err and err.count("\n") == 1, err


def test_a_server_with_nothing_listening_never_holds_a_run(phantom, tmp_path):
    """--track http://127.0.0.1:PORT with nothing listening: one warning, the run trains to its end and a later
    evaluate of it goes on too (MLflow's own retries would hold each for minutes). A real process, with a deadline."""
    import socket

    from conftest import run_process

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    rc, _, err = run_process("finetune", "resnet18", "--drop", "3", "--weights", "none", "--data", phantom, "--out",
                             tmp_path / "run", "--max-steps", "2", "--track", f"http://127.0.0.1:{port}", *TRAIN,
                             timeout=120)
    assert rc == 0 and err.count("MLflow tracking at") == 1 and "goes on without tracking" in err, err
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 2
    rc, _, err = run_process("evaluate", tmp_path / "run", "--bootstrap", "0", "--track", f"http://127.0.0.1:{port}",
                             "-q", timeout=120)
    assert rc == 0 and "goes on without tracking" in err, err


def test_a_folder_store_is_a_sqlite_database_in_that_folder(tmp_path):
    """MLflow 3 refuses folder stores: --track FOLDER keeps FOLDER/mlflow.db (the README's promise holds)."""
    from chexcut.tracking import Tracker, absolute_uri, tracking_from

    assert absolute_uri(str(tmp_path / "store")) == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    tracker = Tracker(tracking_from(str(tmp_path / "store")), run).start(reopen=False)
    assert tracker.run_id is not None and (tmp_path / "store" / "mlflow.db").is_file()


def test_without_the_extra_one_line_and_no_import(monkeypatch):
    from chexcut import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ChexcutError, match=r"pip install 'chexcut\[track\]'"):
        tracking.tracking_from("sqlite:///x.db")
    assert tracking.tracking_from(None) is None  # no URI, no environment variable: no tracking, no import
    code = ("import sys, chexcut.tracking, chexcut.cli, chexcut.training.loop, chexcut.evaluation.orchestrate; "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(
        os.environ, PYTHONPATH=str(REPO))).stdout.strip()
    assert out == "False"


def test_a_benched_run_logs_its_latency(tmp_path, monkeypatch):
    """bench.json is read as the report reads it (batch-1 median latency, throughput)."""
    from chexcut import tracking

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"arch": "resnet18", "drop": 1}, "train": {"seed": 0}}))
    (run / "bench.json").write_text(json.dumps({"device_name": "cpu", "levels": [
        {"drop": 1, "latency_ms": {"median": 12.5}, "throughput_img_s": 80.0}]}))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = {"n": 10, "bootstrap": 0, "ci": 0.95, "seed": 0, "cluster": "patient", "labels": [],
              "mean_competition": {"auroc": 0.8, "ci_low": 0.7, "ci_high": 0.9, "labels": 5}, "mean_all": None,
              "competition_labels": [], "warnings": [], "compare": None}  # an evaluation, as the schema has it
    tracking.log_evaluation(run, result, uri=db)
    rid = json.loads((run / "mlflow.json").read_text())["run_id"]
    m = MlflowClient(db).get_run(rid).data.metrics
    assert m["bench_latency_ms"] == 12.5 and m["bench_throughput_img_s"] == 80.0
    assert m["eval_mean_competition_ci_low"] == 0.7
