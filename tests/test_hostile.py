"""Hostile inputs, round 3: one test per family of faults (benchmarks/hostile_sweep.py tries 174 inputs).
Every user-caused error is one line and exit 2; no input file is changed; nothing is silently wrong."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from chexcut.choices import BOUNDS, check_bounds
from chexcut.errors import ChexcutError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    assert run_cli("phantom", d / "ph", "--n", "80", "--image-size", "40", "-q")[0] == 0
    rc, _, err = run_cli("finetune", "resnet18", "--drop", "3", "--weights", "none", "--data", d / "ph", "--out",
                         d / "run", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--workers", "0", "-q")
    assert rc == 0, err
    return d


def _one_line_exit_2(rc, err, words):
    lines = [ln for ln in err.splitlines() if ln.strip() and "━" not in ln]  # a progress bar's last frame aside
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("chexcut: error:") and words in err, err


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_output_onto_an_input(run):
    truth = run / "ph" / "CheXpert-v1.0-small" / "valid.csv"
    preds = run / "run" / "valid_predictions.csv"
    before = {p: _digest(p) for p in (truth, preds, run / "run" / "best.safetensors")}
    for args in (["evaluate", "--predictions", preds, "--truth", truth, "--csv-out", truth],
                 ["evaluate", "--predictions", preds, "--truth", truth, "--json", preds],
                 ["evaluate", run / "run", "--predictions-out", truth],  # the run's own data set
                 ["truncate", "resnet18", "--drop", "3", "--weights", run / "run" / "best.safetensors", "-o",
                  run / "run" / "best.safetensors", "--force"],
                 ["bench", run / "run" / "best.safetensors", "--json", run / "run" / "best.safetensors"]):
        rc, _, err = run_cli(*args)
        _one_line_exit_2(rc, err, "is one of this command's inputs")
    assert {p: _digest(p) for p in before} == before


@pytest.mark.parametrize("args,words", [
    (["finetune", "resnet18", "--seed", "-1"], "--seed"),
    (["finetune", "resnet18", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "x", "--bootstrap", "1000000000"], "--bootstrap"),
    (["inspect", "resnet18", "--image-size", "1000000000"], "--image-size"),
    (["phantom", "p", "--seed", "-1"], "--seed"),
    (["explain", "m", "--top", "0"], "--top"),
    (["study", "plan", "--data", ".", "--out", "s", "--seeds", "-1"], "--seeds"),
])
def test_numbers_out_of_range_are_one_line(tmp_path, args, words):
    rc, _, err = run_cli(*args, cwd=tmp_path)
    _one_line_exit_2(rc, err, words)


@pytest.mark.parametrize("args", [
    ["finetune", "resnet18", "--data", ".", "--out", "r", "--labels", ","],
    ["evaluate", "m.safetensors", "--labels", " , "],
    ["prepare", ".", "--labels", ","],
    ["study", "plan", "--data", ".", "--out", "s", "--archs", "resnet18", "--by", ","],
    ["study", "plan", "--data", ".", "--out", "s", "--archs", ","],
    ["explain", "m", "x.png", "--labels", ","],
])
def test_an_empty_list_is_never_read_as_all(tmp_path, args):
    rc, _, err = run_cli(*args, cwd=tmp_path)
    _one_line_exit_2(rc, err, "is an empty list")


def test_bounds_are_declared_once_and_checked_in_the_library():
    assert check_bounds("seed", 0) == 0 and check_bounds("image_size", None) is None
    for name, value in (("seed", -1), ("image_size", 10**9), ("bootstrap", 10**9), ("batch_size", 0)):
        with pytest.raises(ChexcutError, match="--" + name.replace("_", "-")):
            check_bounds(name, value)
    with pytest.raises(ChexcutError, match="must be a number"):
        check_bounds("image_size", "320px")
    from chexcut.training.config import TrainConfig

    with pytest.raises(ChexcutError, match="--seed"):
        TrainConfig.from_recipe("paper", seed=-1)
    assert BOUNDS["image_size"][1] >= 2048


def test_resume_refuses_damaged_or_foreign_run_files(run, tmp_path):
    cases = {"newer": (lambda c: c["train"].update(future_setting=1), "written by a newer version"),
             "nokey": (lambda c: c["train"].pop("lr"), "lacks lr"),
             "badvalue": (lambda c: c["train"].update(image_size="320px"), "--image-size must be a number"),
             "otherdrop": (lambda c: c["model"].update(drop=2), "another model than config.json")}
    for name, (change, words) in cases.items():
        d = tmp_path / name
        shutil.copytree(run / "run", d)
        cfg = json.loads((d / "config.json").read_text())
        change(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        rc, _, err = run_cli("finetune", "--resume", d, "--max-steps", "100")
        _one_line_exit_2(rc, err, words)


def test_a_re_plan_with_other_settings_is_refused_naming_the_runs(run, tmp_path):
    s = tmp_path / "s"
    base = ["study", "plan", "--data", run / "ph", "--out", s, "--archs", "resnet18", "--weights", "none", "--drops", "3"]
    assert run_cli(*base, "--epochs", "1")[0] == 0
    (s / "runs" / "resnet18-none-d3-s0").mkdir(parents=True)
    (s / "runs" / "resnet18-none-d3-s0" / "eval.json").write_text("{}")  # done with the old settings
    rc, _, err = run_cli(*base, "--epochs", "2", "--force")
    _one_line_exit_2(rc, err, "hold results from other settings (first: resnet18-none-d3-s0)")
    assert run_cli(*base, "--epochs", "1", "--force")[0] == 0  # the same settings: fine
    plan = json.loads((s / "plan.json").read_text())
    plan["version"] = 99
    (s / "plan.json").write_text(json.dumps(plan))
    rc, _, err = run_cli("study", "run", s)
    _one_line_exit_2(rc, err, "plan format 99")


def test_a_cache_cut_short_is_named_not_mapped(run, tmp_path):
    cache = tmp_path / "cache"
    assert run_cli("prepare", run / "ph", "--image-size", "32", "--cache", cache, "-q")[0] == 0
    u8 = cache / "images.u8"
    with open(u8, "r+b") as f:
        f.truncate(u8.stat().st_size // 2)
    rc, _, err = run_cli("evaluate", run / "run", "--cache", cache, "--bootstrap", "0")
    _one_line_exit_2(rc, err, "image cache at")


def test_foreign_weights_devices_and_streams(run, tmp_path):
    import torch

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "script.pt"))
    rc, _, err = run_cli("truncate", "resnet18", "--weights", tmp_path / "script.pt", "-o", tmp_path / "x.safetensors")
    _one_line_exit_2(rc, err, "TorchScript archive")  # and no torch warning before the line
    rc, _, err = run_cli("evaluate", run / "run", "--device", "meta", "--bootstrap", "0")
    _one_line_exit_2(rc, err, "chexcut runs on cpu or cuda")
    rc, _, err = run_cli("evaluate", run / "run", "--json", "-", "--predictions-out", "-")
    _one_line_exit_2(rc, err, "would all write to standard output")
    # a process substitution (a pipe) is read like a file: the same result as the file itself
    truth = run / "ph" / "CheXpert-v1.0-small" / "valid.csv"
    preds = run / "run" / "valid_predictions.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = f'"{sys.executable}" -m chexcut evaluate --truth "{truth}" --bootstrap 0 --json - --predictions'
    piped = subprocess.run(["bash", "-c", f'{cmd} <(cat "{preds}")'], capture_output=True, text=True, env=env,
                           timeout=300)
    plain = subprocess.run(["bash", "-c", f'{cmd} "{preds}"'], capture_output=True, text=True, env=env, timeout=300)
    assert piped.returncode == 0 and plain.returncode == 0, piped.stderr
    a, b = json.loads(piped.stdout), json.loads(plain.stdout)
    assert a["n"] == b["n"] and a["mean_all"]["auroc"] == b["mean_all"]["auroc"]


def test_a_write_torch_reports_without_errno_is_one_line_naming_the_file(run, tmp_path, monkeypatch):
    """The second checkpoint fails inside torch's zip writer (a full disk as torch reports it): one line naming
    last.ckpt, exit 2, the first checkpoint kept, state.json not "running"."""
    import torch

    real, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "r"
    rc, _, err = run_cli("finetune", "resnet18", "--drop", "3", "--weights", "none", "--data", run / "ph", "--out", out,
                         "--image-size", "32", "--batch-size", "8", "--epochs", "3", "--val-every", "2", "--workers",
                         "0", "-q")
    monkeypatch.undo()
    _one_line_exit_2(rc, err, "last.ckpt")

    assert torch.load(out / "last.ckpt", weights_only=True)["step"] == 2
    assert json.loads((out / "state.json").read_text())["status"] == "stopped"
    assert not list(out.glob(".*.tmp"))


def test_outputs_never_replace_what_they_point_at(run, tmp_path):
    """One output-path rule: a symlink's target is replaced (the link stays), a FIFO or /dev/stdout is written in
    place (never renamed over), a symlink loop or an over-long name is one line, and an output that is one of
    the command's inputs (a study's plan.json, a run's eval.json) is refused with the input unchanged."""
    import threading

    truth = run / "ph" / "CheXpert-v1.0-small" / "valid.csv"
    preds = run / "run" / "valid_predictions.csv"
    ev = ["evaluate", "--predictions", preds, "--truth", truth, "--bootstrap", "0", "--json"]
    (tmp_path / "target.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    rc, _, err = run_cli(*ev, tmp_path / "link.json")
    assert rc == 0, err
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "target.json").read_text())["n"] > 0
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name, words in ((tmp_path / "loop", "symlink loop"), (tmp_path / ("x" * 300 + ".json"), "longer than")):
        rc, _, err = run_cli(*ev, name)
        _one_line_exit_2(rc, err, words)
    os.mkfifo(tmp_path / "fifo")
    got = {}
    reader = threading.Thread(target=lambda: got.update(text=(tmp_path / "fifo").read_text()))
    reader.start()
    rc, _, err = run_cli(*ev, tmp_path / "fifo")
    reader.join(timeout=60)
    assert rc == 0 and json.loads(got["text"])["n"] > 0 and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    # /dev/stdout as root: written through the process's stdout, the system's link left alone
    p = subprocess.run([sys.executable, "-m", "chexcut", *map(str, ev), "/dev/stdout", "-q"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["n"] > 0 and os.path.islink("/dev/stdout"), p.stderr
    # outputs onto the inputs they read
    rc, _, err = run_cli("study", "plan", "--data", run / "ph", "--out", tmp_path / "st", "--archs", "resnet18",
                         "--weights", "none", "--drops", "3")
    assert rc == 0, err
    plan = (tmp_path / "st" / "plan.json").read_bytes()
    rc, _, err = run_cli("study", "status", tmp_path / "st", "--json", tmp_path / "st" / "plan.json")
    _one_line_exit_2(rc, err, "one of this command's inputs")
    assert (tmp_path / "st" / "plan.json").read_bytes() == plan
    copy = Path(shutil.copytree(run / "run", tmp_path / "r"))
    assert run_cli("evaluate", copy, "--bootstrap", "0", "--json", copy / "eval.json", "-q")[0] == 0
    before = (copy / "eval.json").read_bytes()
    rc, _, err = run_cli("report", copy, "--json", copy / "eval.json")
    _one_line_exit_2(rc, err, "one of this command's inputs")
    assert (copy / "eval.json").read_bytes() == before


def test_model_specs_are_validated_as_data(tmp_path):
    """Metadata nested 100,000 deep or of 2 MB is refused before it is parsed; a spec whose standard deviations are
    0 or whose mean is NaN, or whose normalisation does not fit its channels, is one line when the file is read
    (not "scores holds non-finite values" after inference)."""
    import chexcut

    good = tmp_path / "m.safetensors"
    chexcut.save_model(chexcut.truncate("resnet18", drop=3, weights="none", image_size=32), good)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(good), "pt") as f:
        spec = json.loads(f.metadata()["chexcut"])
    tensors = load_file(str(good))
    deep = json.dumps(spec)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    huge = json.dumps({**spec, "x": "y" * 2_000_000})
    cases = [(deep, "nested deeper"), (huge, "characters"),
             (json.dumps({**spec, "normalisation": {"mean": [0.5] * 3, "std": [0, 0, 0]}}), "positive"),
             (json.dumps({**spec, "normalisation": {"mean": [float("nan")] * 3, "std": [1] * 3}}), "finite"),
             (json.dumps({**spec, "normalisation": {"mean": [0.5], "std": [0.2]}}), "for 3 input channels")]
    for text, words in cases:
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"chexcut": text})
        for cmd in (["inspect", tmp_path / "bad.safetensors"], ["evaluate", tmp_path / "bad.safetensors", "--data",
                                                                 tmp_path]):
            rc, _, err = run_cli(*cmd)
            _one_line_exit_2(rc, err, words)


