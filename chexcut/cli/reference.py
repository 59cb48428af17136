"""The CLI reference, generated from the command tree itself (never written by hand): every command with its help,
usage, arguments, options (flags, type or choices, default, bounds, panel) and examples.

    python -m chexcut.cli.reference > docs/reference/cli.md

``tests/test_docs.py`` checks that the committed page equals this output, so a renamed option or a changed default
fails CI until the page is generated again.
"""

from __future__ import annotations

from typer._click import Context

HEADER = """# CLI reference

Generated from the Typer app by `python -m chexcut.cli.reference > docs/reference/cli.md`; do not edit by hand
(a test compares this page with the app). Every command also answers `--help` (`-h`), grouped in the same panels.
"""


def _type(param, ctx) -> str:
    if getattr(param, "is_flag", False):
        secondary = getattr(param, "secondary_opts", None)
        return "flag" + (f" (off: `{secondary[0]}`)" if secondary else "")
    shown = param.display_type(ctx).strip("<>").replace(" range", "")
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None or hi is not None:
        shown += f" in {lo if lo is not None else ''}..{hi if hi is not None else ''}"
    if "|" in shown:
        shown = " \\| ".join(f"`{c}`" for c in shown.split("|"))
    return shown + (" (repeatable)" if getattr(param, "multiple", False) else "")


def _default(param) -> str:
    if isinstance(getattr(param, "show_default", None), str):  # the default of the settings object it fills
        return f"`{param.show_default}`"
    d = param.default
    if d is None or getattr(param, "required", False) or callable(d):
        return ""
    if isinstance(d, (list, tuple)):
        return "" if not d else ", ".join(map(str, d))
    if getattr(param, "is_flag", False):
        return "on" if d else "off"
    value = getattr(d, "value", d)
    return f"`{value}`"


def _cell(text) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _command(path: str, cmd) -> list[str]:
    ctx = Context(cmd, info_name=path)
    lines = [f"## `chexcut {path}`", "", _cell(cmd.help or cmd.short_help or ""), ""]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines += [f"```text\nchexcut {path} {usage}\n```", ""]
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    if args:
        lines += ["| argument | type | required | help |", "|---|---|---|---|"]
        lines += [f"| `{p.name.upper()}` | {_type(p, ctx)} | {'yes' if p.required else 'no'} | "
                  f"{_cell(getattr(p, 'help', ''))} |" for p in args]
        lines.append("")
    opts = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
    if opts:
        lines += ["| option | type | default | panel | help |", "|---|---|---|---|---|"]
        for p in opts:
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            lines.append(f"| {flags} | {_type(p, ctx)} | {_default(p)} | {_cell(getattr(p, 'rich_help_panel', None))} | "
                         f"{_cell(p.help)} |")
        lines.append("")
    if cmd.epilog:
        examples = [e.strip() for e in cmd.epilog.split("\n") if e.strip().startswith("chexcut")]
        lines += ["Examples:", "", "```text", *examples, "```", ""]
    return lines


def markdown() -> str:
    """The whole reference page."""
    from chexcut.cli.panels import command, commands

    lines = [HEADER]
    for path, cmd in commands(command()):
        body = _command(path, cmd)
        if getattr(cmd, "commands", None) is not None:  # a group: its subcommands, and its own options if any
            body[0] += " (group)"
            body.insert(4, "Subcommands: " + ", ".join(f"`chexcut {path} {n}`" for n in sorted(cmd.commands)) + "\n")
        lines += body
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
