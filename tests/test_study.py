"""study plan: runnable, idempotent scripts; a valid sbatch array; bad input; the demo end to end."""

import json
import os
import re
import stat
import subprocess

import pytest
from conftest import run_cli

from chexcut.errors import ChexcutError
from chexcut.study.plan import Grid, Slurm, plan_study
from chexcut.training.config import FinetuneOptions


@pytest.fixture
def data(phantom):
    """The shared phantom: a plan reads its data set as the runs will (a plan on an empty folder is refused)."""
    return phantom


def test_plan_writes_plan_script_and_commands(data, tmp_path):
    plan = plan_study(tmp_path / "s", data, Grid(archs=("resnet18", "densenet121"), weights=("imagenet", "none"),
                      drops=(0, 1, 5), seeds=(0, 1)), FinetuneOptions(train={"recipe": "fast"}, data={"views": "all"}))
    assert len(plan["runs"]) == 2 * 2 * 2 * 2  # drop 5 is past both archs' 4 blocks: skipped, listed
    assert any("drop 5" in s for s in plan["skipped"])
    ids = [r["id"] for r in plan["runs"]]
    assert len(set(ids)) == len(ids) and "resnet18-imagenet-d1-s1" in ids
    # the runs share typed options; evaluate reads each run's data options from its config.json (its own
    # validation rows, no leakage), so the plan holds no command lines at all
    assert plan["finetune_options"]["train"] == {"recipe": "fast"} and plan["finetune_options"]["data"]["views"] == "all"
    assert set(plan["runs"][0]) == {"id", "arch", "weights", "drop", "adapt", "label_fraction", "seed", "run_dir"}
    script = (tmp_path / "s" / "run.sh").read_text()
    assert "study exec . --index" in script and "seq 0 15" in script
    assert os.stat(tmp_path / "s" / "run.sh").st_mode & stat.S_IXUSR
    assert subprocess.run(["bash", "-n", str(tmp_path / "s" / "run.sh")]).returncode == 0
    assert (tmp_path / "s" / "commands.txt").read_text().splitlines() == [f"chexcut study exec . --index {i}"
                                                                          for i in range(16)]


FAKE = """#!/usr/bin/env bash
# a stand-in for chexcut: records each call; --index STOP_AT stops as a Ctrl-C would, --index FAIL_AT fails
echo "$@" >> "$CALLS"
[ "$4 $5" = "--index ${STOP_AT:-x}" ] && exit 130
[ "$4 $5" = "--index ${FAIL_AT:-x}" ] && exit 1
exit 0
"""


