"""Many runs -> the CheXtransfer findings: tables, correlations, parameter efficiency, plots.

Input: finetune run directories that ``chexcut evaluate`` completed (``eval.json`` and
``predictions.csv`` inside), found under a study folder or given one by one. Every comparison is
paired on the same evaluation rows: predictions are re-read and joined on Path. With several
seeds, a configuration's predictions are averaged over its seeds (a seed ensemble) before a paired
test, and its AUROC is reported as mean +- SD over the seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chexcut import rundir
from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir
from chexcut.study.plan import PLAN, load_plan


@dataclass
class RunResult:
    run_dir: Path
    arch: str
    family: str
    weights: str  # imagenet | none | file
    drop: int
    seed: int
    params: int
    macs: int | None
    top1: float | None
    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    labels: tuple[str, ...]
    eval_n: int
    eval_key: str  # what was evaluated: data, split, level, options
    predictions: Path | None
    overlap: bool = False  # evaluated with --allow-overlap on rows shared with its training set
    bench: dict | None = None  # this run's level from `chexcut bench RUN --json RUN/bench.json`


@dataclass
class Collected:
    runs: list[RunResult] = field(default_factory=list)
    incomplete: list[dict] = field(default_factory=list)


def find_run_dirs(targets: list[Path]) -> list[Path]:
    out = []
    for t in targets:
        t = Path(t)
        if not t.exists():
            raise ChexcutError(f"{t} does not exist")
        if RunDir(t).is_run():
            out.append(t)
        elif (t / PLAN).is_file() or (t / "runs").is_dir():
            if (t / PLAN).is_file():
                out += [t / r["run_dir"] for r in load_plan(t)["runs"]]
            else:
                out += sorted(p.parent for p in (t / "runs").glob(f"*/{rundir.CONFIG}"))
        else:
            found = sorted(p.parent for p in t.glob(f"*/{rundir.CONFIG}"))
            if not found:
                raise ChexcutError(f"{t} is neither a run directory nor a study folder")
            out += found
    return out


def collect(targets: list[Path]) -> Collected:
    from chexcut.models.anatomy_cache import cached_anatomy
    from chexcut.models.libraries import weights_meta
    from chexcut.models.registry import get_arch

    res = Collected()
    for d in find_run_dirs(targets):
        rd = RunDir(d)
        if not rd.is_run():
            res.incomplete.append({"run_dir": str(d), "reason": "not started (no config.json)"})
            continue
        if not rd.eval.is_file():
            state = rd.read_state()
            res.incomplete.append({"run_dir": str(d), "reason": f"no eval.json (finetune {state.get('status', 'not finished')})"})
            continue
        cfg, ev = rd.read_config(), rd.read_eval()
        if cfg is None or ev is None:
            res.incomplete.append({"run_dir": str(d), "reason": "unreadable config.json or eval.json"})
            continue
        damage = _damaged(cfg, ev)
        if damage:
            res.incomplete.append({"run_dir": str(d), "reason": damage})
            continue
        spec = cfg["model"]
        arch = get_arch(spec["arch"])
        kind = spec["weights"]["kind"]
        weights = {"imagenet": "imagenet", "none": "none"}.get(kind, "file")
        size = int(cfg["train"]["image_size"])
        try:
            anat = cached_anatomy(arch.name, size, len(spec["labels"]))
            macs = anat["truncations"][int(spec["drop"])]["macs"]
        except ChexcutError:
            macs = None
        mc = ev.get("mean_competition") or {}
        src = ev.get("source") or {}
        key = json.dumps({"data": src.get("data"), "split": src.get("split"), "level": ev.get("level"),
                          "n": ev.get("n"), "options": {k: v for k, v in (src.get("options") or {}).items()
                                                        if k in ("views", "uncertain", "blank", "csv")}},
                         sort_keys=True)
        preds = rd.predictions
        res.runs.append(RunResult(
            run_dir=d, arch=arch.name, family=arch.family.name, weights=weights, drop=int(spec["drop"]),
            seed=int(cfg["train"]["seed"]), params=int(spec["params"]), macs=macs, top1=weights_meta(arch)["top1"],
            auroc=mc.get("auroc"), ci_low=mc.get("ci_low"), ci_high=mc.get("ci_high"),
            labels=tuple(r["label"] for r in ev["labels"]), eval_n=int(ev["n"]), eval_key=key,
            predictions=preds if preds.is_file() else None, overlap=_overlapping(ev), bench=_bench(rd)))
    return res


def _damaged(cfg: dict, ev: dict) -> str | None:
    """Why a run's config.json / eval.json cannot be used (the run is then listed, not used), or None."""
    for where, obj, keys in (("config.json", cfg, ("model", "train")), ("eval.json", ev, ("labels", "n"))):
        missing = [k for k in keys if k not in obj]
        if missing:
            return f"damaged {where}: no {', '.join(map(repr, missing))}"
    spec = cfg["model"]
    if not isinstance(spec, dict) or not all(k in spec for k in ("arch", "drop", "labels", "params", "weights")):
        return "damaged config.json: its 'model' lacks arch, drop, labels, params or weights"
    from chexcut.models.registry import get_arch

    try:
        get_arch(spec["arch"])
        int(spec["drop"]), int(spec["params"]), int(cfg["train"]["seed"]), int(cfg["train"]["image_size"])
    except (ChexcutError, KeyError, TypeError, ValueError) as e:
        return f"damaged config.json: {e}"
    return None


