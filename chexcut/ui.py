"""Everything a person sees: rich tables and progress, in one place.

Machine output (JSON, CSV) never goes through here; human tables go to stdout unless
the command's machine output has stdout, progress always goes to stderr.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def human(n: float) -> str:
    """12,345,678 -> '12.35M'."""
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def print_json(obj) -> None:
    """Exact JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def arch_list_table(rows: list[dict]) -> Table:
    t = Table(title="Supported architectures", title_justify="left")
    for col, just in (("arch", "left"), ("source", "left"), ("params", "right"), ("ImageNet top-1", "right"),
                      ("blocks", "right"), ("paper", "center")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["arch"], r["source"], f"{r['params']:,}", f"{r['top1']:.2f}" if r["top1"] else "-",
                  str(r["num_blocks"]), "yes" if r["paper"] else "")
    return t


def anatomy_tables(a: dict, highlight_drop: int | None = None) -> list[Table]:
    size = a["image_size"]
    blocks = Table(title=f"{a['arch']} ({a['source']}) blocks at {size}px", title_justify="left")
    for col in ("#", "block", "params", "cum. params", "channels", "reduction", "output"):
        blocks.add_column(col, justify="left" if col == "block" else "right")
    blocks.add_row("", "stem", f"{a['stem_params']:,}", f"{a['stem_params']:,}", "", "", "", style="dim")
    for b in a["blocks"]:
        h, w = b["spatial"]
        blocks.add_row(str(b["index"]), b["name"], f"{b['params']:,}", f"{b['cum_params']:,}",
                       str(b["out_channels"]), f"/{b['reduction']}", f"{h}x{w}")
    trunc = Table(title=f"Truncation levels ({a['n_labels']}-way head)", title_justify="left")
    for col in ("drop", "keep", "params", "% of full", "compression", "MACs", "features"):
        trunc.add_column(col, justify="right")
    for t in a["truncations"]:
        style = "bold green" if highlight_drop == t["drop"] else None
        trunc.add_row(str(t["drop"]), str(t["keep"]), f"{t['params']:,}", f"{100 * t['fraction']:.1f}%",
                      f"{t['compression']:.2f}x", human(t["macs"]), str(t["out_channels"]), style=style)
    return [blocks, trunc]


def truncate_table(spec: dict, full: dict, cut: dict) -> Table:
    t = Table(title=f"{spec['arch']}: drop {spec['drop']} (keep {spec['keep']} of {spec['num_blocks']} blocks)",
              title_justify="left")
    t.add_column("")
    t.add_column("full (drop 0)", justify="right")
    t.add_column(f"drop {spec['drop']}", justify="right")
    t.add_row("params", f"{full['params']:,}", f"{cut['params']:,}")
    t.add_row(f"MACs at {spec['image_size']}px", human(full["macs"]), human(cut["macs"]))
    t.add_row("compression", "1.00x", f"{full['params'] / cut['params']:.2f}x")
    t.add_row("blocks kept", str(spec["num_blocks"]), str(spec["keep"]))
    t.add_row("feature channels", str(full["out_channels"]), str(cut["out_channels"]))
    t.add_row("weights", "", spec["weights"].get("id") or spec["weights"].get("path") or spec["weights"]["kind"])
    return t


class progress_bar:
    """``with progress_bar("decoding", total) as update: update(done, total)`` on stderr (or nothing if quiet)."""

    def __init__(self, description: str, total: int | None = None, quiet: bool = False):
        self.description, self.total, self.quiet = description, total, quiet

    def __enter__(self):
        if self.quiet:
            return lambda done, total=None, **fields: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=err, transient=False)
        self.progress.__enter__()
        self.task = self.progress.add_task(self.description, total=self.total, info="")

        def update(done, total=None, info=""):
            self.progress.update(self.task, completed=done, total=total or self.total, info=info)

        return update

    def __exit__(self, *exc):
        if not self.quiet:
            self.progress.__exit__(*exc)
        return False


def prevalence_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("label", "positive", "negative", "uncertain", "blank", "-> train pos", "-> train neg", "masked"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for r in rows:
        t.add_row(r["label"], str(r["positive"]), str(r["negative"]), str(r["uncertain"]), str(r["blank"]),
                  str(r["train_pos"]), str(r["train_neg"]), str(r["masked"]))
    return t


def _f(x, fmt="{:.4f}"):
    return "-" if x is None else fmt.format(x)


def evaluation_table(r: dict) -> Table:
    comp = r.get("compare")
    title = (f"AUROC, {r['n']} {'studies' if r.get('level') == 'study' else 'images'}"
             + (f", {int(r['ci'] * 100)}% bootstrap CI ({r['bootstrap']} replicates, by {r['cluster']})"
                if r["bootstrap"] else ""))
    t = Table(title=title, title_justify="left")
    for col in ("label", "pos/neg", "AUROC", "CI"):
        t.add_column(col, justify="left" if col == "label" else "right")
    if comp:
        for col in ("delta", "delta CI", "p"):
            t.add_column(col, justify="right")
    crow = {c["label"]: c for c in (comp or {}).get("labels", [])}

    def ci(lo, hi):
        return "-" if lo is None else f"{lo:.4f}-{hi:.4f}"

    for row in r["labels"]:
        auc = _f(row["auroc"]) if row["auroc"] is not None else f"[dim]n/e ({row.get('not_evaluable', '')})[/]"
        cells = [row["label"], f"{row['n_pos']}/{row['n_neg']}", auc, ci(row["ci_low"], row["ci_high"])]
        if comp:
            c = crow[row["label"]]
            cells += [_f(c["delta"], "{:+.4f}"), ci(c["ci_low"], c["ci_high"]), _f(c["p"], "{:.3g}")]
        t.add_row(*cells)
    for key, name in (("mean_competition", "mean (5 competition)"), ("mean_all", "mean (all evaluable)")):
        m = r[key]
        if not m:
            continue
        cells = [f"[bold]{name}[/]", f"{m['labels']} labels", f"[bold]{_f(m['auroc'])}[/]", ci(m["ci_low"], m["ci_high"])]
        if comp:
            c = comp.get(key) or {}
            cells += [_f(c.get("delta"), "{:+.4f}"), ci(c.get("ci_low"), c.get("ci_high")), _f(c.get("p"), "{:.3g}")]
        t.add_row(*cells, end_section=key == "mean_competition" and False)
    if comp:
        t.caption = comp["verdict"]
        t.caption_justify = "left"
    return t


class TrainProgress:
    """A rich progress bar fed by finetune's events: loss, images/s, validation AUROC, ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None

    def __enter__(self):
        return self.emit

    def emit(self, event: dict) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        kind = event.get("event")
        if kind == "start":
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err)
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=event["last_step"], completed=event["step"], info="")
            err.print(f"{event['train_images']} train / {event['valid_images']} valid images on {event['device']} "
                      f"({event['precision']}, {'cached' if event['cached'] else 'decoding'} images)")
        elif kind == "log" and self.progress:
            info = f"loss {event['train_loss']:.4f}  {event['images_per_s']:.0f} img/s"
            if event.get("val_mean_auroc") is not None:
                info += f"  val AUROC {event['val_mean_auroc']:.4f}"
            self.progress.update(self.task, completed=event["step"], info=info)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)
        return False
