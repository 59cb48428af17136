"""Signals as a cluster sends them: SIGTERM (scancel, a time limit, preemption) and SIGINT to the *whole process
group* of a finetune with DataLoader worker processes, at several moments (mid-epoch, during validation,
during a checkpoint write). The run ends in a checkpoint at the step it stopped, state.json "interrupted" at
that step, one line on stderr, exit 143 (130); ``--resume`` then continues bit-exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

# Runs the real CLI, with a pause (and a marker file) placed at one moment of the run, so that the test's
# signal lands there: the first validation, or the second checkpoint's torch.save.
WRAPPER = r'''
import os, sys, time
from pathlib import Path
marker, where = Path(os.environ["MARKER"]), os.environ.get("PAUSE_AT", "")
calls = {"n": 0}

def pausing(fn, nth):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            marker.write_text(where)
            time.sleep(3)
        return fn(*a, **k)
    return wrapped

if where == "validation":
    import chexcut.training.loop as loop
    loop.validate = pausing(loop.validate, 1)
elif where == "checkpoint":
    import torch
    torch.save = pausing(torch.save, 2)
from chexcut.cli import main
sys.exit(main())
'''

ARGS = ["resnet18", "--drop", "2", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--val-every",
        "4", "--log-every", "2", "--workers", "2", "--device", "cpu", "--quiet"]
STEPS = 14


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A phantom and a straight run to STEPS (the reference weights)."""
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("signals")
    make_phantom(d / "ph", n=160, image_size=40, seed=2)
    (d / "wrapper.py").write_text(WRAPPER)
    p = subprocess.run([sys.executable, "-m", "chexcut", "finetune", *ARGS, "--data", str(d / "ph"), "--out",
                        str(d / "straight"), "--max-steps", str(STEPS)], env=_env(d), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    return d


def _env(d, **more):
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TMPDIR=str(d / "tmp"), **more)


def _wait(path, p, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        if p.poll() is not None:
            pytest.fail(f"the run exited ({p.returncode}) before {path.name}: {p.stderr.read()[-2000:]}")
        if time.time() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("moment,sig", [("mid-epoch", signal.SIGTERM), ("validation", signal.SIGTERM),
                                        ("checkpoint", signal.SIGTERM), ("mid-epoch", signal.SIGINT)])
def test_a_signal_to_the_process_group_checkpoints_and_resumes_bit_exactly(setup, tmp_path, moment, sig):
    d = setup
    (d / "tmp").mkdir(exist_ok=True)
    run, marker = tmp_path / "run", tmp_path / "marker"
    env = _env(d, MARKER=str(marker), PAUSE_AT=moment)
    before = set(os.listdir(d / "tmp"))
    p = subprocess.Popen([sys.executable, str(d / "wrapper.py"), "finetune", *ARGS, "--data", str(d / "ph"), "--out",
                          str(run), "--max-steps", str(STEPS)], env=env, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own process group: the workers get the signal too
    _wait(run / "metrics.csv" if moment == "mid-epoch" else marker, p)
    if moment == "mid-epoch":
        time.sleep(0.5)
    os.killpg(p.pid, sig)
    rc = p.wait(timeout=300)
    err = p.stderr.read()
    assert rc == (143 if sig == signal.SIGTERM else 130), err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "resume" in lines[0], err
    state = json.loads((run / "state.json").read_text())
    step = torch.load(run / "last.ckpt", weights_only=True)["step"]
    assert state["status"] == "interrupted" and state["step"] == step and 0 < step < STEPS, (state, step)
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()
    assert not [f for f in set(os.listdir(d / "tmp")) - before if f.startswith("pymp-")]  # no folder left behind
    r = subprocess.run([sys.executable, "-m", "chexcut", "finetune", "--resume", str(run)], env=_env(d),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a = torch.load(d / "straight" / "last.ckpt", weights_only=True)["model"]
    b = torch.load(run / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [ln.split(",")[0] for ln in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(steps) == len(set(steps))  # no metrics row twice


def test_workers_ignore_stop_signals():
    """Workers start with SIGTERM/SIGINT blocked (inherited from the main thread while the loader starts them), so a
    signal to the group in that window cannot kill one; once running they ignore both and unblock them."""
    from chexcut.data.batches import ignore_stop_signals, stop_signals_blocked

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with stop_signals_blocked():
            assert {signal.SIGTERM, signal.SIGINT} <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
            ignore_stop_signals(0)  # as a worker does first
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for s, h in old.items():
            signal.signal(s, h)



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(d, args: list[str]) -> list[subprocess.CompletedProcess]:
    """torchrun --nnodes 2 started twice on this machine, meeting at a c10d rendezvous on 127.0.0.1."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
           "-m", "chexcut", *args]
    procs = [subprocess.Popen(cmd, env=_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, o, e))
    return out


def test_ddp_trains_stops_at_one_step_and_resumes_across_two_nodes(setup, tmp_path):
    """The one torchrun case. 2 gloo ranks with DataLoader workers: rank 0 alone logs and writes, each rank takes
    half the batches; SIGTERM to the whole group stops every rank at the same step (else the run would hang in an
    all-reduce), rank 0 checkpoints it and says so once; the run then resumes under two torchrun agents meeting at
    a c10d rendezvous (multi-node), logs each step once and finishes with a best model."""
    d = setup
    (d / "tmp").mkdir(exist_ok=True)
    run = tmp_path / "ddp"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "chexcut", "finetune", *[a for a in ARGS if a != "--quiet"], "--log-format", "json", "--data",
                          str(d / "ph"), "--out", str(run), "--epochs", "50"],
                         env=_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    _wait(run / "metrics.csv", p)
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=300)  # torchrun's own exit status and traceback are torchrun's
    state = json.loads((run / "state.json").read_text())
    step = torch.load(run / "last.ckpt", weights_only=True)["step"]
    assert state["status"] == "interrupted" and state["step"] == step > 0, (state, step, err[-2000:])
    assert err.count("chexcut: terminated (SIGTERM)") == 1 and f"checkpoint at step {step}" in err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "start" for e in events) == 1  # rank 0 alone logs
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    # each rank takes half the batches: an epoch of N images at batch 8 per rank has ~N/16 steps
    assert config["steps_per_epoch"] <= config["data"]["train_images"] // 16 + 1
    resumed = _two_nodes(d, ["finetune", "--resume", str(run), "--max-steps", str(step + 2), "--quiet"])
    assert all(r.returncode == 0 for r in resumed), [r.stderr[-2000:] for r in resumed]
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == step + 2 and (run / "best.safetensors").is_file()
    steps = [ln.split(",")[0] for ln in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int)  # no metrics row twice