def test_run_sh_runs_every_planned_run_through_the_executor(data, tmp_path):
    s = tmp_path / "s"
    plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0, 1, 2), seeds=(0,)))
    fake = tmp_path / "fake-chexcut"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, CHEXCUT=str(fake), CALLS=str(calls))
    p = subprocess.run(["bash", str(s / "run.sh")], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert calls.read_text().splitlines() == [f"study exec . --index {i}" for i in range(3)]
    calls.unlink()
    p = subprocess.run(["bash", str(s / "run.sh")], env={**env, "STOP_AT": "1"}, capture_output=True, text=True)
    assert p.returncode == 130 and len(calls.read_text().splitlines()) == 2  # an interrupt stops the script
    calls.unlink()
    p = subprocess.run(["bash", str(s / "run.sh")], env={**env, "FAIL_AT": "0"}, capture_output=True, text=True)
    assert p.returncode == 1 and len(calls.read_text().splitlines()) == 3 and "1 of 3 runs failed" in p.stderr


def test_exec_skips_done_runs_resumes_interrupted_ones_and_starts_the_rest(data, tmp_path, monkeypatch):
    """The executor's decisions, without training: the Run it hands finetune, and what it leaves alone."""
    import chexcut.study.execute as ex
    import chexcut.training.loop as loop

    s = tmp_path / "s"
    plan = plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0, 1, 2), seeds=(0,)),
                      FinetuneOptions(train={"epochs": 2}, in_chans=1))
    seen = []
    monkeypatch.setattr(loop, "finetune", lambda run, emit=None: seen.append(run))
    monkeypatch.setattr(ex, "_evaluate", lambda run, plan: (s / run["run_dir"] / "eval.json").write_text("{}"))
    monkeypatch.setattr("chexcut.training.config.Run.from_run_dir", classmethod(
        lambda cls, d, **k: cls(run_dir=d, data=data, opts=None, cfg=None, model_source={}, resume=True)))
    done, interrupted, new = plan["runs"]
    (s / done["run_dir"]).mkdir(parents=True)
    (s / done["run_dir"] / "eval.json").write_text("{}")
    (s / interrupted["run_dir"]).mkdir(parents=True)
    (s / interrupted["run_dir"] / "last.ckpt").write_bytes(b"")
    assert [ex.execute(s, r, plan) for r in plan["runs"]] == ["skipped", "done", "done"]
    assert [r.resume for r in seen] == [True, False]
    assert seen[1].model_source["in_chans"] == 1 and seen[1].cfg.epochs == 2 and seen[1].force
    rc, _, err = run_cli("study", "exec", s, "--index", "3")
    assert rc == 2 and "out of range" in err and err.count("\n") == 1
    rc, _, err = run_cli("study", "exec", s, "nope-d0")
    assert rc == 2 and "no run 'nope-d0'" in err


