"""How much of the model, how much training, how many labels: a study's configurations over depth (``--drops``),
adaptation (``--adapts``) and label budget (``--label-fractions``) -> learning curves, the frontier and calibration
per adaptation (the report's ``how_much`` block).

- **Learning curves**: per (arch, weights, drop, adaptation) with two budgets or more, the 5-task AUROC (with its
  CI) against the labelled patients, and a power law fitted to it, ``1 - AUROC = b * patients ** -c`` (least
  squares on the logs), with the patients it predicts for a target AUROC; a prediction outside the patients
  measured is marked as an extrapolation.
- **Frontier**: every configuration's trainable parameters (and latency, where ``bench`` measured it) against
  its AUROC, each paired against the best configuration on the same evaluation rows (the non-inferiority test of
  truncation, at the report's margin); the Pareto front, and the smallest configuration non-inferior to the best.
- **Calibration by adaptation**: mean ECE and recalibration slope beside the mean AUROC, per adaptation and budget.

The configurations' rows are the report's (:func:`chexcut.study.findings.configuration_row`); the paired tests are
the report's tester's, so a comparison here is the same test as a truncation's against drop 0.
"""

from __future__ import annotations

import math

import numpy as np

#: The most patients a learning curve predicts (log: 1e12); a flatter curve says it cannot reach its target.
MAX_LOG_PATIENTS = 12 * math.log(10)
#: A configuration: (arch, weights, drop, adaptation, label fraction).
Key = tuple[str, str, int, str, float]


def main_arm(arms: set[tuple[str, float]]) -> tuple[str, float]:
    """The (adaptation, label fraction) the paper's findings are computed on: full fine-tuning on the largest
    budget when the study has it, else the adaptation named first in sorted order on its largest budget."""
    adapt = "full" if any(a == "full" for a, _ in arms) else min(a for a, _ in arms)
    return max((a for a in arms if a[0] == adapt), key=lambda a: a[1])


def how_much(rows: dict[Key, dict], groups: dict[Key, list], tester, alpha: float, margin: float,
             target_auroc: float | None = None) -> dict | None:
    """The ``how_much`` block: None for a study of full fine-tuning on every label (nothing to compare).

    ``rows``: each configuration's report row; ``groups``: its runs; ``tester``: the report's
    :class:`~chexcut.study.findings.PairedTester`; ``target_auroc``: what the learning curves predict the labels
    for (default: the best configuration's AUROC)."""
    if set(k[3:] for k in rows) <= {("full", 1.0)}:
        return None
    ranked = [k for k in rows if rows[k]["auroc"] is not None]
    best = max(ranked, key=lambda k: rows[k]["auroc"]) if ranked else None
    configurations = []
    for key, row in sorted(rows.items()):
        cmp = (tester.compare(groups[key], groups[best]) if best is not None and key != best else None) or {}
        configurations.append({**row, "best": key == best, "delta_vs_best": cmp.get("delta"),
                               "delta_ci_low": cmp.get("ci_low"), "delta_ci_high": cmp.get("ci_high"),
                               "p_vs_best": cmp.get("p"), "p_noninferior_to_best": cmp.get("p_noninferiority"),
                               "noninferior_to_best": True if key == best else cmp.get("noninferior")})
    target = target_auroc if target_auroc is not None else (rows[best]["auroc"] if best else None)
    return {"margin": margin, "alpha": alpha, "target_auroc": target,
            "target_note": "given (--target-auroc)" if target_auroc is not None else "the best configuration's AUROC",
            "configurations": configurations, "learning_curves": learning_curves(configurations, target),
            "frontier": frontier(configurations), "calibration": calibration_by_adapt(configurations)}


def _name(row: dict) -> str:
    fraction = "" if row["label_fraction"] == 1 else f" f{row['label_fraction']:g}"
    return f"{row['arch']}/{row['weights']}/drop{row['drop']}/{row['adapt']}{fraction}"


def learning_curves(configurations: list[dict], target: float | None) -> list[dict]:
    """Per (arch, weights, drop, adaptation) with two label budgets or more: its points and the power law."""
    curves: dict[tuple, list[dict]] = {}
    for row in configurations:
        curves.setdefault((row["arch"], row["weights"], row["drop"], row["adapt"]), []).append(row)
    out = []
    for (arch, weights, drop, adapt), rs in sorted(curves.items()):
        if len({r["label_fraction"] for r in rs}) < 2:
            continue
        points = [{"label_fraction": r["label_fraction"], "patients": r["train_patients"], "auroc": r["auroc"],
                   "ci_low": r["ci_low"], "ci_high": r["ci_high"]} for r in sorted(rs, key=lambda r: r["label_fraction"])]
        out.append({"arch": arch, "weights": weights, "drop": drop, "adapt": adapt, "points": points,
                    "fit": power_law(points, target)})
    return out


