"""The report rendered: its tables (:class:`chexcut.study.table.ReportTable`, built once from the report JSON,
written as markdown in ``report.md`` and drawn by :mod:`chexcut.cli.ui` in the terminal, so the two cannot
drift), the CSV/JSON files and the plots (AUROC with its CI as error bars)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.study.table import ReportTable, ci, fmt, save_plot


def write_outputs(report: dict, out: Path, card_of: Path | None = None, about: dict | None = None) -> list[Path]:
    """results.json, results.csv, the plots and report.md in ``out``; with ``card_of`` (a study) also its model card
    (card.md with card_files/, card.html), linked from report.md."""
    import pandas as pd

    from chexcut.fileio import atomic_path, write_json, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    write_json(out / "results.json", report)
    written.append(out / "results.json")
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "run_dirs"} for r in report["results"]])
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written.append(out / "results.csv")
    plots = make_plots(report, out)
    written += plots
    if card_of is not None:
        from chexcut.study.card import write_card

        write_card(card_of, out / "card.md", about, html=out / "card.html", extra_images=plots)
        written += [out / "card.md", out / "card.html"]
    write_text(out / "report.md", markdown(report, [p.name for p in plots], card=card_of is not None))
    written.append(out / "report.md")
    return written


def make_plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rows = [r for r in report["results"] if r["auroc"] is not None]
    if not rows:
        return paths
    paths.append(_path_plot(rows, "params", "parameters (log)", "AUROC vs parameters: each architecture's "
                            "truncation path", out / "auroc_vs_params.png"))
    timed = [r for r in rows if r.get("latency_ms") is not None]
    if timed:  # measured with `chexcut bench ... --json RUN/bench.json`
        paths.append(_path_plot(timed, "latency_ms", f"latency at batch 1, ms (log; {timed[0].get('bench_device')})",
                                "AUROC vs measured latency: each architecture's truncation path",
                                out / "auroc_vs_latency.png"))

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for w, marker in (("imagenet", "o"), ("none", "x")):
        full = [r for r in rows if r["weights"] == w and r["drop"] == 0 and r["top1"] is not None]
        if not full:
            continue
        c = report["imagenet_vs_chexpert"][w]
        rho = "n/a" if c["spearman_rho"] is None else f"{c['spearman_rho']:.2f}"
        ax.scatter([r["top1"] for r in full], [r["auroc"] for r in full], marker=marker,
                   label=f"{'pretrained' if w == 'imagenet' else 'random init'} (Spearman rho = {rho})")
        for r in full:
            ax.annotate(r["arch"], (r["top1"], r["auroc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("ImageNet top-1 (%)")
    ax.set_ylabel("mean AUROC, 5 competition tasks")
    ax.set_title("ImageNet accuracy vs chest X-ray AUROC")
    if ax.get_legend_handles_labels()[0]:  # no architecture has a top-1 figure: no legend to draw
        ax.legend(fontsize=8)
    paths.append(save_plot(fig, ax, out / "imagenet_vs_auroc.png"))
    vs_random = (report.get("pretraining_sources") or {}).get("vs_random") or []
    if any(e["delta"] is not None for e in vs_random):
        paths.append(_sources_plot(vs_random, out / "pretraining_sources.png"))
    for b in report.get("external") or []:
        paths.append(_external_plot(b, out / f"external_{b['name']}.png"))
    from chexcut.study import howmuch, probes

    return paths + probes.plot(report, out) + howmuch.plots(report, out)


def _sources_plot(vs_random: list[dict], path: Path) -> Path:
    """Each source's boost over random init per architecture, with its paired CI."""
    import matplotlib.pyplot as plt

    shown = [e for e in vs_random if e["delta"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.35 * len(shown)))
    for i, e in enumerate(shown):
        if e["ci_low"] is not None and e["ci_high"] is not None:
            ax.plot([e["ci_low"], e["ci_high"]], [i, i], color="0.5")
        ax.plot([e["delta"]], [i], "o")
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [f"{e['arch']} / {e['weights']}" for e in shown], fontsize=8)
    ax.set_xlabel("mean AUROC minus random init (drop 0), paired 95% CI")
    ax.set_title("Pretraining sources against random init")
    return save_plot(fig, ax, path)


