"""Everything a person sees: rich tables and progress, in one place.

Machine output (JSON, CSV) never goes through here; human tables go to stdout unless
the command's machine output has stdout, progress always goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chexcut.rundir import RunDir

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
    from chexcut.fileio import json_text

    sys.stdout.write(json_text(obj))
    sys.stdout.flush()


def bench_table(res: dict) -> Table:
    """Per level: params, MACs, latency (median and p10-p90), throughput, memory, and ratios vs drop 0."""
    thr_b = res["levels"][0]["throughput_batch"] if res["levels"] else ""
    t = Table(title=f"{res['arch']} on {res['device_name']} ({res['runtime']}, {res['precision']}, {res['image_size']}px"
                    + (f", {res['threads']} threads" if res.get("threads") else "") + ")", title_justify="left",
              caption="x: params ratio / latency speedup / throughput speedup vs drop 0", caption_justify="left")
    for col in ("drop", "params", "MACs", "ms @1", "p10-p90", f"img/s @{thr_b}", "MB", "x vs drop 0"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in res["levels"]:
        lat = r["latency_ms"]
        ratios = " / ".join(_f(r.get(k), "{:.2f}") for k in ("params_ratio", "speedup_latency", "speedup_throughput"))
        t.add_row(str(r["drop"]), human(r["params"]), human(r["macs"]), f"{lat['median']:.2f}",
                  f"{lat['p10']:.2f}-{lat['p90']:.2f}", f"{r['throughput_img_s']:.0f}", f"{r['peak_mem_mb']:.0f}", ratios)
    return t


def explain_checks_table(res: dict) -> Table:
    r = res["randomisation"]
    images = res.get("pointing_game_images")
    t = Table(title=f"Heatmap checks: {res['verdict'].upper()}. Randomisation {r['verdict']}: rank correlation "
                    f"{_f(r['rank_correlation'], '{:.2f}')} (trained vs re-initialised model; low is good). "
                    + (f"Pointing game on {images} masked images:" if images
                       else f"Pointing game not judged: {res.get('pointing_game_reason', '')}"),
              title_justify="left")
    for col in ("label", "hits", "n", "rate", "95% CI", "chance", "p", "verdict"):
        t.add_column(col, justify="left" if col in ("label", "verdict") else "right",
                     no_wrap=col == "label")
    for name, p in (res.get("pointing_game") or {}).items():
        ci = "-" if p["ci_low"] is None else f"{p['ci_low']:.2f}-{p['ci_high']:.2f}"
        colour = {"passed": "green", "failed": "bold red"}.get(p["verdict"], "yellow")
        t.add_row(name, str(p["hits"]), str(p["n"]), _f(p["rate"], "{:.2f}"), ci, _f(p["chance"], "{:.2f}"),
                  _f(p["p"], "{:.2g}"), f"[{colour}]{p['verdict']}[/]")
    return t


class progress_bar:
    """``with progress_bar("decoding", total) as update: update(done, total)`` on stderr (or nothing if quiet)."""

    def __init__(self, description: str, total: int | None = None, quiet: bool = False):
        self.description, self.total, self.quiet = description, total, quiet

    def __enter__(self):
        if self.quiet:
            return lambda done, total=None, **fields: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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


class lazy_progress_bar(progress_bar):
    """A :class:`progress_bar` that appears at the first update: checks that fail first print no bar."""

    def __enter__(self):
        self.started = None

        def update(done, total=None, info=""):
            if self.started is None:
                self.started = progress_bar.__enter__(self)
            self.started(done, total, info=info)

        return update

    def __exit__(self, *exc):
        if getattr(self, "started", None) is not None:
            return progress_bar.__exit__(self, *exc)
        return False


def prevalence_table(rows: list[dict], title: str) -> Table:
    # label names stay whole at 80 columns: short headers, no vertical rules (explained in the caption)
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
              caption="unc: uncertain (-1); tr+ / tr-: positives and negatives as training sees them; "
                      "masked: left out of the loss", caption_justify="left")
    for col in ("label", "pos", "neg", "unc", "blank", "tr+", "tr-", "masked"):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=col == "label")
    for r in rows:
        if not r.get("annotated", True):
            t.add_row(r["label"], "", "", "", str(r["blank"]), "[dim]not annotated in this data set[/]", "", "",
                      style="dim")
            continue
        t.add_row(r["label"], str(r["positive"]), str(r["negative"]), str(r["uncertain"]), str(r["blank"]),
                  str(r["train_pos"]), str(r["train_neg"]), str(r["masked"]))
    return t


def _f(x, fmt="{:.4f}"):
    return "-" if x is None else fmt.format(x)


def _ci(lo, hi, fmt="{:.3f}") -> str:
    return "no CI" if lo is None or hi is None else f"{fmt.format(lo)} to {fmt.format(hi)}"


#: The terminal tables figures are columns of (:mod:`chexcut.evaluation.figures`): title, and whether it shows when
#: empty; a table a figure names that is not here is titled by its name ("figures": the per-label figures).
FIGURE_TABLES = {
    "precision-recall": ("Precision-recall (AP's chance level is the prevalence)", True),
    "calibration": ("Calibration (10 equal-width bins; the logistic recalibration logit P(y) = a + b logit(p): "
                    "b = 1 with a = 0 is perfect; a is the joint fit's, not calibration-in-the-large)", False),
    "figures": ("Per-label figures (CIs: the evaluation's bootstrap)", False),
}
OWN_TABLES = ("auroc", "operating")  # tables drawn by their own function (evaluation_table, operating_tables)


def figure_table(r, table: str) -> Table | None:
    """One terminal table of declared figures (``Figure.table``): a row per label with a value (the precision-recall
    table with its prevalence, AP's chance level), each figure with its CI where declared (``table_ci``)."""
    from chexcut.evaluation import figures
    from chexcut.evaluation.result import Evaluation

    figs = figures.in_table(table)
    title, always = FIGURE_TABLES.get(table, (table, False))
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    context = ["prevalence"] if table == "precision-recall" else []
    columns = [c for f in figs for c in ((f.name, f"{f.name} CI") if f.table_ci and f.resampled else (f.name,))]
    for col in ("label", *context, *columns):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=True)
    for row in Evaluation.of(r).labels:
        found = [row.figure(f) for f in figs]
        if all(c[f.key] is None for f, c in zip(figs, found)):
            continue
        cells = [_f(row.prevalence, "{:.3f}")] if context else []
        for f, c in zip(figs, found):
            cells.append(f.text(c[f.key]))
            if f.table_ci and f.resampled:
                cells.append(_ci(c[f.ci_keys[0]], c[f.ci_keys[1]], "{:" + f.fmt + "}"))
        t.add_row(row.label, *cells)
    return t if t.row_count or always else None