def test_status_and_report_on_any_folder(run, tmp_path):
    """Run files written by hand or a crash: a step "abc", a best that is a string, an AUROC that is a string or
    NaN, a log line with rich markup, --watch nan; a run named twice; a run interrupted while being evaluated.
    status and report answer (JSON stays JSON) or say one line; never exit 1."""
    rc, _, err = run_cli("study", "plan", "--data", run / "ph", "--out", tmp_path / "st", "--archs", "resnet18",
                         "--weights", "none", "--drops", "1,2,3")
    assert rc == 0, err
    plan = json.loads((tmp_path / "st" / "plan.json").read_text())
    a, b, c = (tmp_path / "st" / r["run_dir"] for r in plan["runs"])
    for d in (a, b, c):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    (a / "state.json").write_text(json.dumps({"status": "stopped", "step": "abc", "best": "x", "epoch": "y"}))
    (a / "log.txt").write_text("chexcut: error: a [/] in a path [bold]\n")
    (b / "eval.json").write_text('{"mean_competition": {"auroc": NaN, "ci_low": "x", "ci_high": null}}')
    (c / "state.json").write_text(json.dumps({"status": "finished", "step": 4}))
    (c / "log.txt").write_text("chexcut: interrupted: the evaluation stopped\n")
    rc, out, err = run_cli("study", "status", tmp_path / "st", "--json", "-")
    assert rc == 0, err
    res = json.loads(out)  # JSON, not NaN
    got = {r["id"]: r for r in res["runs"]}
    ra, rb, rc_ = (got[r["id"]] for r in plan["runs"])
    assert ra["step"] is None and ra["best_mean_auroc"] is None and rb["status"] == "done" and rb["auroc"] is None
    assert rc_["status"] == "interrupted"
    rc, out, err = run_cli("study", "status", tmp_path / "st")
    assert rc == 0 and "[/]" in out, err
    rc, _, err = run_cli("study", "status", tmp_path / "st", "--watch", "nan")
    _one_line_exit_2(rc, err, "--watch")
    # report: a run named twice is one run; an eval.json with a string AUROC is listed as damaged, not a crash
    copy = Path(shutil.copytree(run / "run", tmp_path / "r"))
    assert run_cli("evaluate", copy, "--bootstrap", "20", "--json", copy / "eval.json", "-q")[0] == 0
    rc, out, err = run_cli("report", copy, copy, "--bootstrap", "20", "--json", "-")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["runs"] == 1 and rep["results"][0]["seeds"] == [0]
    ev = json.loads((copy / "eval.json").read_text())
    ev["mean_competition"]["auroc"] = "0.9"
    (copy / "eval.json").write_text(json.dumps(ev))
    rc, out, err = run_cli("report", copy, "--json", "-")
    _one_line_exit_2(rc, err, "no evaluated runs")  # the damaged run is not used, and it is said in one line


