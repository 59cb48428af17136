"""report: constructed runs whose answer is known -> flags, efficiency ratio, correlations vs scipy."""

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import f_oneway, spearmanr

from chexcut.errors import ChexcutError
from chexcut.evaluation.evaluate import aggregate_by_study, evalrows_from_table, evaluate
from chexcut.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from chexcut.models.anatomy import anatomy
from chexcut.models.libraries import weights_meta
from chexcut.models.registry import get_arch
from chexcut.study.findings import build_report
from chexcut.study.render import write_outputs

N = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A CheXpert-layout valid.csv (no images needed for a report): 600 studies, 0/1 labels."""
    root = tmp_path_factory.mktemp("ds") / "CheXpert-v1.0-small"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = {"Path": [f"CheXpert-v1.0-small/valid/patient{70000 + i}/study1/view1_frontal.jpg" for i in range(N)],
            "Sex": "Male", "Age": 50, "Frontal/Lateral": "Frontal", "AP/PA": "AP"}
    df = pd.DataFrame(rows)
    for lab in CHEXPERT_LABELS:
        df[lab] = (rng.random(N) < 0.3).astype(float)
    df.to_csv(root / "valid.csv", index=False)
    df.iloc[:10].to_csv(root / "train.csv", index=False)
    return root.parent


def make_run(base: Path, data: Path, arch: str, weights: str, drop: int, noise: float, seed: int = 0,
             labels=CHEXPERT_LABELS):
    """A run directory as finetune + evaluate leave it, with predictions = truth + noise (quality known)."""
    from chexcut.data.tables import DataOptions, load_split

    d = base / f"{arch}-{weights}-d{drop}-s{seed}"
    d.mkdir(parents=True)
    opts = DataOptions(labels=tuple(labels))
    table = load_split(data, "valid", opts)
    rng = np.random.default_rng(zlib.crc32(f"{arch}{weights}{drop}{seed}".encode()))
    probs = 1 / (1 + np.exp(-((table.targets - 0.5) * 2 + rng.normal(0, noise, table.targets.shape))))
    pd.DataFrame(probs, columns=list(labels)).assign(Path=table.paths)[["Path", *labels]].to_csv(
        d / "predictions.csv", index=False, float_format="%.9g")
    params = anatomy(arch, 320, len(labels)).truncations[drop].params
    spec = {"arch": arch, "drop": drop, "labels": list(labels), "params": params,
            "weights": {"kind": weights}, "image_size": 320}
    (d / "config.json").write_text(json.dumps({"model": spec, "train": {"seed": seed, "image_size": 320}}))
    es, (s,) = aggregate_by_study(evalrows_from_table(table), [probs])
    ev = evaluate(es, s, bootstrap=200)
    ev["level"] = "study"
    ev["source"] = {"data": str(data), "split": "valid", "options": opts.to_json()}
    (d / "eval.json").write_text(json.dumps(ev))
    return d


@pytest.fixture(scope="module")
def study(dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("study") / "runs"
    # resnet50 pretrained: drop 1 as good as drop 0, drop 2 much worse (a real drop)
    make_run(base, dataset, "resnet50", "imagenet", 0, 1.0)
    make_run(base, dataset, "resnet50", "imagenet", 1, 1.0)
    make_run(base, dataset, "resnet50", "imagenet", 2, 4.0)
    # resnet18 pretrained: drop 1 is already a real drop
    make_run(base, dataset, "resnet18", "imagenet", 0, 1.0)
    make_run(base, dataset, "resnet18", "imagenet", 1, 4.0)
    # densenet121 and mobilenet_v2: pretrained + random init at drop 0 (for correlations and the boost)
    make_run(base, dataset, "densenet121", "imagenet", 0, 1.2)
    make_run(base, dataset, "mobilenet_v2", "imagenet", 0, 0.8)
    for arch, noise in (("resnet50", 2.0), ("resnet18", 1.6), ("densenet121", 1.9), ("mobilenet_v2", 1.0)):
        make_run(base, dataset, arch, "none", 0, noise)
    return base.parent


def test_flags_efficiency_and_correlations(study):
    rep = build_report([study / "runs"], bootstrap=300)
    assert rep["runs"] == 11 and rep["incomplete"] == []
    row = {(r["arch"], r["weights"], r["drop"]): r for r in rep["results"]}
    assert row[("resnet50", "imagenet", 1)]["no_significant_drop"] is True
    assert row[("resnet50", "imagenet", 2)]["no_significant_drop"] is False
    assert row[("resnet50", "imagenet", 2)]["delta_vs_drop0"] < -0.05
    assert row[("resnet50", "imagenet", 2)]["p_vs_drop0"] < 0.05
    assert row[("resnet18", "imagenet", 1)]["no_significant_drop"] is False
    assert row[("resnet50", "imagenet", 0)]["no_significant_drop"] is None  # the reference itself
    eff = {e["arch"]: e for e in rep["efficiency"]["archs"]}
    assert eff["resnet50"]["drop"] == 1
    assert eff["resnet50"]["ratio"] == pytest.approx(23_536_718 / 8_557_646)
    assert eff["resnet18"]["drop"] == 0 and eff["resnet18"]["ratio"] == 1.0
    assert rep["efficiency"]["mean_ratio"] == pytest.approx(np.mean([e["ratio"] for e in eff.values()]))
    # correlations computed another way: Pearson on ranks, and concordant minus discordant pairs
    for w in ("imagenet", "none"):
        full = [r for r in rep["results"] if r["weights"] == w and r["drop"] == 0]
        top1 = np.array([weights_meta(get_arch(r["arch"]))["top1"] for r in full])
        auc = np.array([r["auroc"] for r in full])
        c = rep["imagenet_vs_chexpert"][w]
        assert c["n"] == 4
        ranks = [np.argsort(np.argsort(v)) for v in (top1, auc)]  # no ties among 4 distinct values
        assert c["spearman_rho"] == pytest.approx(np.corrcoef(*ranks)[0, 1])
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        concordance = sum(np.sign(top1[i] - top1[j]) * np.sign(auc[i] - auc[j]) for i, j in pairs)
        assert c["kendall_tau"] == pytest.approx(concordance / len(pairs))
        assert 0 <= c["spearman_p"] <= 1
    boost = {b["arch"]: b for b in rep["pretraining_boost"]["archs"]}
    assert boost["resnet50"]["boost"] > 0 and boost["resnet50"]["p"] < 0.05
    b = rep["pretraining_boost"]["archs"]
    assert rep["pretraining_boost"]["vs_params"]["spearman_rho"] == pytest.approx(
        spearmanr([x["params"] for x in b], [x["boost"] for x in b])[0])
    fs = rep["family_vs_size"]
    # the between-family share is one-way ANOVA's eta squared: from scipy's F statistic, independently
    rand = [r for r in rep["results"] if r["weights"] == "none" and r["drop"] == 0]
    groups = [[r["auroc"] for r in rand if r["family"] == f] for f in sorted({r["family"] for r in rand})]
    f_stat = f_oneway(*groups).statistic
    k, n = len(groups), len(rand)
    assert fs["share_family"] == pytest.approx(f_stat * (k - 1) / (f_stat * (k - 1) + n - k))
    assert {f["family"] for f in fs["families"]} == {"resnet", "densenet", "mobilenet_v2"}


def test_outputs_written(study, tmp_path):
    rep = build_report([study / "runs"], bootstrap=100)
    written = write_outputs(rep, tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "results.csv", "results.json", "auroc_vs_params.png", "imagenet_vs_auroc.png"} <= names
    assert (tmp_path / "out" / "auroc_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Parameter efficiency" in md and "![auroc_vs_params.png](auroc_vs_params.png)" in md
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(rep["results"])


def test_incomplete_runs_are_listed_never_dropped_silently(study, dataset, tmp_path):
    import shutil

    base = tmp_path / "runs"
    shutil.copytree(study / "runs", base)
    (base / "resnet18-imagenet-d1-s0" / "eval.json").unlink()
    rep = build_report([base], bootstrap=50)
    assert rep["runs"] == 10
    assert any("resnet18-imagenet-d1-s0" in i["run_dir"] and "no eval.json" in i["reason"] for i in rep["incomplete"])


def test_mixed_label_sets_are_refused(study, dataset, tmp_path):
    import shutil

    base = tmp_path / "runs"
    shutil.copytree(study / "runs", base)
    make_run(base, dataset, "resnet34", "imagenet", 0, 1.0, labels=COMPETITION_LABELS)
    with pytest.raises(ChexcutError, match="different label sets"):
        build_report([base], bootstrap=50)


def test_report_cli_json(study):
    from conftest import run_cli

    rc, out, err = run_cli("report", study / "runs", "--bootstrap", "100", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["runs"] == 11
    rc, out, err = run_cli("report", study / "nothing-here")
    assert rc == 2 and "does not exist" in err


def test_no_evaluated_runs_is_an_error(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.json").write_text("{}")
    with pytest.raises(ChexcutError, match="no evaluated runs found .1 without eval.json"):
        build_report([tmp_path])


def test_both_efficiency_rules_side_by_side(study, tmp_path):
    rep = build_report([study / "runs"], bootstrap=300, margin=0.02)
    assert rep["margin"] == 0.02 and rep["efficiency"]["margin"] == 0.02
    row = {(r["arch"], r["weights"], r["drop"]): r for r in rep["results"]}
    # resnet50 drop 1: equally good, but "no significant drop" is not "shown not to drop": with 0.02 margin
    # and this small validation set the lower bound need not clear -0.02; drop 2 (a real drop) never passes
    assert row[("resnet50", "imagenet", 2)]["noninferior"] is False
    assert row[("resnet50", "imagenet", 1)]["p_noninferiority"] is not None
    eff = {e["arch"]: e for e in rep["efficiency"]["archs"]}
    for e in eff.values():  # non-inferiority is the stricter rule: never a deeper cut than "no significant drop"
        assert e["drop_noninferior"] <= e["drop"] and e["ratio_noninferior"] <= e["ratio"]
    wide = build_report([study / "runs"], bootstrap=300, margin=0.5)  # a huge margin accepts every cut
    assert {e["arch"]: e for e in wide["efficiency"]["archs"]}["resnet50"]["drop_noninferior"] == 2
    md_lines = write_outputs(rep, tmp_path / "o") and (tmp_path / "o" / "report.md").read_text()
    assert "non-inferiority rule" in md_lines and "Mean ratio, paper rule" in md_lines


def test_bench_results_join_the_efficiency_table_and_plot(study, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(study / "runs", runs)
    for d, ms in (("resnet50-imagenet-d0-s0", 40.0), ("resnet50-imagenet-d1-s0", 25.0), ("resnet50-imagenet-d2-s0", 10.0)):
        (runs / d / "bench.json").write_text(json.dumps({"device_name": "test CPU", "levels": [
            {"latency_ms": {"median": ms}, "throughput_img_s": 1000.0 / ms}]}))
    rep = build_report([runs], bootstrap=200, margin=0.5)
    e = {x["arch"]: x for x in rep["efficiency"]["archs"]}["resnet50"]
    assert e["latency_speedup"] == pytest.approx(40 / 25) and e["throughput_speedup"] == pytest.approx(40 / 25)
    written = {p.name for p in write_outputs(rep, tmp_path / "out")}
    assert "auroc_vs_latency.png" in written
    assert "latency speedup" in (tmp_path / "out" / "report.md").read_text()


def test_plots_draw_an_interval_that_excludes_its_estimate(tmp_path):
    """A seed ensemble's CI need not contain the seeds' mean AUROC (nor a percentile interval its estimate):
    `report` crashed in matplotlib's errorbar ("'yerr' must not contain negative values"); found by the docs'
    executed examples. Intervals are now drawn as segments from low to high."""
    from chexcut.study.render import _external_plot, _path_plot

    rows = [{"arch": "resnet18", "weights": "none", "drop": d, "params": p, "auroc": 0.60, "ci_low": 0.62,
             "ci_high": 0.70} for d, p in ((0, 1e7), (1, 3e6))]
    assert _path_plot(rows, "params", "parameters", "t", tmp_path / "a.png").stat().st_size > 0
    block = {"name": "nih", "ranking": {"spearman_rho": None}, "configurations": [
        {"arch": "resnet18", "weights": "none", "drop": 0, "internal": 0.6, "internal_ci_low": 0.61,
         "internal_ci_high": 0.7, "external": 0.5, "external_ci_low": 0.3, "external_ci_high": 0.45}]}
    assert _external_plot(block, tmp_path / "b.png").stat().st_size > 0