def test_slurm_script_is_a_valid_array(data, tmp_path):
    s = tmp_path / "s"
    plan = plan_study(s, data, Grid(archs=("resnet18", "mobilenet_v2"), weights=("none",), drops=(0, 1), seeds=(0,)),
                      slurm=Slurm(gpus_per_task=4, partition="gpu", time="08:00:00", extra=("--qos=long",)))
    text = (s / "study.sbatch").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert directives["array"] == f"0-{len(plan['runs']) - 1}"
    assert directives["gpus-per-task"] == "4" and directives["partition"] == "gpu" and directives["time"] == "08:00:00"
    # every #SBATCH line comes before the first command, as sbatch requires
    lines = text.splitlines()
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    first_cmd = min(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert last_directive < first_cmd
    assert subprocess.run(["bash", "-n", str(s / "study.sbatch")]).returncode == 0
    assert 'launcher="torchrun --standalone --nproc_per_node 4"' in text and str(s) not in text
    commands = (s / "commands.txt").read_text().splitlines()
    assert len(commands) == len(plan["runs"])
    assert all(c.endswith("--launcher 'torchrun --standalone --nproc_per_node 4'") for c in commands)


def test_bad_plans(tmp_path, data):
    with pytest.raises(ChexcutError, match="does not exist"):
        plan_study(tmp_path / "s", tmp_path / "missing", Grid(archs=("resnet18",)))
    with pytest.raises(ChexcutError, match="unknown architecture 'resnet5'"):
        plan_study(tmp_path / "s", data, Grid(archs=("resnet5",)))
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", tmp_path / "s", "--archs", "resnet18,vgg16")
    assert rc == 2 and "vgg16" in err and err.count("\n") == 1
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", tmp_path / "s", "--drops", "0,x")
    assert rc == 2 and "--drops" in err


@pytest.mark.slow
def test_demo_runs_end_to_end_at_a_tiny_size(tmp_path):
    rc, out, err = run_cli("demo", tmp_path / "demo", "--archs", "resnet18", "--drops", "0,1", "--n", "160",
                           "--image-size", "32", "--epochs", "1", "--bootstrap", "50")
    assert rc == 0, err[-2000:]
    rep = json.loads((tmp_path / "demo" / "report" / "results.json").read_text())
    assert rep["runs"] == 2 and not rep["incomplete"]
    assert {r["drop"] for r in rep["results"]} == {0, 1}
    assert rep["results"][1]["p_vs_drop0"] is not None
    for name in ("report.md", "results.csv", "auroc_vs_params.png", "imagenet_vs_auroc.png"):
        assert (tmp_path / "demo" / "report" / name).is_file(), name
    assert "Results" in out
    # offline, without weights: every empty finding says which runs are missing and the command that fills them
    assert "random init only" in err and "chexcut weights fetch resnet18" in err
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "-x" not in md and "rho = -" not in md and "| - (p = -" not in md
    assert "Missing runs: no pretrained runs for resnet18" in md and "chexcut weights fetch resnet18" in md
    assert "Parameter efficiency (random init)" in md and "non-inferiority rule" in md
    assert "chexcut weights fetch resnet18" in out and "-x" not in out
    assert json.loads((tmp_path / "demo" / "study" / "plan.json").read_text())["runs"][0]["weights"] == "none"
    _check_card(tmp_path / "demo", md)


def _check_card(demo, report_md: str):
    """The demo's report links the study's model card; `chexcut card STUDY` writes the same card with the YAML's
    answers; every CLAIM and TRIPOD+AI item is listed, answered or "needs the authors"; every AUROC in the card is
    the run's eval.json's; the HTML renders in a headless Chromium with every image loaded."""
    import csv
    import shutil
    import subprocess
    from pathlib import Path

    from chexcut.study import card as card_mod

    assert "[card.md](card.md)" in report_md and (demo / "report" / "card.html").is_file()
    about = demo / "about.yaml"
    about.write_text("intended_use: research on truncated CNNs for chest X-rays\nethics: not applicable (synthetic)\n")
    out = demo / "cardout"
    out.mkdir()
    rc, stdout, err = run_cli("card", demo / "study", "-o", out / "card.md", "--html", out / "card.html", "--about",
                              about, "--json", "-")
    assert rc == 0, err
    card = json.loads(stdout)
    for key, fname in (("claim", "claim.csv"), ("tripod_ai", "tripod_ai.csv")):
        with open(Path(card_mod.__file__).parent / "checklists" / fname) as fh:
            items = [r["item"] for r in csv.DictReader(fh)]
        got = card["checklists"][key]["items"]
        assert [i["item"] for i in got] == items and len(items) == {"claim": 44, "tripod_ai": 52}[key]
        assert all(i["where"] == "needs the authors" or i["where"].startswith(("card: ", "the authors (about: "))
                   for i in got)
    where = {i["topic"]: i["where"] for i in card["checklists"]["tripod_ai"]["items"]}
    assert where["Ethics committee approval and consent"] == "the authors (about: ethics)"
    assert where["Funding"] == "needs the authors"  # never a guess
    md = (out / "card.md").read_text()
    ev = json.loads((Path(card["run"]) / "eval.json").read_text())
    for r in ev["labels"]:
        if r.get("auroc") is not None:
            assert card["eval"]["labels"][r["label"]] == r["auroc"] and f"{r['auroc']:.4f}" in md, r["label"]
    assert card["eval"]["mean_competition"] == ev["mean_competition"] and "research on truncated CNNs" in md
    for img in ("auroc.png", "auroc_vs_params.png"):
        assert (out / "card_files" / img).is_file() and f"card_files/{img}" in md
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium to render the card's HTML (.ci/run installs Debian's chromium)")
    html = out / "card.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == html.read_text().count("<img") >= 2 and "data-broken" not in dom
    assert "CLAIM" in dom and "TRIPOD+AI" in dom


def test_demo_refuses_bad_arguments_before_any_work(tmp_path):
    for args, msg in ((["--archs", "foonet"], "unknown architecture"), (["--jobs", "0"], "'--jobs'"),
                      (["--epochs", "0"], "--epochs"), (["--bootstrap", "-1"], "--bootstrap")):
        rc, _, err = run_cli("demo", tmp_path / "d", *args, "--offline")
        assert rc == 2 and msg in err and err.count("\n") == 1, err
        assert not (tmp_path / "d").exists()