def _external_plot(block: dict, path: Path) -> Path:
    """Internal vs external 5-task AUROC per configuration, with both CIs and the line of no change."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    rows = [r for r in block["configurations"] if r["internal"] is not None and r["external"] is not None]
    from chexcut.evaluation.plots import ci_segments

    for k, r in enumerate(rows):
        color = f"C{k % 10}"
        ci_segments(ax, [r["external"]], [r["internal_ci_low"]], [r["internal_ci_high"]], horizontal=True,
                    color=color, alpha=0.6, lw=1)
        ci_segments(ax, [r["internal"]], [r["external_ci_low"]], [r["external_ci_high"]], color=color, alpha=0.6, lw=1)
        ax.plot([r["internal"]], [r["external"]], "o" if r["weights"] == "imagenet" else "s", color=color, alpha=0.8)
        ax.annotate(f"{r['arch']} d{r['drop']}", (r["internal"], r["external"]), fontsize=7, alpha=0.8)
    if rows:
        lo = min(min(r["internal"], r["external"]) for r in rows) - 0.02
        hi = max(max(r["internal"], r["external"]) for r in rows) + 0.02
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, alpha=0.5)
    rk = block["ranking"]
    ax.set(xlabel="internal 5-task AUROC", ylabel=f"external AUROC ({block['name']})",
           title=f"External validation on {block['name']}: rank rho {fmt(rk['spearman_rho'], '.2f')}")
    return save_plot(fig, ax, path)


def _path_plot(rows: list[dict], x: str, xlabel: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    archs = sorted({r["arch"] for r in rows})
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, len(archs))))
    for color, arch in zip(colors, archs):
        for w, style, marker in (("imagenet", "-", "o"), ("none", "--", "x")):
            line = sorted((r for r in rows if r["arch"] == arch and r["weights"] == w), key=lambda r: r["drop"])
            if line:
                ax.plot([r[x] for r in line], [r["auroc"] for r in line], style, marker=marker, color=color,
                        label=f"{arch} ({'pretrained' if w == 'imagenet' else 'random'})")
                with_ci = [r for r in line if r.get("ci_low") is not None]
                if with_ci:  # the 95% CI of each point (one run's bootstrap, or the seed ensemble's)
                    from chexcut.evaluation.plots import ci_segments

                    ci_segments(ax, [r[x] for r in with_ci], [r["ci_low"] for r in with_ci],
                                [r["ci_high"] for r in with_ci], color=color, alpha=0.5)
                for r in line:
                    ax.annotate(f"d{r['drop']}", (r[x], r["auroc"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean AUROC, 5 competition tasks (bars: 95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return save_plot(fig, ax, path)


def _auroc_cell(r: dict) -> str:
    """The 5-task AUROC with its CI: one run's bootstrap CI, or over seeds mean +- SD and the seed ensemble's CI."""
    cell = fmt(r["auroc"])
    if r.get("auroc_sd") is not None and len(r.get("seeds") or ()) > 1:
        cell += f" ± {r['auroc_sd']:.4f} (SD, {len(r['seeds'])} seeds)"
    if r.get("ci_low") is not None:
        cell += f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    return cell


def results_table(report: dict) -> ReportTable:
    m = report.get("margin")
    yes_no = {True: "yes", False: "NO", None: "n/a"}
    arm = report.get("arm") or {}
    of = (f"{arm['runs']} runs of {report['runs']}: --adapt {arm['adapt']}, --label-fraction {arm['label_fraction']:g}"
          if report.get("how_much") else f"{report['runs']} runs")
    t = ReportTable(f"Results ({of}; paired bootstrap vs drop 0, alpha {report['alpha']}, "
                    f"non-inferiority margin {fmt(m, 'g')})",
                    ["arch", "weights", "drop", "params", "MACs", "AUROC [95% CI]", "delta vs drop 0", "p",
                     "no sig. drop", f"non-inf. p ({fmt(m, 'g')})", "non-inferior"])
    for r in report["results"]:
        macs = "n/a" if not r["macs"] else f"{r['macs'] / 1e9:.2f}G"
        t.rows.append([r["arch"], r["weights"], str(r["drop"]), f"{r['params']:,}", macs, _auroc_cell(r),
                       fmt(r["delta_vs_drop0"], "+.4f") if r["drop"] else "(reference)",
                       fmt(r["p_vs_drop0"], ".3g") if r["drop"] else "", yes_no[r["no_significant_drop"]]
                       if r["drop"] else "", fmt(r.get("p_noninferiority"), ".3g") if r["drop"] else "",
                       yes_no[r.get("noninferior")] if r["drop"] else ""])
    e = report.get("ensemble_all")
    if e and e.get("auroc") is not None:
        t.rows.append([f"ensemble of all {e['configurations']} configurations", "", "", "", "",
                       fmt(e["auroc"]) + ci(e["ci_low"], e["ci_high"]),
                       f"{fmt(e['delta_vs_best'], '+.4f')} vs best ({e['best_configuration']})",
                       fmt(e["p_vs_best"], ".3g"), "", "", ""])
    widths = [r["ci_high"] - r["ci_low"] for r in report["results"] if r.get("ci_low") is not None]
    if widths:
        t.text.append(f"The 95% CIs are {np.median(widths):.3f} wide (median; {min(widths):.3f}-{max(widths):.3f}): "
                      f"a difference between truncation levels smaller than that is within the noise of this "
                      f"evaluation set, which is what the paired tests judge.")
    return t


def efficiency_tables(eff: dict, alpha: float, title: str = "pretrained", note: str | None = None) -> list[ReportTable]:
    """Both rules side by side: the paper's (no significant drop) and non-inferiority at the margin."""
    m = fmt(eff.get("margin"), "g")
    extra = efficiency_tables(eff["random_init"], alpha, "random init") if eff.get("random_init", {}).get("archs") \
        else []
    t = ReportTable(f"Parameter efficiency ({title})",
                    ["arch", "full params", "paper rule: drop", "params", "ratio", f"non-inferior ({m}): drop",
                     "params", "ratio"])
    if not eff["archs"]:
        t.text.append(f"No {title} runs with drop 0 and a truncation" + (f": {note}." if note else "."))
        return [t] + extra
    t.text.append(f"Two rules for \"no drop\": the paper's (the deepest truncation whose drop vs drop 0 is not "
                  f"significant at alpha = {alpha}; with few validation images almost nothing is significant) and "
                  f"non-inferiority (the deepest truncation whose drop is shown to be smaller than the margin {m} "
                  f"AUROC: one-sided test at alpha).")
    t.rows = [[e["arch"], f"{e['params_full']:,}", str(e["drop"]), f"{e['params']:,}", f"{e['ratio']:.2f}x",
               str(e["drop_noninferior"]), f"{e['params_noninferior']:,}", f"{e['ratio_noninferior']:.2f}x"]
              for e in eff["archs"]]
    t.text.append(f"Mean ratio, paper rule: {fmt(eff['mean_ratio'], '.2f')}x; non-inferiority rule: "
                  f"{fmt(eff['mean_ratio_noninferior'], '.2f')}x (the paper reports 3.25x for pretrained models).")
    out = [t]
    timed = [e for e in eff["archs"] if "latency_speedup" in e]
    if timed:
        b = ReportTable(f"Measured speed ({title}; `chexcut bench`: batch-1 latency and throughput speedups vs drop 0, "
                        f"beside the params ratio)", ["arch", "rule", "params ratio", "latency speedup",
                                                     "throughput speedup"])
        for e in timed:
            for rule, name in (("", "paper"), ("_noninferior", "non-inferior")):
                if f"latency_speedup{rule}" in e:
                    b.rows.append([e["arch"], name, f"{e[f'ratio{rule}']:.2f}x", f"{e[f'latency_speedup{rule}']:.2f}x",
                                   f"{e[f'throughput_speedup{rule}']:.2f}x"])
        out.append(b)
    return out + extra