def evaluation_extra_tables(r: dict) -> list[Table]:
    """The declared figures' tables (average precision beside prevalence, calibration, ...), subgroups and their
    gaps, operating points and readers."""
    from chexcut.evaluation import figures

    tables = [t for name in figures.tables() if name not in OWN_TABLES if (t := figure_table(r, name)) is not None]
    if r.get("subgroups"):
        g = Table(title="Subgroups (the whole set's resamples)", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("by", "group", "n", "5-task AUROC", "CI", "5-task AP"):
            g.add_column(col, justify="left" if col in ("by", "group") else "right", no_wrap=col in ("group", "CI"))
        for s in r["subgroups"]:
            m = s["mean_competition"] or {}
            g.add_row(s["by"], s["group"], str(s["n"]), _f(m.get("auroc"), "{:.3f}"),
                      _ci(m.get("ci_low"), m.get("ci_high")), _f(m.get("average_precision"), "{:.3f}"))
        tables.append(g)
        gaps = [x for x in r.get("subgroup_gaps", []) if x["label"] == "mean_competition"]
        if gaps:
            d = Table(title="Gaps between groups, 5-task mean AUROC (a minus b; two-sided bootstrap p)",
                      title_justify="left", box=box.SIMPLE_HEAD)
            for col in ("by", "a", "b", "delta", "CI", "p"):
                d.add_column(col, justify="left" if col in ("by", "a", "b") else "right", no_wrap=col == "CI")
            for x in gaps:
                d.add_row(x["by"], x["groups"][0], x["groups"][1], f"{x['delta']:+.3f}",
                          _ci(x["ci_low"], x["ci_high"], "{:+.3f}"), _f(x["p"], "{:.3g}"))
            tables.append(d)
    return tables + operating_tables(r)


def operating_tables(r: dict) -> list[Table]:
    """Operating points (flagged when chosen on the evaluated set) and, per label, readers against the model.
    Intervals are in the JSON; the tables keep label names whole at 80 columns."""
    from chexcut.evaluation import figures

    tables = []
    points = [p for p in r.get("operating_points") or [] if p.get("sensitivity") is not None]
    if points:
        t = Table(title="Operating points (* chosen on this set: optimistic; CIs in --json)", title_justify="left",
                  box=box.SIMPLE_HEAD, caption="a case is positive when its score >= threshold", caption_justify="left",
                  padding=(0, 1), pad_edge=False, collapse_padding=True)
        figs = figures.in_table("operating")
        for col in ("label", "rule", "threshold", *(f.name for f in figs)):
            t.add_column(col, justify="left" if col in ("label", "rule") else "right", no_wrap=True)
        for p in points:
            rule = p["rule"].replace("specificity", "spec").replace("sensitivity", "sens")
            t.add_row(p["label"], rule + ("*" if p.get("optimistic") else ""),
                      "none" if p["threshold"] is None else f"{p['threshold']:.4g}", *(f.text(p.get(f.key)) for f in figs))
        tables.append(t)
    readers = [x for x in r.get("readers") or [] if x.get("sensitivity") is not None]
    summary = {s["label"]: s for s in r.get("readers_summary") or []}
    for label in dict.fromkeys(x["label"] for x in readers):
        s = summary.get(label, {})
        t = Table(title=f"{label}: {s.get('below_model_curve', 0)} of {s.get('of', 0)} readers below the model's "
                        f"ROC curve", title_justify="left", box=box.SIMPLE_HEAD,
                  caption="m.sens: the model's sensitivity at the reader's specificity; m.spec: its specificity at "
                          "the reader's sensitivity; delta = model - reader, "
                          "two-sided bootstrap p; CIs in --json", caption_justify="left", padding=(0, 1), pad_edge=False,
                  collapse_padding=True)
        for col in ("reader", "sens", "spec", "m.sens", "delta", "p", "m.spec", "delta", "p", "below"):
            t.add_column(col, justify="left" if col == "reader" else "right", no_wrap=True)
        for x in (x for x in readers if x["label"] == label):
            t.add_row(x["reader"], f"{x['sensitivity']:.3f}", f"{x['specificity']:.3f}",
                      f"{x['model_sensitivity_at_reader_specificity']:.3f}", f"{x['delta_sensitivity']:+.3f}",
                      _f(x["p_sensitivity"], "{:.2g}"), f"{x['model_specificity_at_reader_sensitivity']:.3f}",
                      f"{x['delta_specificity']:+.3f}", _f(x["p_specificity"], "{:.2g}"),
                      "yes" if x["below_model_curve"] else "no")
        tables.append(t)
    return tables


def _auroc_title(r) -> str:
    """The AUROC table's title: rows, CI and resampling, the paired test, the evaluation set."""
    comp = r.compare
    title = (f"AUROC, {r.n} {'studies' if r.level == 'study' else 'images'}"
             + (f", {int(r.ci * 100)}% bootstrap CI ({r.bootstrap} replicates, by {r.cluster})"
                if r.bootstrap else ""))
    if comp and comp.get("method") == "delong":
        title += f"; paired DeLong{' (clustered by ' + r.cluster + ')' if r.cluster != 'none' else ''}"
    es = r.evaluation_set
    if es.get("description"):
        title += f"\non {es['description']}"
    return title


def evaluation_table(result) -> Table:
    """Per-label AUROC with CI; with --compare the paired delta, its CI and p (and non-inferiority at a
    margin). Labels whose interval cannot be trusted are marked with a ! and explained under the table.
    ``result``: an :class:`~chexcut.evaluation.result.Evaluation` or its JSON."""
    from chexcut.evaluation.result import Evaluation

    r = Evaluation.of(result)
    comp = r.compare
    margin = (comp or {}).get("margin")
    t = Table(title=_auroc_title(r), title_justify="left")
    for col in ("label", "pos/neg", "AUROC", "CI"):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=col == "label")
    if comp:
        for col in ("delta", "delta CI", "p") + ((f"p non-inf. ({margin:g})", "non-inf.") if margin else ()):
            t.add_column(col, justify="right")
    crow = {c["label"]: c for c in (comp or {}).get("labels", [])}

    def ci(lo, hi):
        return "-" if lo is None else f"{lo:.4f}-{hi:.4f}"

    def compare_cells(c: dict) -> list[str]:
        cells = [_f(c.get("delta"), "{:+.4f}"), ci(c.get("ci_low"), c.get("ci_high")), _f(c.get("p"), "{:.3g}")]
        if margin:
            flag = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[c.get("noninferior")]
            cells += [_f(c.get("p_noninferiority"), "{:.3g}"), flag]
        return cells

    notes = []
    for row in r.labels:
        auc = _f(row.auroc) if row.auroc is not None else f"[dim]n/e ({row.not_evaluable or ''})[/]"
        mark = ""
        if row.warning or row.interval_note:
            mark = " [yellow]![/]"
            notes.append(f"! {row.label}: {row.interval_note or row.warning}")
        cells = [row.label + mark, f"{row.n_pos}/{row.n_neg}", auc, ci(row.ci_low, row.ci_high)]
        if comp:
            cells += compare_cells(crow[row.label])
        t.add_row(*cells)
    names = {"mean_competition": "mean (5 competition)", "mean_all": "mean (all evaluable)"}
    for key, m in r.means:
        if not m:
            continue
        cells = [f"[bold]{names[key]}[/]", f"{m.labels} labels", f"[bold]{_f(m.auroc)}[/]", ci(m.ci_low, m.ci_high)]
        if comp:
            cells += compare_cells(comp.get(key) or {})
        t.add_row(*cells)
    from chexcut.evaluation.orchestrate import SERIOUS

    leak = [w["message"] for w in r.section("warning_kinds", []) if w["kind"] in SERIOUS]
    caption = [f"[bold red]{w}[/]" for w in leak] + ([comp["verdict"]] if comp else []) + notes
    if caption:
        t.caption = "\n".join(caption)
        t.caption_justify = "left"
    return t


