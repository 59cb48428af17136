"""A study's linear probes beside its fine-tuned truncations: ``chexcut probe``'s depth curves (``probe.json``) read
by ``report`` and set, block by block, beside the fine-tuned run that keeps as many blocks.

A probe is found as a report target (its folder) or in a study folder's ``probes/*/``. It is compared only where it
was evaluated on the study's evaluation rows (the same data folder, split, data options and level, the same number
of rows) and its model is one of the study's architectures and weights; otherwise it is listed with the reason.
Block ``k`` of an architecture of ``B`` blocks sits beside the fine-tuned run with ``drop = B - k``: the probe reads
the features that truncation keeps, and trains only a linear head on them.
"""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.reading import read_json

PROBE = "probe.json"  # chexcut probe's output (chexcut.evaluation.probe)


def is_probe_folder(path: Path) -> bool:
    return (Path(path) / PROBE).is_file()


def find_probes(targets: list[Path]) -> list[Path]:
    """The probe.json files of ``targets``: a probe folder given, and a study folder's ``probes/*/probe.json``."""
    found = []
    for t in map(Path, targets):
        if is_probe_folder(t):
            found.append(t / PROBE)
        elif t.is_dir():
            found += sorted((t / "probes").glob(f"*/{PROBE}"))
    return list(dict.fromkeys(p.resolve() for p in found))


def eval_key(probe: dict) -> str:
    """The evaluation rows of a probe, keyed as a run's evaluation is (its data options are in ``data``)."""
    from chexcut.evaluation.evaluation_set import rows_key

    data = probe["data"]
    return rows_key(data["dir"], data["split"], probe["settings"]["statistics"].get("level", "study"),
                    data["evaluation_rows"], data)


def probes_beside(targets: list[Path], rows: list[dict], run_key: str | None,
                  label_fraction: float = 1.0) -> list[dict]:
    """Per probe found under ``targets``: its blocks beside the report's ``rows`` (the fine-tuned configurations, of
    ``label_fraction``) of its arch and weights, when it was evaluated on the runs' rows (``run_key``); else the
    reason it is not. A probe fit on another share of the training patients is compared, with a note saying so."""
    out = []
    for path in find_probes(targets):
        try:
            probe = read_json(path)
            model, blocks = probe["model"], probe["blocks"]
            key = eval_key(probe)
            arch, weights, num_blocks = str(model["arch"]), str(model["weights_label"]), int(model["num_blocks"])
            fraction = float(probe["settings"].get("label_fraction", 1.0))
        except (ChexcutError, KeyError, TypeError, ValueError) as e:
            out.append({"probe": str(path), "comparable": False, "reason": f"unreadable probe.json ({e})"})
            continue
        entry = {"probe": str(path), "arch": arch, "weights": weights, "label_fraction": fraction, "comparable": True,
                 "reason": None, "note": None if fraction == label_fraction else
                 f"the probe was fit on {fraction:g} of the training patients, the runs on {label_fraction:g}"}
        tuned = {r["drop"]: r for r in rows if r["arch"] == arch and r["weights"] == weights}
        if key != run_key:
            entry.update(comparable=False, reason="evaluated on other rows than the runs (data, split, options, "
                                                  "level or row count differ)")
        elif not tuned:
            entry.update(comparable=False, reason=f"the study has no fine-tuned {arch} with {weights} weights")
        entry["blocks"] = [{"block": b["block"], "drop": num_blocks - b["block"], "probe_auroc": b.get("auroc"),
                            "probe_ci_low": b.get("ci_low"), "probe_ci_high": b.get("ci_high"),
                            **_tuned(tuned.get(num_blocks - b["block"]) if entry["comparable"] else None)}
                           for b in blocks]
        out.append(entry)
    return out


def _tuned(row: dict | None) -> dict:
    keys = ("auroc", "ci_low", "ci_high", "trainable_params")
    return {f"finetuned_{k}": (row or {}).get(k) for k in keys}


def table(report: dict):
    """The probes' table: per block, the probe's AUROC beside the fine-tuned truncation's (None without probes)."""
    from chexcut.study.table import ReportTable, ci, fmt

    probes = report.get("probes") or []
    if not probes:
        return None
    t = ReportTable("Linear probe at every depth beside the fine-tuned truncations (chexcut probe)",
                    ["arch", "weights", "block", "drop", "probe AUROC [CI]", "fine-tuned AUROC [CI]"])
    for p in probes:
        if not p["comparable"]:
            t.text.append(f"{p['probe']}: not compared: {p['reason']}.")
            continue
        if p.get("note"):
            t.text.append(f"{p['arch']}/{p['weights']}: {p['note']}.")
        for b in p["blocks"]:
            t.rows.append([p["arch"], p["weights"], str(b["block"]), str(b["drop"]),
                           fmt(b["probe_auroc"]) + ci(b["probe_ci_low"], b["probe_ci_high"]),
                           fmt(b["finetuned_auroc"]) + ci(b["finetuned_ci_low"], b["finetuned_ci_high"])
                           if b["finetuned_auroc"] is not None else "(not fine-tuned at this depth)"])
    t.text.append("The probe trains a linear head on the pooled features of each block of the frozen model; the "
                  "fine-tuned run with drop = blocks - block keeps the same blocks and trains them.")
    return t


def plot(report: dict, out: Path) -> list[Path]:
    """probe_vs_finetuned.png: AUROC against the blocks kept, a probe's curve and the fine-tuned truncations."""
    import matplotlib.pyplot as plt

    from chexcut.evaluation.plots import ci_segments
    from chexcut.study.table import save_plot

    probes = [p for p in report.get("probes") or [] if p["comparable"]]
    if not probes:
        return []
    fig, ax = plt.subplots(figsize=(7, 5))
    for p, color in zip(probes, plt.get_cmap("tab10")(range(len(probes)))):
        ks = [b["block"] for b in p["blocks"]]
        ax.plot(ks, [b["probe_auroc"] for b in p["blocks"]], "-o", color=color,
                label=f"{p['arch']}/{p['weights']}: linear probe")
        ci_segments(ax, ks, [b["probe_ci_low"] for b in p["blocks"]], [b["probe_ci_high"] for b in p["blocks"]],
                    color=color, alpha=0.5)
        tuned = [b for b in p["blocks"] if b["finetuned_auroc"] is not None]
        ax.plot([b["block"] for b in tuned], [b["finetuned_auroc"] for b in tuned], "s", color=color, markersize=9,
                fillstyle="none", label=f"{p['arch']}/{p['weights']}: fine-tuned truncation")
    ax.set(xlabel="blocks kept", ylabel="mean AUROC, 5 competition tasks",
           title="A linear probe at every depth beside fine-tuning")
    ax.legend(fontsize=7)
    return [save_plot(fig, ax, out / "probe_vs_finetuned.png")]