def correlation_table(report: dict) -> ReportTable:
    notes = report.get("missing") or {}
    t = ReportTable("ImageNet top-1 vs CheXpert AUROC, and the pretraining boost",
                    ["relation", "n", "Spearman rho (p)", "Kendall tau (p)"])
    rel = [(f"top-1 vs AUROC, {'pretrained' if w == 'imagenet' else 'random init'}", v, notes.get(f"correlation_{w}"))
           for w, v in report["imagenet_vs_chexpert"].items()]
    rel.append(("pretraining boost vs params (the paper: -0.72)", report["pretraining_boost"]["vs_params"],
                notes.get("boost")))
    for name, v, why in rel:
        if v["spearman_rho"] is None:
            t.rows.append([name, str(v["n"]), why or "needs 3 architectures", ""])
            continue
        t.rows.append([name, str(v["n"]), f"{fmt(v['spearman_rho'], '.2f')} ({fmt(v['spearman_p'], '.3g')})",
                       f"{fmt(v.get('kendall_tau'), '.2f')} ({fmt(v.get('kendall_p'), '.3g')})"])
    return t


def boost_table(report: dict) -> ReportTable:
    pb = report["pretraining_boost"]
    t = ReportTable("Pretraining boost (drop 0)", ["arch", "params", "pretrained", "random", "boost", "p"])
    t.rows = [[b["arch"], f"{b['params']:,}", fmt(b["pretrained"]), fmt(b["random"]), fmt(b["boost"], "+.4f"),
               fmt(b["p"], ".3g")] for b in pb["archs"]]
    if not t.rows:
        t.text.append((report.get("missing") or {}).get("boost") or "no architecture has both pretrained and "
                      "random-init runs at drop 0")
    return t


