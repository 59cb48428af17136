"""Many runs -> the CheXtransfer findings: per-configuration results, parameter efficiency, ImageNet accuracy
vs CheXpert AUROC, the pretraining boost, family vs size (the report JSON).

Every comparison is paired on the same evaluation rows: predictions are re-read and joined on Path. With
several seeds, a configuration's predictions are averaged over its seeds (a seed ensemble) before a paired
test, and its AUROC is reported as mean +- SD over the seeds with the CI of the seed ensemble."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation.metrics import holm
from chexcut.reading import read_json
from chexcut.rundir import RunDir
from chexcut.study.collect import Collected, RunResult, check_comparable, collect


class PairedTester:
    """Paired bootstrap tests between configurations, on the rows every run was evaluated on."""

    def __init__(self, runs: list[RunResult], bootstrap: int, seed: int, alpha: float, margin: float | None = None):
        self.bootstrap, self.seed, self.alpha, self.margin = bootstrap, seed, alpha, margin
        self.evalrows = None
        self._preds: dict[Path, np.ndarray] = {}
        first = next((r for r in runs if r.predictions is not None), None)
        if first is not None:
            self.evalrows = self._evalrows(first)

    def _evalrows(self, run: RunResult):
        """Labels of the evaluation rows, rebuilt the way evaluate built them."""
        import dataclasses

        from chexcut.data.tables import DataOptions, load_split
        from chexcut.evaluation.evaluate import evalrows_from_table

        ev = read_json(run.eval_file) if run.eval_file else RunDir(run.run_dir).read_eval()
        src = ev["source"]
        opts = dataclasses.replace(DataOptions.from_json(src["options"]), labels=tuple(run.labels))
        table = load_split(src["data"], src["split"], opts)
        self.level = ev.get("level", "study")
        return evalrows_from_table(table)

    def scores(self, runs: list[RunResult]) -> np.ndarray | None:
        """Seed-averaged (N, L) probabilities of ``runs`` on the evaluation rows."""
        from chexcut.evaluation.predictions import align, read_predictions

        mats = []
        for r in runs:
            if r.predictions is None:
                return None
            if r.predictions not in self._preds:
                self._preds[r.predictions] = align(self.evalrows, read_predictions(r.predictions, labels=r.labels),
                                                   name=str(r.predictions))
            mats.append(self._preds[r.predictions])
        return np.mean(mats, axis=0)

    def _aggregated(self, mats: list[np.ndarray]):
        from chexcut.evaluation.evaluate import aggregate_by_study

        if self.level == "study":
            return aggregate_by_study(self.evalrows, mats)
        return self.evalrows, mats

    def interval(self, runs: list[RunResult]) -> dict | None:
        """The mean competition AUROC of the seed ensemble of ``runs`` with its bootstrap CI (None without
        predictions)."""
        from chexcut.evaluation.evaluate import evaluate

        scores = None if self.evalrows is None else self.scores(runs)
        if scores is None or not self.bootstrap:
            return None
        es, mats = self._aggregated([scores])
        return evaluate(es, mats[0], bootstrap=self.bootstrap, seed=self.seed)["mean_competition"]

    def compare(self, a: list[RunResult], b: list[RunResult]) -> dict | None:
        """delta (a - b) of mean competition AUROC, CI, p and the non-inferiority p at the margin;
        None without predictions."""
        from chexcut.evaluation.evaluate import evaluate

        if self.evalrows is None:
            return None
        sa, sb = self.scores(a), self.scores(b)
        if sa is None or sb is None:
            return None
        es, mats = self._aggregated([sa, sb])
        r = evaluate(es, mats[0], bootstrap=self.bootstrap, seed=self.seed, compare=mats[1], alpha=self.alpha,
                     margin=self.margin)
        return r["compare"]["mean_competition"]

    def all_configurations(self, groups: dict, rows: list[dict]) -> dict | None:
        """The ensemble of every configuration (each its seed ensemble, weighted equally): its 5-task AUROC with CI,
        paired against the best configuration on the same resamples. None without predictions or with one."""
        from chexcut.evaluation.evaluate import evaluate

        ranked = [r for r in rows if r["auroc"] is not None]
        if self.evalrows is None or len(groups) < 2 or not ranked:
            return None
        mats = [self.scores(rs) for rs in groups.values()]
        best = max(ranked, key=lambda r: r["auroc"])
        sb = self.scores(groups[(best["arch"], best["weights"], best["drop"])])
        if any(m is None for m in mats) or sb is None:
            return None
        es, agg = self._aggregated([np.mean(mats, axis=0), sb])
        r = evaluate(es, agg[0], bootstrap=self.bootstrap, seed=self.seed, compare=agg[1], alpha=self.alpha)
        m, c = r["mean_competition"] or {}, (r["compare"] or {}).get("mean_competition") or {}
        return {"configurations": len(groups), "auroc": m.get("auroc"), "ci_low": m.get("ci_low"),
                "ci_high": m.get("ci_high"), "best_configuration": f"{best['arch']}/{best['weights']}/drop{best['drop']}",
                "delta_vs_best": c.get("delta"), "delta_ci_low": c.get("ci_low"), "delta_ci_high": c.get("ci_high"),
                "p_vs_best": c.get("p"), "note": "every configuration's seed ensemble averaged with equal weight; the "
                                                "best configuration was chosen on these rows (favours it)"}


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


def build_report(targets: list[Path], bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0,  # longer: the findings in order
                 margin: float = 0.02, fill_hint: str | None = None, external: str | None = None,
                 collected: Collected | None = None, target_auroc: float | None = None) -> dict:
    """The report JSON: per-configuration results and the paper's four findings.

    Parameter efficiency is decided twice: by the paper's rule (the deepest truncation without a
    significant drop) and by non-inferiority at ``margin`` (the deepest truncation whose drop is shown
    to be smaller than ``margin``: one-sided test at ``alpha``, i.e. the lower bound of the one-sided
    1 - alpha interval of delta lies above -margin). ``external``: the same report from the runs' evaluations on
    that external set; without it, the report adds an ``external`` block per set the runs were evaluated on.
    ``collected``: the runs already read by :func:`collect` for these targets and ``external`` (read once).

    A study of several adaptations or label budgets: the paper's findings are computed on one of them
    (``arm``: :func:`chexcut.study.howmuch.main_arm`), and ``how_much`` compares every configuration
    (``target_auroc``: what its learning curves predict the labels for)."""
    from chexcut.study.howmuch import how_much, main_arm
    from chexcut.study.probes import probes_beside

    if target_auroc is not None and not 0 < target_auroc < 1:
        raise ChexcutError(f"--target-auroc is an AUROC in (0, 1), e.g. 0.85; not {target_auroc:g}")
    col = collected if collected is not None else collect(targets, external)
    if not col.runs:
        raise ChexcutError(f"no evaluated runs found ({len(col.incomplete)} without eval.json: run "
                           f"`chexcut evaluate RUN --data DIR --json RUN/eval.json --predictions-out RUN/predictions.csv`)")
    check_comparable(col.runs)
    tester = PairedTester(col.runs, bootstrap, seed, alpha, margin)
    every: dict[tuple, list[RunResult]] = {}
    for r in col.runs:
        every.setdefault((r.arch, r.weights, r.drop, *r.arm), []).append(r)
    arm = main_arm({r.arm for r in col.runs})
    runs = [r for r in col.runs if r.arm == arm]
    groups = {k[:3]: rs for k, rs in every.items() if k[3:] == arm}
    rows = [result_row(rs, tester.compare(rs, groups[(k[0], k[1], 0)]) if k[2] > 0 and (k[0], k[1], 0) in groups
                       else None, alpha, tester.interval(rs) if len(rs) > 1 else None)
            for k, rs in sorted(groups.items())]
    for r, adjusted in zip(rows, holm([r["p_vs_drop0"] for r in rows])):  # family: every test against drop 0
        r["p_vs_drop0_holm"] = adjusted
    arm_rows = dict(zip(sorted(groups), rows))  # every configuration's row: the arm's as computed above
    every_rows = {k: arm_rows[k[:3]] if k[3:] == arm else
                  configuration_row(rs, tester.interval(rs) if len(rs) > 1 else None) for k, rs in every.items()}
    report = {
        "runs": len(col.runs), "incomplete": col.incomplete, "alpha": alpha, "bootstrap": bootstrap,
        "margin": margin, "arm": {"adapt": arm[0], "label_fraction": arm[1], "runs": len(runs)},
        "how_much": how_much(every_rows, every, tester, alpha, margin, target_auroc), "results": rows,
        "probes": probes_beside(targets, rows, col.runs[0].eval_key, arm[1]),
        "efficiency": parameter_efficiency(rows, margin),
        "leakage": [str(r.run_dir) for r in col.runs if r.overlap],  # every run's, the other arms' too
        "ensemble_all": tester.all_configurations(groups, rows),
        "imagenet_vs_chexpert": imagenet_vs_chexpert(rows), "pretraining_boost": pretraining_boost(rows, groups, tester),
        "pretraining_sources": pretraining_sources(rows, groups, tester),
        "family_vs_size": family_vs_size(rows),
        "missing": missing_runs(rows, fill_hint),
        "subgroups": [{"run_dir": str(r.run_dir), "arch": r.arch, "weights": r.weights, "drop": r.drop, "seed": r.seed,
                       **g} for r in runs for g in (r.subgroups or [])],
        "calibration": [{"run_dir": str(r.run_dir), "arch": r.arch, "weights": r.weights, "drop": r.drop,
                         "seed": r.seed, **r.calibration} for r in runs if r.calibration],
        **({"figures": [{"run_dir": str(r.run_dir), "arch": r.arch, "weights": r.weights, "drop": r.drop,
                         "seed": r.seed, **r.figures} for r in runs if r.figures]}
           if any(r.figures for r in runs) else {}),  # the labels section's declared figures, when any
        "readers": [{"run_dir": str(r.run_dir), "arch": r.arch, "weights": r.weights, "drop": r.drop, "seed": r.seed,
                     **x} for r in runs for x in (r.readers or [])],
    }
    if external is None:
        report["external"] = _external_blocks(targets, col, report, dict(bootstrap=bootstrap, alpha=alpha, seed=seed,
                                                                        margin=margin))
    return report


def _external_blocks(targets, col, report: dict, settings: dict) -> list[dict]:
    """One block per external set any run was evaluated on (a study planned with ``--external``)."""
    from chexcut.study.external import external_validation

    blocks = []
    names = {r.run_dir: RunDir(r.run_dir).external_names() for r in col.runs}  # each run's folder listed once
    for name in sorted({n for ns in names.values() for n in ns}):
        found = collect(targets, name)  # a damaged or stray external/NAME.json: named, the rest of the report kept
        report["incomplete"] += [{"run_dir": i["run_dir"], "reason": f"external/{name}.json: {i['reason']}"}
                                 for i in found.incomplete if (Path(i["run_dir"]) / "external" / f"{name}.json").is_file()]
        if not found.runs:
            continue
        sub = build_report(targets, external=name, collected=found, **settings)
        first = next(d for d, ns in names.items() if name in ns)
        es = (RunDir(first).read_eval(name) or {}).get("evaluation_set") or {}
        blocks.append(external_validation(report, sub, name, es.get("dataset")))
    return blocks


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


def configuration_row(rs: list[RunResult], ensemble: dict | None = None) -> dict:
    """One configuration (arch, weights, drop, adaptation, label fraction) over its seeds. Its CI: the run's
    bootstrap CI, or with several seeds the CI of the seed ensemble (``ensemble``)."""
    mean, sd = _mean_sd([r.auroc for r in rs])
    first = rs[0]
    ci = (first.ci_low, first.ci_high) if len(rs) == 1 else \
        ((ensemble or {}).get("ci_low"), (ensemble or {}).get("ci_high"))
    patients, _ = _mean_sd([r.train_patients for r in rs])
    return {
        "arch": first.arch, "family": first.family, "weights": first.weights, "drop": first.drop,
        "adapt": first.adapt, "label_fraction": first.label_fraction, "params": first.params,
        "trainable_params": first.trainable_params, "train_patients": None if patients is None else round(patients),
        "macs": first.macs, "top1": first.top1, "seeds": sorted(r.seed for r in rs),
        "auroc": mean, "auroc_sd": sd, "ci_low": ci[0], "ci_high": ci[1],
        "ensemble_auroc": (ensemble or {}).get("auroc") if len(rs) > 1 else None,
        "run_dirs": [str(r.run_dir) for r in rs],
        **{f"label_{key}": _label_means(rs, key) for key in rs[0].label_figures},  # label_auroc, ...
        **_bench_means(rs),
        **{key: _mean_sd([(r.calibration or {}).get(key) for r in rs])[0] for key in ("brier", "ece", "slope")},
    }


def result_row(rs: list[RunResult], cmp: dict | None, alpha: float, ensemble: dict | None = None) -> dict:
    """:func:`configuration_row`, with its paired test against drop 0 (``cmp``)."""
    return {
        **configuration_row(rs, ensemble),
        "delta_vs_drop0": cmp["delta"] if cmp else None, "delta_ci_low": cmp["ci_low"] if cmp else None,
        "delta_ci_high": cmp["ci_high"] if cmp else None, "p_vs_drop0": cmp["p"] if cmp else None,
        "no_significant_drop": (None if cmp is None or cmp["p"] is None
                                else not (cmp["delta"] < 0 and cmp["p"] < alpha)),
        "p_noninferiority": cmp.get("p_noninferiority") if cmp else None,
        "noninferior": cmp.get("noninferior") if cmp else None,
    }


def _label_means(rs: list[RunResult], key: str = "auroc") -> dict:
    """label -> [the figure ``key`` (AUROC, ...: mean over seeds), CI low, CI high (one seed only)]."""
    out = {}
    for label in rs[0].labels:
        vals = [r.label_figures.get(key, {}).get(label, (None, None, None)) for r in rs]
        mean, _ = _mean_sd([v[0] for v in vals])
        out[label] = [mean, *(vals[0][1:] if len(rs) == 1 else (None, None))]
    return out


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
    for b, adjusted in zip(boost, holm([b["p"] for b in boost])):  # family: every architecture's boost
        b["p_holm"] = adjusted
    return {"archs": boost, "vs_params": _corr([b["params"] for b in boost], [b["boost"] for b in boost])}


def pretraining_sources(rows: list[dict], groups: dict, tester: PairedTester) -> dict:
    """Every pretraining source against random init and against each other, per architecture at drop 0: the
    paired delta of mean competition AUROC with its CI and p, Holm-adjusted within each family of tests; and each
    source's mean boost over the architectures that have it."""
    by_key = {(r["arch"], r["weights"], r["drop"]): r for r in rows}
    vs_random, between = [], []
    for arch in sorted({r["arch"] for r in rows}):
        present = sorted(w for (a, w, d) in groups if a == arch and d == 0 and w != "none")
        pairs = [(w, "none") for w in present if (arch, "none", 0) in groups] + \
            [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
        for a, b in pairs:
            cmp = tester.compare(groups[(arch, a, 0)], groups[(arch, b, 0)])
            ra, rb = by_key[(arch, a, 0)], by_key[(arch, b, 0)]
            delta = ra["auroc"] - rb["auroc"] if ra["auroc"] is not None and rb["auroc"] is not None else None
            entry = {"arch": arch, "weights": a, "versus": b, "auroc": ra["auroc"], "versus_auroc": rb["auroc"],
                     "delta": delta, "ci_low": cmp["ci_low"] if cmp else None,
                     "ci_high": cmp["ci_high"] if cmp else None, "p": cmp["p"] if cmp else None}
            (vs_random if b == "none" else between).append(entry)
    for family in (vs_random, between):
        for e, adjusted in zip(family, holm([e["p"] for e in family])):
            e["p_holm"] = adjusted
    sources = sorted({e["weights"] for e in vs_random})
    mean = {w: float(np.mean(d)) if (d := [e["delta"] for e in vs_random if e["weights"] == w
                                            and e["delta"] is not None]) else None for w in sources}
    return {"vs_random": vs_random, "between": between, "mean_boost": mean}


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