def power_law(points: list[dict], target: float | None) -> dict:
    """``1 - AUROC = b * patients ** -c`` fitted by least squares on the logs, and the patients it predicts for
    ``target``. What cannot be fitted says why (``note``)."""
    usable = [p for p in points if p["patients"] and p["auroc"] is not None and 0 < p["auroc"] < 1]
    if len({p["patients"] for p in usable}) < 2:
        return {"b": None, "c": None, "r2": None, "patients_for_target": None, "extrapolation": None,
                "note": "needs two budgets with a recorded patient count and an AUROC below 1"}
    x = np.log([p["patients"] for p in usable])
    y = np.log([1 - p["auroc"] for p in usable])
    slope, intercept = np.polyfit(x, y, 1)
    fitted = intercept + slope * x
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum((y - fitted) ** 2)) / ss if len(usable) > 2 and ss > 0 else None
    fit = {"b": float(math.exp(intercept)), "c": float(-slope), "r2": r2, "patients_for_target": None,
           "extrapolation": None, "note": None}
    if fit["c"] <= 1e-9:  # (equal AUROCs fit c = 0 give or take rounding)
        fit["note"] = "the AUROC does not rise with the labels over these budgets: no prediction"
    elif target is not None and 0 < target < 1:
        log_needed = (intercept - math.log(1 - target)) / fit["c"]  # in logs: a nearly flat curve overflows
        if log_needed > MAX_LOG_PATIENTS:
            fit["note"] = (f"the fitted curve is too flat to reach AUROC {target:g} within "
                           f"1e{MAX_LOG_PATIENTS / math.log(10):.0f} patients")
            return fit
        needed = math.exp(log_needed)
        seen = [p["patients"] for p in usable]
        fit["patients_for_target"] = needed
        fit["extrapolation"] = not min(seen) * (1 - 1e-9) <= needed <= max(seen) * (1 + 1e-9)  # (rounding)
    return fit


def frontier(configurations: list[dict]) -> dict:
    """The Pareto front of trainable parameters (fewer) against AUROC (higher), the same with latency where every
    configuration was benched, and the smallest / fastest configuration non-inferior to the best."""
    rated = [r for r in configurations if r["auroc"] is not None]
    out = {}
    for cost, name in (("trainable_params", "trainable"), ("latency_ms", "latency")):
        have = [r for r in rated if r.get(cost) is not None]
        if not have or len(have) < len(rated):
            out[name] = None
            continue
        front = [r for r in have if not any(o[cost] <= r[cost] and o["auroc"] >= r["auroc"]
                                            and (o[cost] < r[cost] or o["auroc"] > r["auroc"]) for o in have)]
        ok = [r for r in have if r["noninferior_to_best"]]
        smallest = min(ok, key=lambda r: (r[cost], -r["auroc"])) if ok else None
        out[name] = {"front": [_name(r) for r in sorted(front, key=lambda r: r[cost])],
                     "smallest_noninferior": smallest and {"configuration": _name(smallest), cost: smallest[cost],
                                                           "auroc": smallest["auroc"],
                                                           "delta_vs_best": smallest["delta_vs_best"]}}
    return out