def sources_tables(report: dict) -> list[ReportTable]:
    """Every pretraining source against random init and against each other (drop 0, paired, Holm)."""
    ps = report.get("pretraining_sources") or {}
    out = []
    for key, title in (("vs_random", "Pretraining sources against random init (drop 0)"),
                       ("between", "Pretraining sources against each other (drop 0)")):
        if ps.get(key):
            t = ReportTable(title, ["arch", "weights", "versus", "AUROC", "versus AUROC", "delta [CI]", "p (Holm)"])
            t.rows = [[e["arch"], e["weights"], e["versus"], fmt(e["auroc"]), fmt(e["versus_auroc"]),
                       fmt(e["delta"], "+.4f") + ci(e["ci_low"], e["ci_high"], "+.3f"), fmt(e["p_holm"], ".3g")]
                      for e in ps[key]]
            out.append(t)
    if out and ps.get("mean_boost"):
        out[0].text.append("Mean boost over the architectures: " + ", ".join(
            f"{w} {fmt(v, '+.4f')}" for w, v in ps["mean_boost"].items()) + ".")
    return out


def family_table(report: dict) -> ReportTable | None:
    fs = report.get("family_vs_size")
    if not fs:
        return None
    t = ReportTable("Family vs size (random init, drop 0)", ["family", "mean AUROC", "archs"])
    t.rows = [[f["family"], f"{f['mean_auroc']:.4f}", ", ".join(f["archs"])] for f in fs["families"]]
    if fs["share_family"] is None:
        why = ("one family only: nothing to split between families" if len(fs["families"]) < 2
               else "every architecture scored the same: no variance to split")
        t.text.append(f"Share of AUROC variance between families: not computed ({why}).")
    else:
        t.text.append(f"Share of AUROC variance between families: {fs['share_family']:.0%}; within families (size): "
                      f"{fs['share_size_within_family']:.0%}.")
    return t


def problem_tables(report: dict) -> list[ReportTable]:
    out = []
    if report.get("leakage"):
        out.append(ReportTable("Evaluated on rows shared with their training set (--allow-overlap): inflated AUROC",
                               ["run"], [[d] for d in report["leakage"]], warn=True))
    notes = [report["missing"][k] for k in ("pretrained", "random_init") if (report.get("missing") or {}).get(k)]
    if report["incomplete"] or notes:
        out.append(ReportTable("Missing or incomplete runs (in no mean)", ["run", "reason"],
                               [[i["run_dir"], i["reason"]] for i in report["incomplete"]],
                               text=[f"Missing runs: {n}." for n in notes], warn=True))
    return out


def subgroup_table(report: dict) -> ReportTable | None:
    rows = report.get("subgroups") or []
    if not rows:
        return None
    return ReportTable("Subgroups (5-task AUROC, each run's evaluation)",
                       ["arch", "weights", "drop", "seed", "by", "group", "n", "AUROC", "95% CI"],
                       [[r["arch"], r["weights"], str(r["drop"]), str(r["seed"]), r["by"], r["group"], str(r["n"]),
                         fmt(r["auroc"]), "no CI" if r["ci_low"] is None else f"{r['ci_low']:.4f}-{r['ci_high']:.4f}"]
                        for r in rows])


def figures_table(report: dict, section: str, title: str) -> ReportTable | None:
    """Per run, the mean over the 5 tasks of each figure of an evaluation's ``section`` the report shows
    (``Figure.report_mean``, :mod:`chexcut.evaluation.figures`)."""
    from chexcut.evaluation import figures

    rows = report.get({"labels": "figures"}.get(section, section)) or []
    shown = [f for f in figures.in_section(section) if f.report_mean]
    if not rows or not shown:
        return None
    return ReportTable(title, ["arch", "weights", "drop", "seed", *(f.report_name or f.name for f in shown)],
                       [[r["arch"], r["weights"], str(r["drop"]), str(r["seed"]),
                         *(f.text(r.get(f.key), f.report_fmt, "n/a") for f in shown)] for r in rows])