def test_study_status_reads_every_run_from_its_folder(data, tmp_path):
    """queued, running, stalled, interrupted, failed and done, from the run directories alone."""
    import time as _time

    from chexcut.study.status import STALL_MIN_S, study_status

    s = tmp_path / "s"
    plan = plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0, 1, 2, 3), seeds=(0, 1)))
    dirs = [s / r["run_dir"] for r in plan["runs"]]
    header = "step,epoch,images_seen,train_loss,lr,images_per_s,gpu_mem_gb,val_mean_auroc\n"

    def run(d, status=None, step=10, rows=(5, 10), **state):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "metrics.csv").write_text(header + "".join(f"{r},0.1,80,0.5,0.001,321.5,,\n" for r in rows))
        if status:
            (d / "state.json").write_text(json.dumps({"status": status, "step": step, "total_steps": 100,
                                                      "epoch": step / 50, "best": {"mean_auroc": 0.8}, **state}))

    run(dirs[0], "running", rows=(5, 10, 15))  # running; metrics ahead of the checkpoint
    run(dirs[1], "running")
    old = _time.time() - 2 * STALL_MIN_S
    for f in dirs[1].iterdir():
        os.utime(f, (old, old))
    run(dirs[2], "interrupted", step=10)
    run(dirs[3], "stopped", reason="CUDA out of memory")
    run(dirs[4], "finished", step=100)
    (dirs[4] / "eval.json").write_text(json.dumps({"mean_competition": {"auroc": 0.81, "ci_low": 0.78, "ci_high": 0.84}}))
    run(dirs[5], "finished", step=100)
    (dirs[5] / "log.txt").write_text("training...\nchexcut: error: the evaluation failed somehow\n")
    res = study_status(s)
    got = {r["id"]: r for r in res["runs"]}
    ids = [r["id"] for r in plan["runs"]]
    assert [got[i]["status"] for i in ids] == ["running", "stalled", "interrupted", "failed", "done", "failed",
                                               "queued", "queued"]
    assert got[ids[0]]["step"] == 15 and got[ids[0]]["images_per_s"] == 321.5 and got[ids[0]]["total_steps"] == 100
    assert "no sign of life" in got[ids[1]]["reason"] and got[ids[2]]["step"] == 10
    assert got[ids[3]]["reason"] == "CUDA out of memory" and "evaluation failed" in got[ids[5]]["reason"]
    assert got[ids[4]]["auroc"] == 0.81 and got[ids[4]]["ci_low"] == 0.78
    assert res["totals"] == {"queued": 2, "running": 1, "stalled": 1, "interrupted": 1, "failed": 2, "done": 1}
    rc, out, err = run_cli("study", "status", s, "--json", "-")
    assert rc == 0 and json.loads(out)["totals"] == res["totals"]
    rc, out, err = run_cli("study", "status", s)
    assert rc == 0 and "2 queued, 1 running, 1 stalled, 1 interrupted, 2 failed, 1 done" in out.replace("\n", " ")


def test_slurm_options_and_a_cpu_partition(data, tmp_path):
    s = tmp_path / "s"
    plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0,), seeds=(0,)),
               slurm=Slurm(gpus_per_task=0, cpus_per_task=2, time="1-00:00:00", partition="cpu", account="lab",
                           mem="16G"))
    text = (s / "study.sbatch").read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert not any("gpu" in d for d in directives) and "torchrun" not in (s / "commands.txt").read_text()
    for d in ("--cpus-per-task=2", "--time=1-00:00:00", "--partition=cpu", "--account=lab", "--mem=16G",
              "--signal=B:TERM@300", "--requeue", "--open-mode=append"):
        assert d in directives, d
    assert subprocess.run(["bash", "-n", str(s / "study.sbatch")]).returncode == 0
    plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0,), seeds=(0,)), force=True,
               slurm=Slurm())  # the default writes no CPU count: the cluster's DefCpuPerGPU decides
    assert "--cpus-per-task" not in (s / "study.sbatch").read_text()
    for bad, msg in ((dict(gpus_per_task=-1), "--gpus-per-task"), (dict(time="12h"), "not a Slurm time"),
                     (dict(mem="lots"), "not a Slurm size"), (dict(cpus_per_task=0), "--cpus-per-task"),
                     (dict(partition="a b"), "--partition"), (dict(time="\u0661\u0662:00:00"), "ASCII digits"),
                     (dict(time="1"), "not longer than --signal-before"), (dict(extra=("qos=long",)), "#SBATCH")):
        with pytest.raises(ChexcutError, match=msg):
            Slurm(**bad)