def _bench(rd: RunDir) -> dict | None:
    """Latency (batch 1) and throughput of the run's model, when `chexcut bench` measured them."""
    b = _read(rd.bench)
    try:
        level = b["levels"][0]
        return {"latency_ms": float(level["latency_ms"]["median"]), "throughput_img_s": float(level["throughput_img_s"]),
                "device": b.get("device_name") or b.get("device")}
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def _read(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _overlapping(ev: dict) -> bool:
    """Whether an eval.json records rows shared with the training set (allowed with --allow-overlap)."""
    from chexcut.evaluation.evalset import overlaps_training

    return overlaps_training((ev.get("evaluation_set") or {}).get("overlap"))


def check_comparable(runs: list[RunResult]) -> None:
    """Runs compared in one report must share the label set and the evaluation set."""
    if not runs:
        return
    labels = {r.labels for r in runs}
    if len(labels) > 1:
        a, b = list(labels)[:2]
        raise ChexcutError(f"the runs were evaluated on different label sets ({len(a)} vs {len(b)} labels, e.g. "
                           f"{sorted(set(a) ^ set(b))[:3]}); report them separately")
    keys = {r.eval_key for r in runs}
    if len(keys) > 1:
        a, b = (json.loads(k) for k in list(keys)[:2])
        diff = [k for k in a if a[k] != b[k]]
        raise ChexcutError(f"the runs were evaluated on different evaluation sets (differing in {', '.join(diff)}); "
                           f"report them separately")


# ----------------------------------------------------------------------------- paired comparisons

class PairedTester:
    """Paired bootstrap tests between configurations, on the rows every run was evaluated on."""

    def __init__(self, runs: list[RunResult], bootstrap: int, seed: int, alpha: float, margin: float | None = None):
        self.bootstrap, self.seed, self.alpha, self.margin = bootstrap, seed, alpha, margin
        self.evalset = None
        self._preds: dict[Path, np.ndarray] = {}
        first = next((r for r in runs if r.predictions is not None), None)
        if first is not None:
            self.evalset = self._evalset(first)

    def _evalset(self, run: RunResult):
        """Labels of the evaluation rows, rebuilt the way evaluate built them."""
        import dataclasses

        from chexcut.data.chexpert import DataOptions, load_split
        from chexcut.evaluation.evaluate import evalset_from_table

        ev = RunDir(run.run_dir).read_eval()
        src = ev["source"]
        opts = dataclasses.replace(DataOptions.from_json(src["options"]), labels=tuple(run.labels))
        table = load_split(src["data"], src["split"], opts)
        self.level = ev.get("level", "study")
        return evalset_from_table(table)

    def scores(self, runs: list[RunResult]) -> np.ndarray | None:
        """Seed-averaged (N, L) probabilities of ``runs`` on the evaluation rows."""
        from chexcut.evaluation.predictions import align, read_predictions

        mats = []
        for r in runs:
            if r.predictions is None:
                return None
            if r.predictions not in self._preds:
                self._preds[r.predictions] = align(self.evalset, read_predictions(r.predictions, labels=r.labels),
                                                   name=str(r.predictions))
            mats.append(self._preds[r.predictions])
        return np.mean(mats, axis=0)

    def compare(self, a: list[RunResult], b: list[RunResult]) -> dict | None:
        """delta (a - b) of mean competition AUROC, CI, p and the non-inferiority p at the margin;
        None without predictions."""
        from chexcut.evaluation.evaluate import aggregate_by_study, evaluate

        if self.evalset is None:
            return None
        sa, sb = self.scores(a), self.scores(b)
        if sa is None or sb is None:
            return None
        es, mats = self.evalset, [sa, sb]
        if self.level == "study":
            es, mats = aggregate_by_study(es, mats)
        r = evaluate(es, mats[0], bootstrap=self.bootstrap, seed=self.seed, compare=mats[1], alpha=self.alpha,
                     margin=self.margin)
        return r["compare"]["mean_competition"]


# ----------------------------------------------------------------------------- the report

def _mean_sd(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _corr(x, y) -> dict | None:
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return {"n": len(pairs), "spearman_rho": None, "spearman_p": None, "kendall_tau": None, "kendall_p": None}
    xs, ys = zip(*pairs)
    rho, p = spearmanr(xs, ys)
    tau, pt = kendalltau(xs, ys)
    f = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)  # noqa: E731
    return {"n": len(pairs), "spearman_rho": f(rho), "spearman_p": f(p), "kendall_tau": f(tau), "kendall_p": f(pt)}


def build_report(targets: list[Path], bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0,
                 margin: float = 0.02, fill_hint: str | None = None) -> dict:
    """The report JSON: per-configuration results and the paper's four findings.

    Parameter efficiency is decided twice: by the paper's rule (the deepest truncation without a
    significant drop) and by non-inferiority at ``margin`` (the deepest truncation whose drop is shown
    to be smaller than ``margin``: one-sided test at ``alpha``, i.e. the lower bound of the one-sided
    1 - alpha interval of delta lies above -margin)."""
    col = collect(targets)
    if not col.runs:
        raise ChexcutError(f"no evaluated runs found ({len(col.incomplete)} without eval.json: run "
                           f"`chexcut evaluate RUN --data DIR --json RUN/eval.json --predictions-out RUN/predictions.csv`)")
    check_comparable(col.runs)
    groups: dict[tuple, list[RunResult]] = {}
    for r in col.runs:
        groups.setdefault((r.arch, r.weights, r.drop), []).append(r)
    tester = PairedTester(col.runs, bootstrap, seed, alpha, margin)
    rows = [result_row(rs, tester.compare(rs, groups[(k[0], k[1], 0)]) if k[2] > 0 and (k[0], k[1], 0) in groups
                       else None, alpha)
            for k, rs in sorted(groups.items())]
    return {
        "runs": len(col.runs), "incomplete": col.incomplete, "alpha": alpha, "bootstrap": bootstrap,
        "margin": margin, "results": rows, "efficiency": parameter_efficiency(rows, margin),
        "leakage": [str(r.run_dir) for r in col.runs if r.overlap],
        "imagenet_vs_chexpert": imagenet_vs_chexpert(rows), "pretraining_boost": pretraining_boost(rows, groups, tester),
        "family_vs_size": family_vs_size(rows),
        "missing": missing_runs(rows, fill_hint),
    }


def missing_runs(rows: list[dict], fill_hint: str | None = None) -> dict:
    """Which findings lack runs, and the command that fills them: an empty section always says why."""
    archs = sorted({r["arch"] for r in rows})
    have = {w: sorted({r["arch"] for r in rows if r["weights"] == w and r["drop"] == 0}) for w in ("imagenet", "none")}
    no_pre = [a for a in archs if a not in have["imagenet"]]
    no_rand = [a for a in archs if a not in have["none"]]
    how = fill_hint or (f"`chexcut weights fetch {' '.join(no_pre)}`, then plan the study with `--weights "
                        f"imagenet,none` and run it" if no_pre else "plan the study with `--weights imagenet,none`")
    notes = {}
    if no_pre:
        notes["pretrained"] = f"no pretrained runs for {', '.join(no_pre)}: {how}"
    if no_rand:
        notes["random_init"] = f"no random-init runs for {', '.join(no_rand)}: plan the study with `--weights imagenet,none`"
    for w, what in (("imagenet", "pretrained"), ("none", "random-init")):
        if len(have[w]) < 3:
            notes[f"correlation_{w}"] = (f"needs 3 {what} architectures at drop 0, has {len(have[w])}"
                                         + (" (see the missing pretrained runs)" if w == "imagenet" and no_pre
                                            else " (add architectures with --archs)"))
    both = [a for a in archs if a in have["imagenet"] and a in have["none"]]
    if len(both) < 3:
        notes["boost"] = (f"needs pretrained and random-init runs of 3 architectures, has {len(both)}"
                          + (" (see the missing pretrained runs)" if no_pre else ""))
    return notes


def result_row(rs: list[RunResult], cmp: dict | None, alpha: float) -> dict:
    """One configuration (arch, weights, drop) over its seeds, with its paired test against drop 0."""
    mean, sd = _mean_sd([r.auroc for r in rs])
    first = rs[0]
    return {
        "arch": first.arch, "family": first.family, "weights": first.weights, "drop": first.drop,
        "params": first.params, "macs": first.macs, "top1": first.top1, "seeds": sorted(r.seed for r in rs),
        "auroc": mean, "auroc_sd": sd, "ci_low": first.ci_low if len(rs) == 1 else None,
        "ci_high": first.ci_high if len(rs) == 1 else None,
        "delta_vs_drop0": cmp["delta"] if cmp else None, "delta_ci_low": cmp["ci_low"] if cmp else None,
        "delta_ci_high": cmp["ci_high"] if cmp else None, "p_vs_drop0": cmp["p"] if cmp else None,
        "no_significant_drop": (None if cmp is None or cmp["p"] is None
                                else not (cmp["delta"] < 0 and cmp["p"] < alpha)),
        "p_noninferiority": cmp.get("p_noninferiority") if cmp else None,
        "noninferior": cmp.get("noninferior") if cmp else None,
        "run_dirs": [str(r.run_dir) for r in rs],
        **_bench_means(rs),
    }


def _bench_means(rs: list[RunResult]) -> dict:
    benched = [r.bench for r in rs if r.bench]
    if not benched:
        return {"latency_ms": None, "throughput_img_s": None}
    return {"latency_ms": float(np.mean([b["latency_ms"] for b in benched])),
            "throughput_img_s": float(np.mean([b["throughput_img_s"] for b in benched])),
            "bench_device": benched[0]["device"]}


def parameter_efficiency(rows: list[dict], margin: float | None = None, weights: str = "imagenet") -> dict:
    """Per arch with ``weights`` (the paper's finding is about pretrained ones), the deepest truncation
    kept by each rule and its params ratio to drop 0: the paper's = no significant drop (absence of
    evidence), ``noninferior`` = a drop shown to be smaller than ``margin``. Both mean ratios, so a reader
    sees how much of the ratio rests on low power. The pretrained result carries the random-init one as
    ``random_init``."""
    by_key = {(r["arch"], r["weights"], r["drop"]): r for r in rows}
    archs = []
    for arch in sorted({r["arch"] for r in rows if r["weights"] == weights}):
        full = by_key.get((arch, weights, 0))
        if not full:
            continue
        cut = [r for r in rows if r["arch"] == arch and r["weights"] == weights and r["drop"] > 0]
        entry = {"arch": arch, "params_full": full["params"], "auroc_full": full["auroc"]}
        for rule, key in (("", "no_significant_drop"), ("_noninferior", "noninferior")):
            ok = [r for r in cut if r[key]]
            best = max(ok, key=lambda r: r["drop"]) if ok else full
            entry.update({f"drop{rule}": best["drop"], f"params{rule}": best["params"],
                          f"ratio{rule}": full["params"] / best["params"], f"auroc{rule}": best["auroc"]})
            if full.get("latency_ms") and best.get("latency_ms"):  # measured, not inferred (chexcut bench)
                entry[f"latency_speedup{rule}"] = full["latency_ms"] / best["latency_ms"]
                entry[f"throughput_speedup{rule}"] = best["throughput_img_s"] / full["throughput_img_s"]
        archs.append(entry)

    def mean(key):
        return float(np.mean([e[key] for e in archs])) if archs else None

    out = {"archs": archs, "mean_ratio": mean("ratio"), "mean_ratio_noninferior": mean("ratio_noninferior"),
           "margin": margin}
    if weights == "imagenet":
        out["random_init"] = parameter_efficiency(rows, margin, "none")
    return out


def imagenet_vs_chexpert(rows: list[dict]) -> dict:
    """ImageNet top-1 vs CheXpert AUROC at drop 0, with and without pretraining."""
    out = {}
    for w in ("imagenet", "none"):
        full = [r for r in rows if r["weights"] == w and r["drop"] == 0]
        out[w] = {**_corr([r["top1"] for r in full], [r["auroc"] for r in full]), "archs": [r["arch"] for r in full]}
    return out


def pretraining_boost(rows: list[dict], groups: dict, tester: PairedTester) -> dict:
    """Pretrained minus random init per arch (drop 0), paired, and its correlation with size."""
    by_key = {(r["arch"], r["weights"], r["drop"]): r for r in rows}
    boost = []
    for arch in sorted({r["arch"] for r in rows}):
        a, b = groups.get((arch, "imagenet", 0)), groups.get((arch, "none", 0))
        if not a or not b:
            continue
        cmp = tester.compare(a, b)
        ra, rb = by_key[(arch, "imagenet", 0)], by_key[(arch, "none", 0)]
        boost.append({"arch": arch, "params": ra["params"], "pretrained": ra["auroc"], "random": rb["auroc"],
                      "boost": (ra["auroc"] - rb["auroc"]) if ra["auroc"] is not None and rb["auroc"] is not None else None,
                      "ci_low": cmp["ci_low"] if cmp else None, "ci_high": cmp["ci_high"] if cmp else None,
                      "p": cmp["p"] if cmp else None})
    return {"archs": boost, "vs_params": _corr([b["params"] for b in boost], [b["boost"] for b in boost])}


def family_vs_size(rows: list[dict]) -> dict | None:
    """Without pretraining: how much of the AUROC spread is between families rather than sizes."""
    rand = [r for r in rows if r["weights"] == "none" and r["drop"] == 0 and r["auroc"] is not None]
    if not rand:
        return None
    y = np.array([r["auroc"] for r in rand])
    fams = sorted({r["family"] for r in rand})
    total = float(((y - y.mean()) ** 2).sum())
    between = sum(len(v) * (np.mean(v) - y.mean()) ** 2
                  for f in fams for v in [[r["auroc"] for r in rand if r["family"] == f]])
    return {
        "families": [{"family": f, "archs": [r["arch"] for r in rand if r["family"] == f],
                      "mean_auroc": float(np.mean([r["auroc"] for r in rand if r["family"] == f]))} for f in fams],
        "share_family": float(between / total) if total > 0 else None,
        "share_size_within_family": float(1 - between / total) if total > 0 else None,
    }


# ----------------------------------------------------------------------------- files and plots

def write_outputs(report: dict, out: Path) -> list[Path]:
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
    write_text(out / "report.md", markdown(report, [p.name for p in plots]))
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
    ax.legend(fontsize=8)
    paths.append(_save(fig, ax, out / "imagenet_vs_auroc.png"))
    return paths


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
                for r in line:
                    ax.annotate(f"d{r['drop']}", (r[x], r["auroc"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean AUROC, 5 competition tasks")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, ax, path)


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from chexcut.fileio import atomic_path

    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def efficiency_markdown(eff: dict, alpha: float, title: str = "pretrained", note: str | None = None) -> list[str]:
    """Both rules side by side: the paper's (no significant drop) and non-inferiority at the margin."""
    m = _fmt(eff.get("margin"), "g")
    extra = efficiency_markdown(eff["random_init"], alpha, "random init") if eff.get("random_init", {}).get("archs") \
        else []
    if not eff["archs"]:
        return ["", f"## Parameter efficiency ({title})", "",
                f"No {title} runs with drop 0 and a truncation" + (" (see the missing runs above)." if note else ".")] + extra
    lines = ["", f"## Parameter efficiency ({title})", "",
             f"Two rules for \"no drop\": the paper's (the deepest truncation whose drop vs drop 0 is not significant "
             f"at alpha = {alpha}; with few validation images almost nothing is significant) and non-inferiority "
             f"(the deepest truncation whose drop is shown to be smaller than the margin {m} AUROC: one-sided test at "
             f"alpha).", "",
             f"| arch | full params | paper rule: drop | params | ratio | non-inferior ({m}): drop | params | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e['arch']} | {e['params_full']:,} | {e['drop']} | {e['params']:,} | {e['ratio']:.2f}x | "
              f"{e['drop_noninferior']} | {e['params_noninferior']:,} | {e['ratio_noninferior']:.2f}x |"
              for e in eff["archs"]]
    timed = [e for e in eff["archs"] if "latency_speedup" in e]
    if timed:
        lines += ["", "Measured with `chexcut bench` (batch-1 latency and throughput speedups vs drop 0, beside the "
                      "params ratio):", "", "| arch | rule | params ratio | latency speedup | throughput speedup |",
                  "|---|---|---|---|---|"]
        for e in timed:
            for rule, name in (("", "paper"), ("_noninferior", "non-inferior")):
                if f"latency_speedup{rule}" in e:
                    lines.append(f"| {e['arch']} | {name} | {e[f'ratio{rule}']:.2f}x | "
                                 f"{e[f'latency_speedup{rule}']:.2f}x | {e[f'throughput_speedup{rule}']:.2f}x |")
    lines += ["", f"Mean ratio, paper rule: **{_fmt(eff['mean_ratio'], '.2f')}x**; non-inferiority rule: "
                  f"**{_fmt(eff['mean_ratio_noninferior'], '.2f')}x** (the paper reports 3.25x for pretrained models)."]
    return lines + extra


def markdown(report: dict, plots: list[str]) -> str:
    lines = ["# chexcut report", "",
             f"{report['runs']} evaluated runs; paired bootstrap with {report['bootstrap']} replicates, "
             f"alpha = {report['alpha']}.", ""]
    if report.get("leakage"):
        lines += ["**Evaluated on rows shared with their training set** (`--allow-overlap`; their AUROC is "
                  "inflated):", ""] + [f"- `{d}`" for d in report["leakage"]] + [""]
    for key in ("pretrained", "random_init"):
        if (report.get("missing") or {}).get(key):
            lines += [f"**Missing runs**: {report['missing'][key]}.", ""]
    if report["incomplete"]:
        lines += ["**Missing or incomplete runs** (not in any mean):", ""]
        lines += [f"- `{i['run_dir']}`: {i['reason']}" for i in report["incomplete"]] + [""]
    m = report.get("margin")
    lines += ["## Results", "", "| arch | weights | drop | params | MACs | AUROC | SD | delta vs drop 0 | p | no sig. drop "
              f"| p non-inf. ({_fmt(m, 'g')}) | non-inferior |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    yes_no = {True: "yes", False: "**no**", None: "-"}
    for r in report["results"]:
        lines.append(f"| {r['arch']} | {r['weights']} | {r['drop']} | {r['params']:,} | "
                     f"{_fmt(r['macs'] and r['macs'] / 1e9, '.2f')}G | {_fmt(r['auroc'])} | {_fmt(r['auroc_sd'])} | "
                     f"{_fmt(r['delta_vs_drop0'], '+.4f')} | {_fmt(r['p_vs_drop0'], '.3g')} | "
                     f"{yes_no[r['no_significant_drop']]} | {_fmt(r.get('p_noninferiority'), '.3g')} | "
                     f"{yes_no[r.get('noninferior')]} |")
    lines += efficiency_markdown(report["efficiency"], report["alpha"], note=(report.get("missing") or {}).get("pretrained"))
    notes = report.get("missing") or {}
    lines += ["", "## ImageNet top-1 vs CheXpert AUROC", ""]
    for w, c in report["imagenet_vs_chexpert"].items():
        who = "pretrained" if w == "imagenet" else "random init"
        if c["spearman_rho"] is None:
            lines.append(f"- {who}: {notes.get(f'correlation_{w}') or 'not enough architectures for a correlation'}")
            continue
        lines.append(f"- {who}: n = {c['n']}, Spearman rho = {_fmt(c['spearman_rho'], '.2f')} (p = "
                     f"{_fmt(c['spearman_p'], '.3g')}), Kendall tau = {_fmt(c['kendall_tau'], '.2f')} (p = "
                     f"{_fmt(c['kendall_p'], '.3g')})")
    pb = report["pretraining_boost"]
    lines += ["", "## Pretraining boost (drop 0)", ""]
    if pb["archs"]:
        lines += ["| arch | params | pretrained | random | boost | p |", "|---|---|---|---|---|---|"]
        lines += [f"| {b['arch']} | {b['params']:,} | {_fmt(b['pretrained'])} | {_fmt(b['random'])} | "
                  f"{_fmt(b['boost'], '+.4f')} | {_fmt(b['p'], '.3g')} |" for b in pb["archs"]]
    v = pb["vs_params"]
    if v["spearman_rho"] is None:
        lines += ["", f"Boost vs parameter count: {notes.get('boost') or 'needs 3 architectures'}.", ""]
    else:
        lines += ["", f"Boost vs parameter count: Spearman rho = {_fmt(v['spearman_rho'], '.2f')} "
                      f"(p = {_fmt(v['spearman_p'], '.3g')}; the paper reports -0.72).", ""]
    fs = report["family_vs_size"]
    if fs:
        lines += ["## Family vs size (random init)", ""]
        lines += [f"- {f['family']}: mean AUROC {f['mean_auroc']:.4f} ({', '.join(f['archs'])})" for f in fs["families"]]
        lines += ["", f"Share of AUROC variance between families: {_fmt(fs['share_family'], '.2f')}; within families "
                      f"(size): {_fmt(fs['share_size_within_family'], '.2f')}.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