def calibration_table(report: dict) -> ReportTable | None:
    return figures_table(report, "calibration",
                         "Calibration (mean over the 5 tasks; slope 1 is perfect, below 1 overconfident)")


def readers_table(report: dict) -> ReportTable | None:
    rows = report.get("readers") or []
    if not rows:
        return None
    return ReportTable("Readers against each run (model sensitivity at the reader's specificity; delta = model - "
                       "reader, two-sided bootstrap p)",
                       ["arch", "weights", "drop", "seed", "label", "reader", "reader sens", "reader spec",
                        "model sens", "delta", "p", "below curve"],
                       [[r["arch"], r["weights"], str(r["drop"]), str(r["seed"]), r["label"], r["reader"],
                         fmt(r["sensitivity"], ".3f"), fmt(r["specificity"], ".3f"),
                         fmt(r["model_sensitivity_at_reader_specificity"], ".3f"),
                         fmt(r["delta_sensitivity"], "+.3f"),
                         "no test" if r["p_sensitivity"] is None else f"{r['p_sensitivity']:.3g}",
                         "yes" if r["below_model_curve"] else "no"] for r in rows])


def tables(report: dict) -> list[ReportTable]:
    """Every table of the report, in order: what is wrong first, then the results and the findings."""
    eff = efficiency_tables(report["efficiency"], report["alpha"],
                            note=(report.get("missing") or {}).get("pretrained"))
    from chexcut.study import howmuch, probes

    found = [*problem_tables(report), results_table(report), probes.table(report), *howmuch.tables(report), *eff, correlation_table(report), boost_table(report),
             *sources_tables(report), family_table(report), subgroup_table(report), calibration_table(report),
             figures_table(report, "labels", "Per-label figures (mean over the 5 tasks)"), readers_table(report),
             *external_tables(report)]
    return [t for t in found if t is not None]


def external_tables(report: dict) -> list[ReportTable]:
    """Per external set: internal vs external AUROC per configuration, the ranking and the four findings."""
    out = []
    for b in report.get("external") or []:
        t = ReportTable(f"External validation: {b['name']}" + (f" ({b['dataset']})" if b.get("dataset") else ""),
                        ["arch", "weights", "drop", "internal AUROC [CI]", "external AUROC [CI]",
                         "external - internal [CI]"])
        for r in b["configurations"]:
            t.rows.append([r["arch"], r["weights"], str(r["drop"]),
                           fmt(r["internal"]) + ci(r["internal_ci_low"], r["internal_ci_high"]),
                           fmt(r["external"]) + ci(r["external_ci_low"], r["external_ci_high"]),
                           fmt(r["difference"], "+.4f") + ci(r["ci_low"], r["ci_high"], "+.3f")])
        rk = b["ranking"]
        holds = {True: "holds", False: "does NOT hold", None: "n/a (runs missing)"}
        t.text.append(f"Ranking of the {rk['n']} configurations, internal vs external: Spearman rho "
                      f"{fmt(rk['spearman_rho'], '.3f')}{ci(rk['ci_low'], rk['ci_high'])}.")
        t.text.append("Findings on this set: " + "; ".join(f"{k.replace('_', ' ')}: {holds[v]}"
                                                           for k, v in b["findings"]["holds"].items()) + ".")
        if b.get("competition_labels_not_scored"):
            t.text.append("Competition labels this set does not annotate (outside its 5-task mean): "
                          + ", ".join(b["competition_labels_not_scored"]) + ".")
        t.text.append(f"Method: {b['method']}.")
        out.append(t)
    return out


def markdown(report: dict, plots: list[str], card: bool = False) -> str:
    lines = ["# chexcut report", "",
             f"{report['runs']} evaluated runs; paired bootstrap with {report['bootstrap']} replicates, "
             f"alpha = {report['alpha']}."]
    if card:
        lines += ["", "Model card of the best configuration, with the CLAIM and TRIPOD+AI checklists: "
                      "[card.md](card.md) ([HTML](card.html))."]
    for t in tables(report):
        lines += t.markdown()
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
