"""List the performance figures a later change may have made stale.

    python benchmarks/stale.py [--all]

Reads the table of docs/performance.md (what | figure | machine | script). For each figure it finds the commit
that recorded it (the first commit whose README.md or docs/performance.md held that figure's text) and what its
script measures (the script and the chexcut modules it imports; all of chexcut/ when it runs the CLI). A figure
is stale when any of those files changed since that commit. Prints the stale ones (``--all``: every figure).
"""

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows(page: Path = ROOT / "docs" / "performance.md") -> list[dict]:
    """The figures of the first table: what, figure, machine, script."""
    out, table = [], False
    for line in page.read_text().splitlines():
        if line.startswith("| what | figure | machine | script |"):
            table = True
            continue
        if table and not line.startswith("|"):
            break
        if table and not line.startswith("| ---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            out.append(dict(zip(("what", "figure", "machine", "script"), cells)))
    return out


def measured(script: str) -> list[str]:
    """The files a benchmark script measures."""
    m = re.search(r"`(benchmarks/[\w.]+\.py)`", script)
    if not m:
        return ["chexcut"]
    path = ROOT / m.group(1)
    source = path.read_text()
    if "-m\", \"chexcut\"" in source or "'-m', 'chexcut'" in source or '"chexcut"' in source:
        return [m.group(1), "chexcut"]
    mods = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chexcut"):
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("chexcut")}
    files = [m.group(1)]
    for mod in sorted(mods):
        base = ROOT / Path(*mod.split("."))
        files.append(str((base.with_suffix(".py") if base.with_suffix(".py").is_file() else base).relative_to(ROOT)))
    return files


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def recorded_at(figure: str) -> str | None:
    """The first commit whose README.md or docs/performance.md held ``figure``'s text."""
    text = figure.split(" (")[0][:60]
    found = git("log", "--reverse", "--format=%H", "-S", text, "--", "README.md", "docs/performance.md").split()
    return found[0] if found else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    a = ap.parse_args()
    if git("rev-parse", "--is-shallow-repository") == "true":
        sys.exit("a shallow clone: the history that dates the figures is missing (git fetch --unshallow)")
    stale = 0
    for r in rows():
        commit = recorded_at(r["figure"])
        files = measured(r["script"])
        changed = git("diff", "--name-only", f"{commit}..HEAD", "--", *files).split() if commit else ["(unknown)"]
        stale += bool(changed)
        if changed or a.all:
            print(f"{'STALE' if changed else 'ok   '} {r['what'][:70]}: {r['figure'][:40]} "
                  f"(recorded at {commit[:8] if commit else '?'}; {len(changed)} measured files changed since)")
    print(f"{stale} of {len(rows())} figures may be stale")


if __name__ == "__main__":
    main()
