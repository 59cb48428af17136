"""``evaluate --plots DIR``: per label, the ROC curve with its bootstrap band, the precision-recall curve, the
reliability diagram, and with ``--by`` the groups' ROC curves overlaid. matplotlib (Agg), no torch.

The ROC band is pointwise: for each false-positive rate on a grid of 101 points, the percentile interval of
the true-positive rate over (at most 200 of) the evaluation's cluster bootstrap replicates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BAND_REPLICATES = 200
GRID = np.linspace(0.0, 1.0, 101)


def slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower()).strip("_")


def unique_slugs(labels) -> dict[str, str]:
    """Each label's file-name stem, unique among ``labels``: labels whose slugs collide (``Edema`` and ``EDEMA``,
    ``a/b`` and ``a b``) get ``-2``, ``-3`` ... in order, so no plot overwrites another's."""
    out, taken = {}, set()
    for label in labels:
        base = slug(label) or "label"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        out[label] = name
        taken.add(name)
    return out


def weighted_roc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, T) false- and true-positive rates at each distinct threshold (descending), for row weights (R, n)."""
    from chexcut.evaluation.operating import Curve

    tp, fp = Curve(y, s, np.arange(len(y))).counts(w)  # each row its own cluster: weights are row weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp / fp[:, -1:], tp / tp[:, -1:]


def roc_band(y, s, clusters, bootstrap: int, seed: int, ci: float) -> tuple[np.ndarray, np.ndarray] | None:
    from chexcut.evaluation.metrics import replicate_counts

    n = min(bootstrap, BAND_REPLICATES)
    if not n:
        return None
    curves = []
    for counts in replicate_counts(len(y), clusters, n, seed):
        fpr, tpr = weighted_roc(y, s, counts[:, clusters])
        for f, t in zip(fpr, tpr):
            if np.isfinite(f).all() and np.isfinite(t).all():
                curves.append(np.interp(GRID, f, t))
    if not curves:
        return None
    a = (1 - ci) / 2
    return tuple(np.quantile(np.array(curves), [a, 1 - a], axis=0))


def write_plots(evalrows, scores, result: dict, folder: Path, stats, clusters) -> list[Path]:
    """Every PNG for the evaluable labels of ``result``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chexcut.fileio import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    cal = {r["label"]: r for r in (result.get("calibration") or {}).get("labels", [])}

    stems = unique_slugs([row["label"] for row in result["labels"]])

    def save(fig, label, kind):
        f = folder / f"{stems[label]}-{kind}.png"
        with atomic_path(f) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(f)

    mask = evalrows.mask > 0
    for j, row in enumerate(result["labels"]):
        if row.get("auroc") is None:
            continue
        name, rows = row["label"], np.flatnonzero(mask[:, j])
        y, s = evalrows.y[rows, j], scores[rows, j]
        fpr, tpr = weighted_roc(y, s, np.ones((1, len(y))))
        band = roc_band(y, s, clusters[rows], stats.bootstrap, stats.seed, stats.ci)
        fig, ax = plt.subplots(figsize=(4.6, 4.4))
        if band is not None:
            ax.fill_between(GRID, band[0], band[1], color="tab:blue", alpha=0.2,
                            label=f"{stats.ci:.0%} band ({min(stats.bootstrap, BAND_REPLICATES)} replicates)")
        ci = (f" ({row['ci_low']:.3f}-{row['ci_high']:.3f})" if row.get("ci_low") is not None else "")
        ax.plot(fpr[0], tpr[0], color="tab:blue", lw=2, label=f"AUROC {row['auroc']:.3f}{ci}")
        _readers_and_points(ax, name, result)
        _roc_axes(ax, f"{name}: ROC ({row['n_pos']} pos, {row['n_neg']} neg)")
        save(fig, name, "roc")
        _pr_plot(plt, save, name, row, y, s)
        if name in cal and cal[name].get("bins"):
            _reliability_plot(plt, save, name, cal[name])
        for column in stats.by:
            _subgroup_plot(plt, save, name, column, evalrows, scores, j, result)
    return written


def ci_segments(ax, at, lows, highs, horizontal: bool = False, **style) -> None:
    """Intervals drawn as segments from low to high (with end caps) at positions ``at``: unlike ``errorbar``, which
    takes distances from the estimate, this draws an interval that excludes its estimate (a percentile interval
    can; so can a seed ensemble's against the seeds' mean) as it is."""
    for a, lo, hi in zip(at, lows, highs):
        if lo is None or hi is None:
            continue
        if horizontal:
            ax.plot([lo, hi], [a, a], marker="|", **style)
        else:
            ax.plot([a, a], [lo, hi], marker="_", **style)


