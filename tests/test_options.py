"""Every option declared once (chexcut.options): counted over the source and over the command tree."""

import ast
import collections
from pathlib import Path

import pytest

from chexcut.options import BY_NAME, OPTIONS

PKG = Path(__file__).resolve().parents[1] / "chexcut"


def _literal_option_flags() -> list[tuple[str, str]]:
    """(flag, where) for every flag written in a ``typer.Option(...)`` call anywhere in the package."""
    out = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Option":
                for a in node.args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                        out += [(f, f"{path.relative_to(PKG)}:{node.lineno}") for f in a.value.split("/")]
    return out


def test_each_flag_is_declared_once():
    """A flag is written in one declaration (or, for the root's --debug and --version, one Typer call) and nowhere
    else: 41 flags were declared in several places (133 declarations) before."""
    declared = [(f, f"options.py {o.name}") for o in OPTIONS for flags in o.flags for f in flags.split("/")]
    count = collections.Counter(f for f, _ in declared + _literal_option_flags())
    assert {f: n for f, n in count.items() if n > 1} == {}
    assert sorted(f for f, _ in _literal_option_flags()) == ["--debug", "--version"]  # the root's own


def _commands():
    import chexcut.cli  # noqa: F401 (registers the commands)
    from chexcut.cli.panels import command, commands

    return [(path, c) for path, c in commands(command()) if not getattr(c, "commands", None) or path == "datasets"]


def test_every_command_option_is_its_declaration_with_its_one_default():
    """Each option of each command is the declaration of its parameter's name: the same flags and the declared
    default (a signature never writes a second default); an option that fills a settings object has None (the
    settings' default applies, written there once); every declaration is used."""
    used = set()
    for path, c in _commands():
        for p in c.params:
            if p.param_type_name != "option" or p.name == "help":
                continue
            o = BY_NAME.get(p.name)
            assert o is not None, f"{path}: --{p.name} is not declared in chexcut.options"
            flags = [f for spec in o.flags for f in spec.split("/")]
            assert sorted(p.opts + p.secondary_opts) == sorted(flags), (path, p.name)
            assert p.default == o.default or (p.default is None and o.default is None), (path, p.name, p.default)
            assert p.required == (path in o.required_in), (path, p.name)
            if o.fills_for(path):
                assert o.default is None, f"{o.name} fills {o.fills_for(path)}: its default is written there"
            used.add(o.name)
    assert sorted(set(BY_NAME) - used) == []


def test_a_command_parameter_is_named_for_its_declaration():
    """In the CLI's source, a parameter whose default is a declaration is ``name: T = OPT.name``: a value keeps its
    name from the flag to the settings object."""
    wrong = []
    for path in (PKG / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
            defaults += node.args.kw_defaults
            for arg, default in zip(args, defaults):
                if isinstance(default, ast.Attribute) and getattr(default.value, "id", None) == "OPT":
                    if default.attr != arg.arg:
                        wrong.append(f"{path.name}:{arg.lineno} {arg.arg} = OPT.{default.attr}")
                elif isinstance(default, ast.Call) and getattr(default.func, "attr", None) == "Option":
                    if node.name != "_root":
                        wrong.append(f"{path.name}:{arg.lineno} {arg.arg}: a typer.Option of its own")
    assert wrong == []


@pytest.mark.parametrize("command, flag, text", [
    ("evaluate", "--bootstrap", "1000"), ("demo", "--bootstrap", "500"), ("study plan", "--signal-before", "300")])
def test_help_shows_the_settings_default(command, flag, text):
    """An option filling a settings object shows that object's default in --help (not a copy)."""
    (c,) = [c for path, c in _commands() if path == command]
    (p,) = [p for p in c.params if flag in p.opts]
    assert str(p.show_default) == text


def test_bare_json_says_what_it_takes():
    """--json takes PATH or - everywhere (it was a flag on some commands): a bare one is one line saying so."""
    from conftest import run_cli

    rc, out, err = run_cli("list", "--json")
    assert rc == 2 and out == "" and "--json - prints it to stdout" in err and err.count("\n") == 1


def test_json_never_replaces_what_a_command_reads(phantom, trained_run, tmp_path):
    """``--json PATH`` on the commands where it used to be a bare flag: never over the data set, a model file or
    a run's files (each one line, the file kept)."""
    import shutil

    from conftest import run_cli

    data = shutil.copytree(phantom, tmp_path / "data")
    train = data / "CheXpert-v1.0-small" / "train.csv"
    model = trained_run / "best.safetensors"
    before = (train.read_bytes(), model.read_bytes())
    for args in (["study", "plan", "--data", data, "--out", tmp_path / "s", "--archs", "resnet18", "--weights", "none",
                  "--drops", "0", "--json", train],
                 ["inspect", model, "--json", model], ["prepare", data, "--json", train],
                 ["export", trained_run, "-o", tmp_path / "m.onnx", "--json", model]):
        rc, out, err = run_cli(*args)
        assert rc == 2 and err.count("\n") == 1, (args, err)
    assert (train.read_bytes(), model.read_bytes()) == before and not (tmp_path / "s").exists()
