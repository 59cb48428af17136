"""Hostile inputs to a study (round 5): external sets that are the training set, listed twice or sharing its
patients under other file names; a plan whose runs repeat an id; a launcher that cannot be parsed or found, or is
given to a rank. Each is one line, exit 2, before any work and with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from chexcut.errors import ChexcutError

SMALL = ("--archs", "resnet18", "--weights", "none", "--drops", "0", "--image-size", "32")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Small phantoms: a CheXpert-layout training set, NIH and PadChest layouts, two CheXpert-layout folders of one
    name in two places."""
    from chexcut.data.phantom import make_phantom
    from chexcut.data.phantom_layouts import make_layout_phantom

    root = tmp_path_factory.mktemp("sets")
    return {"chexpert": make_phantom(root / "train", n=40, image_size=32, seed=0),
            "nih": make_layout_phantom(root / "nih", "nih", 40, 32, seed=1),
            "padchest": make_layout_phantom(root / "padchest", "padchest", 40, 32, seed=2),
            "a": make_phantom(root / "a", n=40, image_size=32, seed=3),
            "b": make_phantom(root / "b", n=40, image_size=32, seed=4)}


def _refused(args, words, out: Path | None = None):
    """``chexcut ARGS``: exit 2, one line saying ``words``; ``out`` (a study folder) never made."""
    rc, _, err = run_cli(*args)
    assert rc == 2 and err.startswith("chexcut: error: ") and err.count("\n") == 1, (args, rc, err)
    assert words in err, (words, err)
    if out is not None:
        assert not out.exists(), out
    return err


def _plan(data, out, *extra):
    return ("study", "plan", "--data", data, "--out", out, *SMALL, *extra)


def test_an_external_set_that_is_the_training_set_is_refused(sets, tmp_path):
    train, nih = sets["chexpert"], sets["nih"]
    (tmp_path / "link").symlink_to(train)
    out = tmp_path / "s"
    for data, ext in ((train, train), (train, f"{train}/../{train.name}"), (train, tmp_path / "link"),
                      (train, f"chexpert:{train}"), (f"nih:{nih}", nih), (nih, f"nih:{nih}")):
        err = _refused(_plan(data, out, "--external", ext), "is the training set itself (--data ", out)
        folder = (nih if "nih" in str(data) else train).resolve()
        assert f"{folder} is the training set itself" in err and err.startswith("chexcut: error: --external "), err


def test_one_external_set_listed_twice_is_refused(sets, tmp_path):
    nih = sets["nih"]
    (tmp_path / "link").symlink_to(nih)
    out = tmp_path / "s"
    for given in (f"{nih},{nih}", f"{nih},nih:{nih}", f"nih:{nih},{tmp_path / 'link'}", f"{nih},{nih}/../nih"):
        err = _refused(_plan(sets["chexpert"], out, "--external", given), "--external lists one set twice", out)
        assert f"nih in {nih.resolve()}" in err and "give each external set once" in err


def _renamed_copy(src: Path, dest: Path, old: str, new: str, files: tuple[str, ...]) -> Path:
    """The label files of ``src`` with every image named otherwise (``old`` -> ``new``): the same patients under
    other file names, as a second copy of a set (CheXpert's small and full) holds them."""
    dest.mkdir(parents=True)
    for name in files:
        (dest / name).write_text((src / name).read_text().replace(old, new))
    return dest


def test_an_external_set_sharing_patients_under_other_file_names_is_refused(sets, tmp_path):
    out = tmp_path / "s"
    full = _renamed_copy(sets["chexpert"], tmp_path / "full" / "CheXpert-v1.0", "CheXpert-v1.0-small/",
                         "CheXpert-v1.0/", ("train.csv", "valid.csv"))
    err = _refused(_plan(sets["chexpert"], out, "--external", full), "shares 0 images and ", out)
    assert "patients with the runs' training rows" in err and "first: patient0" in err and "inflated" in err
    nih = sets["nih"]
    copy = _renamed_copy(nih, tmp_path / "nih2", "_0", "_9", ("Data_Entry_2017_v2020.csv",))
    err = _refused(_plan(f"nih:{nih}", out, "--external", f"nih:{copy}"), "shares 0 images and ", out)
    # the same images by path are refused whatever the set (the check evaluate makes), here at plan time
    same = tmp_path / "nih3"
    same.mkdir()
    shutil.copy(nih / "Data_Entry_2017_v2020.csv", same)
    err = _refused(_plan(f"nih:{nih}", out, "--external", same), "shares ", out)
    assert " 0 images" not in err