class TrainProgress:
    """A rich progress bar fed by finetune's events: loss, images/s, validation AUROC, ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None

    def __enter__(self):
        return self.emit

    def emit(self, event) -> None:
        """Draws finetune's :mod:`chexcut.events`: the bar at Start, its figures at each Log."""
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from chexcut import events

        if isinstance(event, events.Start):
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err)
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=event.last_step, completed=event.step, info="")
            err.print(f"{event.train_images} train / {event.valid_images} valid images on {event.device} "
                      f"({event.precision}, {'cached' if event.cached else 'decoding'} images)")
            for note in event.notes:
                err.print(f"note: {note}", markup=False, highlight=False)
        elif isinstance(event, events.Log) and self.progress:
            row = event.row
            info = f"loss {row['train_loss']:.4f}  {row['images_per_s']:.0f} img/s"
            if row.get("val_mean_auroc") is not None:
                info += f"  val AUROC {row['val_mean_auroc']:.4f}"
            self.progress.update(self.task, completed=event.step, info=info)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)
        return False


class StudyStatus:
    """A live table of a study's runs (queued / running / done / failed, images/s) on stderr."""

    def __init__(self, study_dir, quiet: bool = False):
        from pathlib import Path

        self.study_dir, self.quiet, self.live = Path(study_dir), quiet, None

    def __enter__(self):
        if not self.quiet:
            from rich.live import Live

            self.live = Live(Table(), console=err, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self.update

    def update(self, jobs) -> None:
        if self.live:
            self.live.update(self.table(jobs))

    def table(self, jobs) -> Table:
        import time

        from chexcut.study.runner import images_per_s

        counts = {}
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        t = Table(title="study: " + ", ".join(f"{v} {k}" for k, v in counts.items()), title_justify="left")
        for col in ("run", "status", "img/s", "time"):
            t.add_column(col, justify="left" if col in ("run", "status") else "right")
        style = {"running": "bold yellow", "done": "green", "failed": "bold red", "skipped": "dim", "queued": "dim"}
        shown = [j for j in jobs if j.status in ("running", "failed")] + [j for j in jobs if j.status == "done"][-5:]
        shown += [j for j in jobs if j.status == "queued"][:5]
        for j in shown:
            rate = images_per_s(self.study_dir / j.run["run_dir"]) if j.status == "running" else None
            took = (j.ended or time.time()) - j.started if j.started else None
            t.add_row(j.run["id"], f"[{style.get(j.status, '')}]{j.status}[/]", f"{rate:.0f}" if rate else "",
                      f"{took:.0f}s" if took else "")
        return t

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)
        return False