def calibration_by_adapt(configurations: list[dict]) -> list[dict]:
    """Per (adaptation, label fraction): how many configurations, and their mean AUROC, ECE and recalibration
    slope (each over the configurations that have it)."""
    arms: dict[tuple, list[dict]] = {}
    for r in configurations:
        arms.setdefault((r["adapt"], r["label_fraction"]), []).append(r)

    def mean(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return [{"adapt": a, "label_fraction": f, "configurations": len(rs), "auroc": mean(rs, "auroc"),
             "ece": mean(rs, "ece"), "slope": mean(rs, "slope"), "brier": mean(rs, "brier")}
            for (a, f), rs in sorted(arms.items())]


def tables(report: dict) -> list:
    """The ``how_much`` block's tables (none for a study of full fine-tuning on every label)."""
    from chexcut.study.table import ReportTable, ci, fmt

    h = report.get("how_much")
    if not h:
        return []
    yes_no = {True: "yes", False: "NO", None: "n/a"}
    m = fmt(h["margin"], "g")
    configs = ReportTable(
        f"How much: every configuration (depth x adaptation x labels), paired against the best (alpha {h['alpha']}, "
        f"non-inferiority margin {m})",
        ["arch/weights/drop", "adapt", "labels (patients)", "trainable params", "AUROC [95% CI]",
         "delta vs best [CI]", f"non-inf. p ({m})", "non-inferior", "ECE", "slope"])
    for r in h["configurations"]:
        configs.rows.append([
            f"{r['arch']}/{r['weights']}/d{r['drop']}", r["adapt"],
            f"{r['label_fraction']:g} ({fmt(r['train_patients'], 'd')})", fmt(r["trainable_params"], ","),
            fmt(r["auroc"]) + ci(r["ci_low"], r["ci_high"]),
            "(best)" if r["best"] else fmt(r["delta_vs_best"], "+.4f") + ci(r["delta_ci_low"], r["delta_ci_high"], "+.3f"),
            "" if r["best"] else fmt(r["p_noninferior_to_best"], ".3g"), yes_no[r["noninferior_to_best"]],
            fmt(r["ece"]), fmt(r["slope"], ".2f")])
    for cost, what in (("trainable", "trainable parameters"), ("latency", "measured latency")):
        f = h["frontier"].get(cost)
        if f is None:
            continue
        s = f["smallest_noninferior"]
        configs.text.append(f"Frontier of {what} against AUROC (no configuration both smaller and better): "
                            + ", ".join(f["front"]) + "." + (f" Smallest configuration non-inferior to the best: "
                                                            f"{s['configuration']} (AUROC {fmt(s['auroc'])})." if s else ""))
    curves = ReportTable(f"Learning curves: AUROC against labelled patients, 1 - AUROC = b * patients^-c (target AUROC "
                         f"{fmt(h['target_auroc'])}: {h['target_note']})",
                         ["arch/weights/drop", "adapt", "patients: AUROC [CI]", "b", "c", "R2",
                          "patients for the target"])
    for c in h["learning_curves"]:
        fit = c["fit"]
        needed = "n/a" if fit["patients_for_target"] is None else \
            f"{fit['patients_for_target']:,.0f}" + (" (extrapolation)" if fit["extrapolation"] else "")
        name = f"{c['arch']}/{c['weights']}/d{c['drop']}"
        if fit["note"]:
            curves.text.append(f"{name} {c['adapt']}: {fit['note']}.")
        curves.rows.append([name, c["adapt"],
                            "; ".join(f"{fmt(p['patients'], 'd')}: {fmt(p['auroc'])}{ci(p['ci_low'], p['ci_high'])}"
                                      for p in c["points"]), fmt(fit["b"], ".3g"), fmt(fit["c"], ".3g"),
                            fmt(fit["r2"], ".3f"), needed])
    if not h["learning_curves"]:
        curves.text.append("No configuration was trained on two label fractions: plan the study with "
                           "--label-fractions (e.g. 0.1,1).")
    cal = ReportTable("Calibration by adaptation (means over configurations; ECE 0 and slope 1 are perfect)",
                      ["adapt", "labels", "configurations", "AUROC", "ECE", "slope", "Brier"],
                      [[c["adapt"], f"{c['label_fraction']:g}", str(c["configurations"]), fmt(c["auroc"]), fmt(c["ece"]),
                        fmt(c["slope"], ".2f"), fmt(c["brier"])] for c in h["calibration"]])
    return [configs, curves, cal]


def plots(report: dict, out) -> list:
    """learning_curves.png (AUROC against patients, log x, with the fitted power laws) and frontier.png (AUROC
    against trainable parameters, log x, by adaptation); none for a study without the ``how_much`` block."""
    import matplotlib.pyplot as plt

    from chexcut.evaluation.plots import ci_segments
    from chexcut.study.table import save_plot

    h = report.get("how_much")
    paths = []
    if not h:
        return paths
    if h["learning_curves"]:
        fig, ax = plt.subplots(figsize=(7, 5))
        for c, color in zip(h["learning_curves"], plt.get_cmap("tab10")(np.arange(len(h["learning_curves"])) % 10)):
            pts = [p for p in c["points"] if p["patients"] and p["auroc"] is not None]
            x = [p["patients"] for p in pts]
            ax.plot(x, [p["auroc"] for p in pts], "o", color=color,
                    label=f"{c['arch']}/{c['weights']}/d{c['drop']}/{c['adapt']}")
            ci_segments(ax, x, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=color, alpha=0.5)
            if c["fit"]["c"] is not None and x:
                reach = min(c["fit"]["patients_for_target"] or 0, 10 * max(x))  # at most a decade past the data
                grid = np.geomspace(min(x), max([*x, reach]), 50)
                ax.plot(grid, 1 - c["fit"]["b"] * grid ** -c["fit"]["c"], "--", color=color, alpha=0.7)
        ax.set(xscale="log", xlabel="labelled training patients (log)", ylabel="mean AUROC, 5 competition tasks",
               title="Learning curves (dashed: fitted power law; past the last point: extrapolation)")
        ax.legend(fontsize=7)
        paths.append(save_plot(fig, ax, out / "learning_curves.png"))
    rated = [r for r in h["configurations"] if r["auroc"] is not None and r["trainable_params"]]
    if rated:
        fig, ax = plt.subplots(figsize=(7, 5))
        for adapt, marker in zip(sorted({r["adapt"] for r in rated}), "osD^v<>px*"):
            rs = [r for r in rated if r["adapt"] == adapt]
            ax.scatter([r["trainable_params"] for r in rs], [r["auroc"] for r in rs], marker=marker, label=adapt)
            for r in rs:
                ax.annotate(f"d{r['drop']} f{r['label_fraction']:g}", (r["trainable_params"], r["auroc"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel="mean AUROC, 5 competition tasks",
               title="Frontier: what is trained against AUROC (depth x adaptation x labels)")
        ax.legend(fontsize=8)
        paths.append(save_plot(fig, ax, out / "frontier.png"))
    return paths