def test_caches_are_checked_never_trusted(run, tmp_path, torch_home, monkeypatch):
    """A damaged entry in one of the caches chexcut reads is named (weights, the image index) or rebuilt (the
    anatomy cache), never used: no exit 1, and a bad entry is never reported as good."""
    from chexcut.models.libraries import library_of
    from chexcut.models.registry import get_arch

    arch = get_arch("resnet18")
    cached = library_of(arch).cache_path(arch)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(os.urandom(1000))  # a cut download where the library's cache keeps it
    rc, _, err = run_cli("truncate", "resnet18", "--drop", "1", "-o", tmp_path / "x.safetensors")
    _one_line_exit_2(rc, err, "are damaged")
    rc, out, _ = run_cli("weights", "list", "--json", "-")
    entry = next(w for w in json.loads(out) if w["arch"] == "resnet18")
    assert entry["cached"] and entry["verified"] is False  # present, and said not to verify
    monkeypatch.setenv("CHEXCUT_CACHE", str(tmp_path / "cc"))
    assert run_cli("inspect", "resnet18", "--image-size", "96", "--json", "-")[0] == 0
    (entry_file,) = (tmp_path / "cc" / "anatomy").glob("resnet18-96-*.json")
    entry_file.write_text(json.dumps({"arch": "resnet18"}))  # valid JSON, not an anatomy
    rc, out, err = run_cli("inspect", "resnet18", "--image-size", "96", "--json", "-")
    assert rc == 0 and json.loads(out)["truncations"], err  # recomputed
    cache = tmp_path / "imgcache"
    assert run_cli("prepare", run / "ph", "--image-size", "32", "--cache", cache, "-q")[0] == 0
    index = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**index, "paths": 5}))
    rc, _, err = run_cli("evaluate", run / "run", "--cache", cache, "--bootstrap", "0")
    _one_line_exit_2(rc, err, "is damaged")