def study_status_table(res: dict) -> Table:
    """``study status``: one row per planned run, the totals as the caption."""
    colours = {"done": "green", "running": "cyan", "stalled": "yellow", "interrupted": "yellow", "failed": "red",
               "queued": "dim"}
    t = Table(title=Text(f"Study {res['study']}"), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
              pad_edge=False, caption=(", ".join(f"{n} {s}" for s, n in res["totals"].items() if n) or "no runs")
              + "; beat: time since the run's files last changed",
              caption_justify="left")
    for col in ("run", "status", "step", "AUROC (95% CI)", "img/s", "beat", "reason"):
        t.add_column(col, justify="right" if col in ("step", "img/s", "beat") else "left", no_wrap=col != "reason")
    for r in res["runs"]:
        if r["status"] == "done" and r["auroc"] is not None:
            score = f"{r['auroc']:.3f}" + (f" ({r['ci_low']:.3f}-{r['ci_high']:.3f})" if r["ci_low"] is not None else "")
        elif r["best_mean_auroc"] is not None:
            score = f"best val {r['best_mean_auroc']:.3f}"
        else:
            score = ""
        step = "" if r["step"] is None else (f"{r['step']}/{r['total_steps']}" if r["total_steps"] else str(r["step"]))
        age = "" if r["age_s"] is None else (f"{r['age_s']:.0f}s" if r["age_s"] < 120 else
                                            f"{r['age_s'] / 60:.0f}m" if r["age_s"] < 7200 else f"{r['age_s'] / 3600:.0f}h")
        t.add_row(Text(r["id"]), f"[{colours[r['status']]}]{r['status']}[/]", step, score,  # run texts: never markup
                  "" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}", age, Text(r["reason"] or ""))
    return t


def study_summary(jobs, study_dir) -> str:
    done = sum(j.status in ("done", "skipped") for j in jobs)
    failed = [j for j in jobs if j.status == "failed"]
    lines = [f"{done} of {len(jobs)} runs complete, {len(failed)} failed"]
    lines += [f"  failed: {j.run['id']} (log: {RunDir(Path(study_dir) / j.run['run_dir']).log})" for j in failed]
    return "\n".join(lines)


def report_tables(rep: dict) -> list:
    """The report's tables (:func:`chexcut.study.render.tables`, the same rows as report.md) as rich tables."""
    from chexcut.study.render import tables

    out = []
    for t in tables(rep):
        if t.rows:
            r = Table(title=t.title, title_justify="left", style="red" if t.warn else None)
            for i, col in enumerate(t.columns):
                r.add_column(col, justify="left" if i == 0 or col in ("weights", "run", "reason", "archs", "relation",
                                                                      "family", "rule") else "right")
            for row in t.rows:
                r.add_row(*row)
            out.append(r)
        else:
            out.append(f"[bold]{t.title}[/]")
        out += [f"[yellow]{x}[/]" if t.warn else x for x in t.text]
    return out

