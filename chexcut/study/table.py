"""The report's table model, its inert Markdown text and plot files, shared by every part of the report that renders: a
:class:`ReportTable` is built once from the report JSON, written as markdown (``report.md``) and drawn by
:mod:`chexcut.cli.ui` in the terminal, so the two cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def fmt(v, spec=".4f") -> str:
    """A figure as text; ``n/a`` where there is none."""
    return "n/a" if v is None else format(v, spec)


def ci(lo, hi, spec=".3f") -> str:
    """`` [lo, hi]``, or nothing without an interval."""
    return "" if lo is None or hi is None else f" [{format(lo, spec)}, {format(hi, spec)}]"


def md_text(text) -> str:
    """Text for the Markdown card, inert: HTML (``<script>``, ``<img onerror>``) shown as text by entities, link
    and image syntax (``[..](javascript:..)``) broken by escaping its brackets, table cells kept whole (``|``) and
    every string on one line (a newline could open a block). Every interpolation of card.md.j2 goes through it."""
    out = str(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace("[", "\\[").replace("]", "\\]").replace("|", "\\|").replace("`", "\\`")
    return " ".join(out.splitlines())


@dataclass
class ReportTable:
    """One table of the report, as plain text cells: the markdown and the terminal render the same rows."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # paragraphs after the table (or instead of it)
    warn: bool = False  # a table that says something is wrong (leakage, missing runs)

    def markdown(self) -> list[str]:
        """The table as Markdown, every string inert (:func:`md_text`: label, folder and set names are the
        user's)."""
        out = ["", f"## {md_text(self.title)}", ""]
        if self.rows:
            out += ["| " + " | ".join(map(md_text, self.columns)) + " |", "|" + "---|" * len(self.columns)]
            out += ["| " + " | ".join(map(md_text, r)) + " |" for r in self.rows]
        for t in self.text:
            out += ["", md_text(t)]
        return out


def save_plot(fig, ax, path: Path) -> Path:
    """The figure as a PNG at ``path`` (written atomically), its grid drawn; the figure closed."""
    import matplotlib.pyplot as plt

    from chexcut.fileio import atomic_path

    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