def test_distinct_external_sets_plan_fine(sets, tmp_path):
    """Sets in other id spaces (NIH's patient 12 is not CheXpert's patient00012), and two sets whose folders share
    a name (told apart by -2), plan as before."""
    out = tmp_path / "s"
    rc, _, err = run_cli(*_plan(sets["chexpert"], out, "--external", f"nih:{sets['nih']},{sets['padchest']}"))
    assert rc == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert [e["name"] for e in plan["evaluate_options"]["external"]] == ["nih", "padchest"]
    out2 = tmp_path / "s2"
    rc, _, err = run_cli(*_plan(f"nih:{sets['nih']}", out2, "--external", f"{sets['a']},{sets['b']}"))
    assert rc == 0, err
    plan = json.loads((out2 / "plan.json").read_text())
    assert [e["name"] for e in plan["evaluate_options"]["external"]] == ["CheXpert-v1.0-small",
                                                                         "CheXpert-v1.0-small-2"]


def test_a_grid_naming_one_run_twice_is_refused(sets, tmp_path):
    out = tmp_path / "s"
    weights = tmp_path / "w" / "none.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    base = ("study", "plan", "--data", sets["chexpert"], "--out", out, "--image-size", "32")
    for extra, words in ((("--archs", "resnet18", "--weights", "none", "--seeds", "1,1"), "--seeds lists 1 twice"),
                         (("--archs", "resnet18", "--weights", "none", "--drops", "0,0"), "--drops lists 0 twice"),
                         (("--archs", "resnet18,ResNet18", "--weights", "none"),
                          "--archs lists resnet18 and ResNet18, which name the same runs (resnet18)"),
                         (("--archs", "resnet18", "--weights", "none,none"), "--weights lists none twice"),
                         (("--archs", "resnet18", "--weights", f"none,{weights}"),
                          f"--weights lists none and {weights}, which name the same runs (none)")):
        _refused((*base, *extra), words, out)


def _planned(sets, tmp_path) -> Path:
    s = tmp_path / "s"
    rc, _, err = run_cli(*_plan(sets["chexpert"], s, "--seeds", "0,1"))
    assert rc == 0, err
    return s


def test_a_plan_repeating_a_run_id_is_refused_when_read(sets, tmp_path):
    s = _planned(sets, tmp_path)
    plan = json.loads((s / "plan.json").read_text())
    first = plan["runs"][0]
    (s / "plan.json").write_text(json.dumps({**plan, "runs": [first, dict(first)]}))
    for args in (("study", "exec", s, "--index", "1"), ("study", "exec", s, first["id"]), ("study", "status", s)):
        _refused(args, f"runs[1] repeats the id {first['id']!r} of runs[0]")
    assert not (s / "runs").exists()


def test_a_launcher_that_cannot_start_is_refused_at_the_call(sets, tmp_path, monkeypatch):
    from chexcut.study.execute import execute
    from chexcut.study.plan import load_plan

    s = _planned(sets, tmp_path)
    tool = tmp_path / "bin" / "fake-torchrun"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:/usr/bin:/bin")
    cases = ((("--launcher", "fake-torchrun --nproc_per_node 'x"), "is not a command line: no closing quotation"),
             (("--launcher", "no-such-launcher-6f2 --nproc_per_node 2"),
              "the program 'no-such-launcher-6f2' is not found on PATH"),
             (("--launcher", "./nowhere/torchrun"), "the program './nowhere/torchrun' is not an executable file"),
             (("--launcher", " "), "--launcher is empty"),
             (("--step", "finetune", "--launcher", "fake-torchrun"),
              "with --step finetune: a rank of a launch must not launch again"))
    for extra, words in cases:
        _refused(("study", "exec", s, "--index", "0", *extra), words)
        assert not (s / "runs").exists(), extra
    plan = load_plan(s)  # the library's executor checks it at the call too
    with pytest.raises(ChexcutError, match="not found on PATH"):
        execute(s, plan["runs"][0], plan, launcher="no-such-launcher-6f2")
    with pytest.raises(ChexcutError, match="must not launch again"):
        execute(s, plan["runs"][0], plan, step="finetune", launcher="fake-torchrun")
    assert not (s / "runs").exists()


def test_a_launcher_gone_at_run_time_is_one_line():
    from chexcut.study.execute import _wait_for

    with pytest.raises(ChexcutError) as e:
        _wait_for(["/nonexistent/torchrun", "-m", "chexcut"], "resnet18-none-d0-s0")
    assert str(e.value) == ("the launcher '/nonexistent/torchrun' of resnet18-none-d0-s0 could not be started: "
                            "No such file or directory")
