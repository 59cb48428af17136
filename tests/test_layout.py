"""The package's shape, checked: no import circle (lazy imports included), small modules and functions.

The layout is the architecture (docs/concepts/run-directory.md, "Layout"): subpackages in the order data flows, arrows pointing
down. These checks keep it that way as the code grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "chexcut"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every chexcut module ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chexcut":
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs
            if len(subs) < len(node.names) and node.module in known:  # names defined in the module itself
                out.add(node.module)
            elif subs and node.module in known and (PKG.parent / node.module.replace(".", "/") / "__init__.py").is_file() \
                    and module_name(path) != node.module and node.module != "chexcut":
                # `from PKG import sub` runs PKG's __init__ first (the root package's runs before any import)
                out.add(node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = "black"
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_registry_is_data_and_the_library_never_imports_the_cli():
    graph = import_graph()
    assert graph["chexcut.models.registry"] <= {"chexcut.errors", "chexcut.choices"}
    for name, deps in graph.items():
        if not name.startswith("chexcut.cli") and name != "chexcut.__main__":
            assert not any(d.startswith("chexcut.cli") for d in deps), f"{name} imports the CLI"


def test_at_most_15_modules_at_the_top_and_no_file_over_500_lines():
    top = [p for p in PKG.glob("*.py")]
    assert len(top) <= 15, sorted(p.name for p in top)
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long


def _is_typer_command(node) -> bool:
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "callback")
               for d in node.decorator_list)


def test_functions_are_short_and_take_few_parameters():
    """60 lines a function, 40 a command's body (its options are its signature), 10 parameters (a command takes
    its options); a function whose ``def`` line says why it is longer (``# longer: ...``: one readable function
    beats three sliced ones) may take half as many lines again."""
    too_long, too_many = [], []
    for path in PKG.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path.relative_to(PKG)}:{node.lineno} {node.name}"
            command = path.parent.name == "cli" and _is_typer_command(node)
            start = node.body[0].lineno if command else node.lineno  # a command's options are its signature
            limit = (40 if command else 60) * (1.5 if "# longer: " in lines[node.lineno - 1] else 1)
            if node.end_lineno - start + 1 > limit:  # a command's body: parse, call, render
                too_long.append(where)
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            n -= bool(a.args) and a.args[0].arg in ("self", "cls")
            if n > 10 and not command:
                too_many.append(where)
    assert not too_long, f"functions over 60 lines (command bodies over 40): {too_long}"
    assert not too_many, f"functions over 10 parameters: {too_many}"


#: The declared layer order, bottom to top (docs/concepts/run-directory.md): a module imports only from its own layer or the
#: layers below. The foundations (errors, files, labels, the bounds) serve everyone; the CLI parses and renders.
LAYERS = (
    {"errors", "version", "labels", "choices", "fileio", "reading", "rundir", "signals", "events", "options"},
    {"data"}, {"models"}, {"evaluation"}, {"tracking"}, {"training"}, {"deploy"}, {"study"}, {"demo"},
    {"chexcut"},  # the package's facade: truncate, save_model, load_model
    {"cli", "__main__"},
)


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "chexcut"
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_every_import_points_down_the_declared_layers():
    graph = import_graph()
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert not up, f"imports against the layer order {[sorted(x) for x in LAYERS]}: {up}"


def test_no_private_name_is_used_across_modules():
    """A module's ``_name`` is its own: another chexcut module neither imports it nor reaches it through an imported
    module (``other._name``). What two modules share is public and named for what it is."""
    known = set(modules())
    crossing = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chexcut"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        aliases.add(a.asname or a.name)  # a module imported by name
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        crossing.append(f"{name}: from {node.module} import {a.name}")
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name.startswith("chexcut") and a.asname}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                crossing.append(f"{name}: {node.value.id}.{node.attr}")
    assert not crossing, crossing


def test_evaluate_takes_its_options_as_typed_parameters_in_under_60_lines():
    """evaluate's signature and body together under 60 lines, with no ``locals()`` bag anywhere in the package."""
    tree = ast.parse((PKG / "cli" / "evaluate.py").read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "evaluate"]
    assert fn.end_lineno - fn.lineno + 1 < 60
    calls = [f"{p.relative_to(PKG)}:{n.lineno}" for p in PKG.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("locals", "vars")
             and not n.args]
    assert calls == []