def _readers_and_points(ax, name: str, result: dict) -> None:
    """The readers as points with their CI crosses, and the operating points as markers (the CheXpert figure)."""
    readers = [x for x in result.get("readers") or [] if x["label"] == name and x.get("sensitivity") is not None]
    for k, x in enumerate(readers):
        fx, sy = 1 - x["specificity"], x["sensitivity"]
        color = f"C{(k + 2) % 10}"
        if x.get("specificity_ci_low") is not None:
            ci_segments(ax, [sy], [1 - x["specificity_ci_high"]], [1 - x["specificity_ci_low"]], horizontal=True,
                        color=color, lw=1)
        if x.get("sensitivity_ci_low") is not None:
            ci_segments(ax, [fx], [x["sensitivity_ci_low"]], [x["sensitivity_ci_high"]], color=color, lw=1)
        ax.plot([fx], [sy], "o", ms=5, color=color,
                label=f"reader {x['reader']} ({'below' if x['below_model_curve'] else 'above'})")
    points = [p for p in result.get("operating_points") or [] if p["label"] == name and p.get("sensitivity") is not None]
    for p in points:
        ax.plot([1 - p["specificity"]], [p["sensitivity"]], marker="D", ms=6, ls="none", mfc="none", mec="black",
                label=f"{p['rule']}{' (this set)' if p.get('optimistic') else ''}: "
                      f"sens {p['sensitivity']:.2f}, spec {p['specificity']:.2f}")


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _pr_plot(plt, save, name, row, y, s) -> None:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ci = (f" ({row['average_precision_ci_low']:.3f}-{row['average_precision_ci_high']:.3f})"
          if row.get("average_precision_ci_low") is not None else "")
    ax.step(recall, precision, where="post", color="tab:orange", lw=2,
            label=f"AP {row['average_precision']:.3f}{ci}")
    ax.axhline(row["prevalence"], color="grey", lw=0.8, ls="--", label=f"chance = prevalence {row['prevalence']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title=f"{name}: precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, name, "pr")


def _reliability_plot(plt, save, name, c) -> None:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    bins = c["bins"]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["rate"] for b in bins], "o-", color="tab:green",
            label=f"ECE {c['ece']:.3f}, slope {c['slope']:.2f}" if c.get("slope") is not None
            else f"ECE {c['ece']:.3f}")
    for b in bins:
        ax.annotate(str(b["n"]), (b["mean_p"], b["rate"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="mean predicted probability (10 equal-width bins; n per bin)",
           ylabel="observed rate", title=f"{name}: reliability (Brier {c['brier']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, name, "reliability")


def _subgroup_plot(plt, save, name, column, evalrows, scores, j, result) -> None:
    mask = evalrows.mask[:, j] > 0
    values = evalrows.groups[column]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    drawn = 0
    for g in [s for s in result.get("subgroups", []) if s["by"] == column]:
        lab = g["labels"][j]
        if lab.get("auroc") is None:
            continue
        rows = np.flatnonzero(mask & np.array([v == g["group"] for v in values]))
        fpr, tpr = weighted_roc(evalrows.y[rows, j], scores[rows, j], np.ones((1, len(rows))))
        ax.plot(fpr[0], tpr[0], lw=1.8, label=f"{g['group']}: {lab['auroc']:.3f} (n {lab['n_pos'] + lab['n_neg']})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return
    _roc_axes(ax, f"{name}: ROC by {column}")
    save(fig, name, f"roc-by-{slug(column)}")


def write_probe_plot(result: dict, path: Path) -> Path:
    """``chexcut probe``'s depth curve: each block's mean AUROC (``result["mean"]``) with its CI against the block
    index, the best block marked, and each block's significance against it (Holm-adjusted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chexcut.fileio import atomic_path

    rows = [r for r in result["blocks"] if r["auroc"] is not None]
    k = np.array([r["block"] for r in rows])
    auc = np.array([r["auroc"] for r in rows])
    low = np.array([r["ci_low"] if r["ci_low"] is not None else r["auroc"] for r in rows])
    high = np.array([r["ci_high"] if r["ci_high"] is not None else r["auroc"] for r in rows])
    alpha = result["settings"]["statistics"]["alpha"]
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.fill_between(k, low, high, color="tab:blue", alpha=0.2, label=f"{result['settings']['statistics']['ci']:.0%} CI")
    ax.plot(k, auc, "o-", color="tab:blue", label=result["mean"].replace("_", " ") + " AUROC")
    worse = [r for r in rows if r["vs_best"] and r["vs_best"].get("p_holm") is not None
             and r["vs_best"]["p_holm"] < alpha]
    if worse:
        ax.plot([r["block"] for r in worse], [r["auroc"] for r in worse], "x", color="tab:red", ms=9,
                label=f"differs from the best (Holm p < {alpha:g})")
    best = result["best_block"]
    ax.axvline(best, color="grey", ls=":", label=f"best: block {best}")
    m = result["model"]
    ax.set(xlabel="block (the probe reads its pooled output)", ylabel="AUROC on the evaluation rows",
           title=f"linear probe at every depth: {m['arch']} ({m['weights']}, {m['image_size']} px)")
    ax.set_xticks(k)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
