"""The documentation as a product: help screens grouped by task with examples that parse, a CLI reference that is
generated (never hand-written), and every runnable example of the guides executed on phantom data."""

from __future__ import annotations

import shlex
from pathlib import Path

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