def test_image_paths_leading_outside_the_data_folder_are_refused(run, tmp_path):
    """A label file naming ``../secret/x.png`` or an absolute path elsewhere would make chexcut read (and explain
    would draw) a file outside the data folder: refused in one line by every command that reads images, unless
    ``--images-outside-data``; an absolute path inside the folder is fine."""
    import pandas as pd

    data = tmp_path / "ph"
    shutil.copytree(run / "ph", data)
    secret = tmp_path / "secret"
    secret.mkdir()
    inner = data / "CheXpert-v1.0-small"
    valid = pd.read_csv(inner / "valid.csv")
    a, b, c = valid.index[valid["Frontal/Lateral"] == "Frontal"][:3]
    shutil.copy(inner / valid.loc[a, "Path"].split("/", 1)[1], secret / "x.jpg")
    valid.loc[a, "Path"] = "../secret/x.jpg"
    valid.loc[b, "Path"] = str(secret / "x.jpg")
    valid.loc[c, "Path"] = str((inner / valid.loc[c, "Path"].split("/", 1)[1]).resolve())  # inside: allowed
    valid.to_csv(inner / "valid.csv", index=False)
    for args in (["prepare", data, "--image-size", "32", "-q"],
                 ["finetune", "resnet18", "--drop", "3", "--weights", "none", "--data", data, "--out", tmp_path / "r",
                  "--image-size", "32", "--max-steps", "1", "--workers", "0", "-q"],
                 ["evaluate", run / "run", "--data", data, "--bootstrap", "10", "-q"],
                 ["explain", run / "run", "--data", data, "-o", tmp_path / "maps", "-q"]):
        rc, _, err = run_cli(*args)
        _one_line_exit_2(rc, err, "2 image paths lead outside the data folder")
        assert "'../secret/x.jpg'" in err and "--images-outside-data" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "maps").exists()
    rc, out, err = run_cli("evaluate", run / "run", "--data", data, "--bootstrap", "10", "--images-outside-data",
                           "--json", "-")
    assert rc == 0, err  # the permission reaches the training rows the overlap check reads
    assert json.loads(out)["n"] > 0
    # a symlinked folder inside the data cannot be climbed out of: `..` is resolved in the text, so the path judged
    # is the path opened (here a file inside the data folder that does not exist), never the secret beyond the link
    os.symlink(secret, inner / "link")
    (secret / "deeper").mkdir()
    valid = pd.read_csv(run / "ph" / "CheXpert-v1.0-small" / "valid.csv")  # the original rows
    valid.loc[a, "Path"] = "CheXpert-v1.0-small/link/deeper/../../secret/x.jpg"
    valid.to_csv(inner / "valid.csv", index=False)
    rc, _, err = run_cli("prepare", data, "--image-size", "32", "-q")
    _one_line_exit_2(rc, err, f"1 of 70 images are missing (first: {inner}/secret/x.jpg)")


