"""The documentation as a product: help screens grouped by task with examples that parse, a CLI reference that is
generated (never hand-written), and every runnable example of the guides executed on phantom data."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _tree():
    from chexcut.cli.panels import command, commands

    return commands(command())


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option"]


def test_every_option_of_a_big_command_is_in_a_panel():
    from chexcut.cli.panels import PANELS

    for path, cmd in _tree():
        names = {p.name for p in _options(cmd)}
        if len(names) > 12:
            assert path in PANELS, f"{path} has {len(names)} options and no panels (chexcut/cli/panels.py)"
            loose = sorted(p.name for p in _options(cmd) if not getattr(p, "rich_help_panel", None))
            assert not loose, f"{path}: options in no panel: {loose}"
        stale = {n for names_ in PANELS.get(path, {}).values() for n in names_} - names
        assert not stale, f"{path}: panels name options it does not have: {sorted(stale)}"


def test_help_screens_show_no_bool_type_and_end_with_examples_that_parse():
    from chexcut.cli.panels import EXAMPLES

    for path, cmd in _tree():
        if getattr(cmd, "commands", None) is not None and path not in EXAMPLES:
            continue  # a group without options of its own: its subcommands carry the examples
        code, out, _ = run_cli(*path.split(), "--help")
        assert code == 0 and "<bool>" not in out, path
        assert path in EXAMPLES and "Examples:" in out.rsplit("Options", 1)[-1], path
        assert 2 <= len(EXAMPLES[path]) <= 3, path
        for example in EXAMPLES[path]:
            words = shlex.split(example)
            assert words[:1 + len(path.split())] == ["chexcut", *path.split()], example
            cmd.make_context(path, words[1 + len(path.split()):])  # a renamed option fails here


def test_the_cli_reference_is_the_generated_one_and_lists_every_option():
    from chexcut.cli.reference import markdown

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert page == markdown(), "docs/reference/cli.md is stale: python -m chexcut.cli.reference > docs/reference/cli.md"
    for path, cmd in _tree():
        assert f"## `chexcut {path}`" in page, path
        for p in _options(cmd):
            assert f"`{p.opts[0]}`" in page, (path, p.opts[0])


# ----------------------------------------------------------------------------- the guides' examples, executed

PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "reference" not in p.parts)
GROUPS = ("study", "datasets", "weights")
_STEPS = ["--max-steps", "2", "--image-size", "48", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
#: What the suite appends to each command so that it runs in seconds on a CPU (the last value of an option wins).
SMALL = {
    "truncate": ["--weights", "none"],
    "phantom": ["--n", "40", "--image-size", "48", "-q"],
    "prepare": ["--image-size", "40", "--workers", "1", "-q"],
    "evaluate": ["--bootstrap", "20", "--workers", "0", "-q"],
    "ensemble": ["--bootstrap", "20", "-q"],
    "probe": ["--weights", "none", "--image-size", "32", "--bootstrap", "20", "--workers", "0", "-q"],
    "report": ["--bootstrap", "20"],
    "study plan": [*_STEPS, "--bootstrap", "20", "--weights", "none", "--seeds", "0", "--drops", "0,1"],
    "study run": ["-q"],
    "explain": ["--limit", "2", "--check-limit", "20", "-q"],
    "bench": ["--max-time", "0.1", "--image-size", "64", "--batch", "1"],
    "export": ["--image-size", "64"],
    "demo": ["--n", "160", "--image-size", "32", "--epochs", "1", "--archs", "resnet18", "--drops", "0,1",
             "--bootstrap", "20", "--offline"],
}


def examples(page: Path) -> list[str]:
    """The commands of a page's ``bash`` blocks (continuations joined). Any other block is text: never run."""
    out, block, inside = [], [], False
    for line in page.read_text().splitlines():
        if line.strip() == "```bash":
            inside, block = True, []
        elif line.strip() == "```" and inside:
            inside = False
            out += [c for c in "\n".join(block).replace("\\\n", " ").splitlines() if c.strip()]
        elif inside:
            block.append(line)
    return out


def small(words: list[str]) -> list[str]:
    path = " ".join(words[1:3]) if words[1] in GROUPS else words[1]
    extra = list(SMALL.get(path, []))
    if path == "finetune":
        extra = ["--max-steps", "3", "--device", "cpu"] if "--resume" in words else [*_STEPS] + (
            [] if words[2].endswith(".safetensors") else ["--weights", "none"])
    return words + extra


@pytest.fixture(scope="module")
def workspace(phantom, tmp_path_factory):
    """``data/`` as the guides expect it: ``chexpert`` (the shared phantom), ``nih`` and ``padchest`` (layout
    phantoms) and ``test-set`` (files in the shape of rajpurkarlab/cheXpert-test-set-labels)."""
    import shutil

    import numpy as np
    import pandas as pd
    from conftest import public_truth

    from chexcut.data.phantom_layouts import make_layout_phantom
    from chexcut.labels import COMPETITION_LABELS

    base = tmp_path_factory.mktemp("docs-workspace")
    shutil.copytree(phantom, base / "data" / "chexpert")
    for name in ("nih", "padchest"):
        make_layout_phantom(base / "data" / name, name, 40, 48, seed=1)
    ts = base / "data" / "test-set"
    for sub in ("results", "radiologists"):
        (ts / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, truth = public_truth(ts, rng, n=200)
    for k, name in enumerate(("model_a", "model_b")):
        p = {c: 1 / (1 + np.exp(-(2 * truth[c] - 1) * (1.5 - 0.5 * k) - rng.normal(size=len(study))))
             for c in COMPETITION_LABELS}
        pd.DataFrame({"Study": study, **p}).to_csv(ts / "results" / f"{name}.csv", index=False)
    for reader in ("bc4", "bc6", "bc8"):
        reads = {c: np.where(rng.random(len(study)) < 0.15, 1 - truth[c], truth[c]) for c in COMPETITION_LABELS}
        pd.DataFrame({"Study": study, **reads}).to_csv(ts / "radiologists" / f"{reader}.csv", index=False)
    pd.DataFrame({"Study": study, "Sex": rng.choice(["Female", "Male"], len(study))}).to_csv(
        ts / "demographics.csv", index=False)
    return base


def test_every_bash_block_of_the_docs_is_a_chexcut_command():
    for page in PAGES:
        for command in examples(page):
            words = shlex.split(command, comments=True)
            assert words and words[0] == "chexcut", (f"{page.relative_to(ROOT)}: {command!r} is not a chexcut "
                                                     f"command: mark its block ```text if the tests cannot run it")


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)], ids=lambda p: p.stem)
def test_the_examples_of_a_page_run(page, workspace, tmp_path, torch_home):
    import shutil

    here = tmp_path / "w"
    shutil.copytree(workspace, here)
    for command in examples(page):
        words = small(shlex.split(command, comments=True))
        code, out, err = run_cli(*words[1:], cwd=here)
        assert code == 0, f"{page.relative_to(ROOT)}: {' '.join(words)}\n{err[-1500:]}"


def test_every_performance_figure_names_its_machine_and_script():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import stale

    rows = stale.rows()
    assert len(rows) >= 10
    for r in rows:
        assert r["machine"] and r["script"], r
        for f in stale.measured(r["script"]):
            assert (ROOT / f).exists(), (r["what"], f)


def _python_blocks(page: Path) -> list[str]:
    text = page.read_text()
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def test_the_python_examples_run(tmp_path, monkeypatch, torch_home):
    ran = 0
    monkeypatch.chdir(tmp_path)
    for page in PAGES:
        for code in _python_blocks(page):
            exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})
            ran += 1
    assert ran >= 1