def test_hostile_names_in_a_plan_are_data_never_code(tmp_path):
    """A weights file, data folder, study folder and #SBATCH directive whose names hold $(...), backticks, quotes,
    ';' and newlines: run.sh, `study run --jobs 2` and study.sbatch run the study and execute nothing but
    chexcut (no script holds a user string: each line is `chexcut study exec . --index N`)."""
    import sys

    import torch
    import torchvision
    from conftest import REPO

    from chexcut.data.phantom import make_phantom

    evil = "$(touch pwned1) `touch pwned2` ';\"x\nline2"
    root = tmp_path / "root"
    root.mkdir()
    data = make_phantom(root / f"data {evil}", n=60, image_size=32, seed=0)
    weights = root / f"w {evil}.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    study = root / f"study {evil}"
    train = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--workers", "0", "--val-every", "1000"]
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", study, "--archs", "resnet18", "--weights",
                         f"none,{weights}", "--drops", "3", "--bootstrap", "20", "--slurm", "--gpus-per-task", "0",
                         "--sbatch", "--comment=$(touch${IFS}pwned3),--comment=`touch${IFS}pwned4`;'\"", *train)
    assert rc == 0, err
    for name in ("run.sh", "commands.txt", "study.sbatch"):
        text = (study / name).read_text()
        assert "touch pwned1" not in text and str(root) not in text, name
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", tmp_path / "s2", "--archs", "resnet18",
                         "--slurm", "--sbatch", "--qos=long\n#SBATCH --x")  # a directive is one line
    assert rc == 2 and "one #SBATCH directive" in err and err.count("\n") == 1
    env = dict(os.environ, PYTHONPATH=str(REPO), CHEXCUT=f"{sys.executable} -m chexcut")
    p = subprocess.run(["bash", str(study / "run.sh")], env=env, capture_output=True, text=True, cwd=root, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = sorted((study / "runs").iterdir())
    assert len(runs) == 2 and all((r / "eval.json").is_file() for r in runs)
    for r in runs:
        (r / "eval.json").unlink()
    rc, _, err = run_cli("study", "run", study, "--jobs", "2", "--quiet", cwd=root)
    assert rc == 0, err
    assert all((r / "eval.json").is_file() for r in runs)
    assert subprocess.run(["bash", "-n", str(study / "study.sbatch")]).returncode == 0
    p = subprocess.run(["bash", str(study / "study.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": "1"}, cwd=study,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "skipped" in p.stderr, p.stderr  # the task's run, already done
    assert not [f for f in tmp_path.rglob("pwned*")], "a name was executed"


#: finetune's parameters a study plan does not take for its runs: the grid gives the model, its weights, drop and
#: seed; each run's folder, resumption and output are the study's; tracking and --force are study plan's own.
NOT_FOR_RUNS = {"model", "data", "out", "resume", "force", "drop", "keep", "weights", "seed", "log_format", "quiet",
                "track", "track_models", "adapt", "label_fraction"}  # adapt, label_fraction: grid axes (test_howmuch)


def test_every_finetune_option_reaches_every_run_or_is_refused(data, tmp_path, monkeypatch):
    """Each of finetune's parameters, declared once (chexcut.options), is a parameter of study plan carried into the
    runs (checked here on the Run the executor hands finetune), or the grid's or the study's own (NOT_FOR_RUNS; an
    unknown option to study plan). A new finetune option fails this test until it is one or the other."""
    import pandas as pd
    import typer

    import chexcut.training.loop as loop
    from chexcut.cli import app
    from chexcut.study.execute import execute

    rows = pd.read_csv(data / "CheXpert-v1.0-small" / "train.csv").rename(columns={"Path": "Image"})
    rows[["Image", "Frontal/Lateral", "Edema"]].to_csv(tmp_path / "rows.csv", index=False)
    cache = tmp_path / "cache"
    # parameter -> (its flag and value, where it must arrive on the Run)
    carried = {
        "recipe": (["--recipe", "fast"], lambda r: r.cfg.recipe == "fast"),
        "epochs": (["--epochs", "2"], lambda r: r.cfg.epochs == 2),
        "batch_size": (["--batch-size", "8"], lambda r: r.cfg.batch_size == 8),
        "lr": (["--lr", "0.003"], lambda r: r.cfg.lr == 0.003),
        "image_size": (["--image-size", "48"], lambda r: r.cfg.image_size == 48),
        "val_every": (["--val-every", "7"], lambda r: r.cfg.val_every == 7),
        "precision": (["--precision", "bf16"], lambda r: r.cfg.precision == "bf16"),
        "channels_last": (["--no-channels-last"], lambda r: r.cfg.channels_last is False),
        "compile": (["--no-compile"], lambda r: r.cfg.compile is False),
        "workers": (["--workers", "1"], lambda r: r.cfg.workers == 1),
        "precise_bn": (["--precise-bn", "16"], lambda r: r.cfg.precise_bn == 16),
        "layer_decay": (["--layer-decay", "0.7"], lambda r: r.cfg.layer_decay == 0.7),
        "max_steps": (["--max-steps", "9"], lambda r: r.cfg.max_steps == 9),
        "log_every": (["--log-every", "3"], lambda r: r.cfg.log_every == 3),
        "device": (["--device", "cpu"], lambda r: r.cfg.device == "cpu"),
        "resize": (["--resize", "pad"], lambda r: r.cfg.resize == "pad"),
        "csv": (["--csv", tmp_path / "rows.csv"], lambda r: r.opts.csv == str(tmp_path / "rows.csv")),
        "path_col": (["--path-col", "Image"], lambda r: r.opts.path_col == "Image"),
        "labels": (["--labels", "Edema"], lambda r: tuple(r.opts.labels) == ("Edema",)),
        "views": (["--views", "all"], lambda r: r.opts.views == "all"),
        "uncertain": (["--uncertain", "ones"], lambda r: r.opts.uncertain == "ones"),
        "blank": (["--blank", "ignore"], lambda r: r.opts.blank == "ignore"),
        "valid_frac": (["--valid-frac", "0.2"], lambda r: r.opts.valid_frac == 0.2),
        "cache": (["--cache", cache], lambda r: r.cache == cache),
        "skip_missing": (["--skip-missing"], lambda r: r.skip_missing is True),
        "images_outside": (["--images-outside-data"], lambda r: r.opts.images_outside is True),
        "in_chans": (["--in-chans", "1"], lambda r: r.model_source["in_chans"] == 1),
        "track_tag": (["--track-tag", "site=a"], lambda r: r.track.tags["site"] == "a"),
        "track_experiment": (["--track-experiment", "cxr"], lambda r: r.track.experiment == "cxr"),
    }
    command = typer.main.get_command(app).commands["finetune"]
    # --label-map needs a published set (not this CheXpert-layout one): test_datasets checks it reaches the runs
    assert {p.name for p in command.params} == set(carried) | NOT_FOR_RUNS | {"label_map"}
    plan_params = {p.name for p in typer.main.get_command(app).commands["study"].commands["plan"].params}
    assert set(carried) | {"label_map"} <= plan_params
    own = {"model", "data", "out", "weights", "force", "track", "track_models"}  # study plan's own (or none)
    base = ["study", "plan", "--data", data, "--out", tmp_path / "s", "--archs", "test_vit", "--weights", "none",
            "--drops", "3", "--track", f"sqlite:///{tmp_path / 'm.db'}", "--force"]
    args = [str(a) for flag, _ in carried.values() for a in flag]
    rc, _, err = run_cli(*base, *args)
    assert rc == 0, err
    seen = []
    monkeypatch.setattr(loop, "finetune", lambda run, emit=None: seen.append(run))
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    execute(tmp_path / "s", plan["runs"][0], plan, step="finetune")
    missed = [name for name, (_, reached) in carried.items() if not reached(seen[0])]
    assert not missed, missed
    for name in sorted(NOT_FOR_RUNS - own):
        flag = "--" + name.replace("_", "-")
        value = {"resume": ["x"], "drop": ["1"], "keep": ["1"], "seed": ["3"], "log_format": ["json"], "adapt": ["probe"],
                 "label_fraction": ["0.5"]}.get(name, [])
        rc, _, err = run_cli(*base, flag, *value)
        assert rc == 2 and "No such option" in err and err.count("\n") == 1, (name, err)


def test_every_evaluation_setting_reaches_each_runs_eval_json(data, trained_run, tmp_path, monkeypatch):
    """Each evaluation setting (a Statistics field, declared once in chexcut.options) given to study plan is in
    plan.json and, with the run's own seed, in the run's eval.json. A new setting fails this test until a study
    takes it."""
    import dataclasses
    import shutil

    import chexcut.training.loop as loop
    from chexcut.evaluation.settings import Statistics
    from chexcut.study.execute import execute

    given = {"bootstrap": (["--bootstrap", "20"], 20), "ci": (["--ci", "0.9"], 0.9),
             "cluster": (["--cluster", "study"], "study"), "level": (["--level", "image"], "image"),
             "method": (["--method", "delong"], "delong"), "alpha": (["--alpha", "0.1"], 0.1),
             "by": (["--by", "Sex,Age"], ["Sex", "Age"]), "age_bins": (["--age-bins", "0,50,200"], [0.0, 50.0, 200.0]),
             "calibration": (["--no-calibration"], False), "at_specificity": (["--at-specificity", "0.8"], [0.8]),
             "at_sensitivity": (["--at-sensitivity", "0.7,0.9"], [0.7, 0.9]),
             "decision_curve": (["--decision-curve"], True), "prevalence_matched": (["--prevalence-matched"], True),
             "failures": (["--failures", "2"], 2)}
    defaults = Statistics().to_json()
    # the run's seed is its own; a margin (and its equivalence test) needs a comparison: `report` makes them
    assert set(given) == {f.name for f in dataclasses.fields(Statistics)} - {"seed", "margin", "equivalence"}
    assert all(value != defaults[name] for name, (_, value) in given.items())
    args = [a for flag, _ in given.values() for a in flag]
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", tmp_path / "s", "--archs", "resnet18", "--weights",
                         "none", "--drops", "2", "--seeds", "3", *args)
    assert rc == 0, err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    expected = {**defaults, **{name: value for name, (_, value) in given.items()}}
    assert plan["statistics"] == {k: v for k, v in expected.items() if k != "seed"}
    rc, _, err = run_cli("study", "plan", "--data", data, "--out", tmp_path / "s2", "--margin", "0.02")
    assert rc == 2 and "No such option: --margin" in err and not (tmp_path / "s2").exists()  # report's option
    # the finetune is the shared trained run; the evaluation is the executor's own
    monkeypatch.setattr(loop, "finetune", lambda run, emit=None: shutil.copytree(trained_run, run.run_dir,
                                                                                 dirs_exist_ok=True))
    assert execute(tmp_path / "s", plan["runs"][0], plan) == "done"
    result = json.loads((tmp_path / "s" / plan["runs"][0]["run_dir"] / "eval.json").read_text())
    assert result["statistics"] == {**expected, "seed": 3}
    assert result["bootstrap"] == 20 and result["level"] == "image" and "decision_curve" in result


def test_a_damaged_or_hand_edited_plan_is_one_line(data, tmp_path):
    """plan.json is one schema: a run outside runs/ID (path traversal), a missing field, a wrong type or damaged
    options never reach the executor."""
    s = tmp_path / "s"
    plan_study(s, data, Grid(archs=("resnet18",), weights=("none",), drops=(0,), seeds=(0,)))
    good = json.loads((s / "plan.json").read_text())
    run = good["runs"][0]
    for change, words in (({"run_dir": "../../elsewhere"}, "a run's folder is runs/ID"),
                          ({"id": "../x", "run_dir": "runs/../x"}, "a run's folder is runs/ID"),
                          ({"drop": "0"}, "no valid 'drop'"), ({"seed": True}, "no valid 'seed'"),
                          ({"arch": None}, "no valid 'arch'")):
        (s / "plan.json").write_text(json.dumps({**good, "runs": [{**run, **change}]}))
        rc, _, err = run_cli("study", "exec", s, "--index", "0")
        assert rc == 2 and words in err and err.count("\n") == 1, (change, err)
    (s / "plan.json").write_text(json.dumps({**good, "finetune_options": {"train": {"epochs": -1}}}))
    rc, _, err = run_cli("study", "status", s)
    assert rc == 2 and "plan.json" in err and "--epochs" in err and err.count("\n") == 1, err
    assert not (tmp_path / "elsewhere").exists()


def test_a_plan_whose_runs_cannot_read_the_data_is_refused(data, tmp_path):
    """--labels naming a column the data lacks, or a folder without the CheXpert CSVs: refused at plan time (every
    run would fail on it after the queue), nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, extra, words in ((data, ["--labels", "Edema,Shoe size"], "Shoe size"), (empty, [], "could not read")):
        rc, _, err = run_cli("study", "plan", "--data", folder, "--out", tmp_path / "s", "--archs", "resnet18", *extra)
        assert rc == 2 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "s" / "plan.json").exists()


def test_a_format_2_plan_is_read_and_planned_over_with_its_own_settings(data, tmp_path):
    """A study planned by the previous version (plan.json format 2: ``bootstrap`` and the subgroup settings beside
    the options) runs on and may be planned again with the same settings: its statistics are read as format 3's."""
    from chexcut.study.plan import load_plan, run_statistics

    s = tmp_path / "s"
    args = ["study", "plan", "--data", data, "--out", s, "--archs", "resnet18", "--weights", "none", "--drops", "0",
            "--bootstrap", "30", "--by", "Sex"]
    assert run_cli(*args)[0] == 0
    plan = json.loads((s / "plan.json").read_text())
    old = {**plan, "version": 2, "bootstrap": 30, "evaluate_options": {**plan["evaluate_options"], "by": ["Sex"],
                                                                       "age_bins": None, "calibration": True}}
    del old["statistics"]
    (s / "plan.json").write_text(json.dumps(old))
    stats = run_statistics(load_plan(s), 7)
    assert (stats.bootstrap, stats.by, stats.seed) == (30, ("Sex",), 7)
    (s / "runs" / plan["runs"][0]["id"]).mkdir(parents=True)
    (s / "runs" / plan["runs"][0]["id"] / "log.txt").write_text("started")
    rc, _, err = run_cli(*args, "--force")
    assert rc == 0, err  # the same settings: not "results from other settings"
    rc, _, err = run_cli(*args[:-4], "--bootstrap", "40", "--force")
    assert rc == 2 and "other settings" in err
    del old["bootstrap"]
    (s / "plan.json").write_text(json.dumps(old))
    rc, _, err = run_cli("study", "exec", s, "--index", "0")
    assert rc == 2 and "bootstrap count" in err