def test_the_newer_outputs_never_replace_what_the_command_reads(run, tmp_path):
    """export through a symlink onto the run's model, datasets index onto the set's label file, the card's --json
    onto an external evaluation, two card outputs naming one file, a report inside a run: each refused in one
    line before any work, the input intact; ``datasets index -o -`` writes the CSV to stdout."""
    rc, _, err = run_cli("evaluate", run / "run", "--bootstrap", "10", "--json", tmp_path / "eval.json", "-q")
    assert rc == 0, err
    r = tmp_path / "run"
    shutil.copytree(run / "run", r)
    shutil.copy(tmp_path / "eval.json", r / "eval.json")
    (r / "external").mkdir()
    shutil.copy(tmp_path / "eval.json", r / "external" / "nih.json")
    before = {p: _digest(p) for p in (r / "best.safetensors", r / "eval.json", r / "external" / "nih.json")}
    os.symlink(r / "best.safetensors", tmp_path / "link.onnx")
    _one_line_exit_2(*run_cli("export", r, "-o", tmp_path / "link.onnx", "--force")[::2], "one of this command's inputs")
    _one_line_exit_2(*run_cli("card", r, "-o", tmp_path / "c.md", "--json", r / "external" / "nih.json")[::2],
                     "one of this command's inputs")
    _one_line_exit_2(*run_cli("card", r, "-o", tmp_path / "c.md", "--html", tmp_path / "c.md")[::2], "name one file")
    _one_line_exit_2(*run_cli("report", r, "-o", r / "external")[::2], "inside the run")
    assert not (tmp_path / "c.md").exists() and sorted(p.name for p in (r / "external").iterdir()) == ["nih.json"]
    assert before == {p: _digest(p) for p in before}
    label = run / "ph" / "CheXpert-v1.0-small" / "valid.csv"
    digest = _digest(label)
    _one_line_exit_2(*run_cli("datasets", "index", run / "ph", "-o", label)[::2], "would replace a file of")
    assert _digest(label) == digest
    rc, out, err = run_cli("datasets", "index", run / "ph", "-o", "-")
    assert rc == 0 and out.startswith("Path,") and out.count("\n") > 10, err
    assert not Path("-").exists()
