"""External validation in a report: each configuration's internal and external AUROC, the difference with its CI,
and whether the ranking of configurations and the four findings hold on each external set.

Inputs are two report JSONs built by :func:`chexcut.study.findings.build_report` on the same runs: one from their
own validation rows (``eval.json``), one from an external set (``external/NAME.json``, written by a study planned
with ``--external``). The two are independent samples, so the difference's CI combines the two percentile
intervals as normal standard errors, ``SE = (high - low) / (2 z)``, ``SE_diff = sqrt(SE_int^2 + SE_ext^2)``
(an approximation, said so in the JSON). The rank correlation of the configurations is Spearman's rho with a
Fisher-z interval using Bonett & Wright's (2000) standard error ``sqrt((1 + rho^2 / 2) / (n - 3))``.

At plan time (:func:`check_external_sets`) each external set is checked against the study's training data: not the
training set itself, readable with the labels the runs learn, and sharing neither images nor patients with the
runs' training rows, the overlap ``evaluate`` refuses, found before the queue instead of after each run's training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.labels import COMPETITION_LABELS

METHOD = ("difference CI: normal approximation from the two independent percentile intervals; rank correlation: "
          "Spearman with a Fisher-z interval (Bonett & Wright 2000 SE), n >= 4 configurations")


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def difference(internal: tuple, external: tuple, alpha: float) -> dict:
    """(AUROC, low, high) internal and external -> external minus internal with its CI (None where unknown)."""
    (a, alo, ahi), (b, blo, bhi) = internal, external
    if a is None or b is None:
        return {"difference": None, "ci_low": None, "ci_high": None}
    out = {"difference": b - a, "ci_low": None, "ci_high": None}
    if None not in (alo, ahi, blo, bhi):
        z = _z(alpha)
        se = math.hypot((ahi - alo) / (2 * z), (bhi - blo) / (2 * z))
        out.update(ci_low=b - a - z * se, ci_high=b - a + z * se)
    return out


def rank_correlation(x: list, y: list, alpha: float) -> dict:
    """Spearman's rho between the configurations' internal and external AUROCs, with its Fisher-z CI."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    out = {"n": len(pairs), "spearman_rho": None, "ci_low": None, "ci_high": None, "p": None}
    if len(pairs) < 3:
        return out
    rho, p = spearmanr(*zip(*pairs))
    if rho is None or math.isnan(rho):
        return out
    out.update(spearman_rho=float(rho), p=float(p))
    if len(pairs) >= 4 and abs(rho) < 1:
        se = math.sqrt((1 + rho ** 2 / 2) / (len(pairs) - 3))
        z = _z(alpha)
        out.update(ci_low=math.tanh(math.atanh(rho) - z * se), ci_high=math.tanh(math.atanh(rho) + z * se))
    return out


def _finding_summary(report: dict) -> dict:
    """The four findings in a few numbers each, for a side-by-side reading."""
    eff = report.get("efficiency") or {}
    boost = [b["boost"] for b in (report.get("pretraining_boost") or {}).get("archs", []) if b.get("boost") is not None]
    corr = (report.get("imagenet_vs_chexpert") or {}).get("imagenet") or {}
    fam = report.get("family_vs_size") or {}
    return {"imagenet_top1_vs_auroc_rho": corr.get("spearman_rho"), "imagenet_top1_vs_auroc_p": corr.get("spearman_p"),
            "pretraining_boost_mean": sum(boost) / len(boost) if boost else None,
            "pretraining_boost_positive": f"{sum(b > 0 for b in boost)} of {len(boost)}" if boost else None,
            "truncation_mean_params_ratio": eff.get("mean_ratio"),
            "family_share_random_init": fam.get("share_family")}


def _holds(internal: dict, external: dict, alpha: float) -> dict:
    """Whether each finding reads the same on the external set (stated rules, None when a side lacks the runs)."""
    def both(key):
        return internal.get(key) is not None and external.get(key) is not None

    return {
        "imagenet_accuracy_does_not_predict": (None if not both("imagenet_top1_vs_auroc_p") else
                                               (internal["imagenet_top1_vs_auroc_p"] >= alpha)
                                               == (external["imagenet_top1_vs_auroc_p"] >= alpha)),
        "pretraining_helps": (None if not both("pretraining_boost_mean") else
                              (internal["pretraining_boost_mean"] > 0) == (external["pretraining_boost_mean"] > 0)),
        "truncation_keeps_auroc": (None if not both("truncation_mean_params_ratio") else
                                   (internal["truncation_mean_params_ratio"] > 1)
                                   == (external["truncation_mean_params_ratio"] > 1)),
    }


def _labels(r: dict) -> dict:
    return r.get("label_auroc") or {}


def external_validation(internal: dict, external: dict, name: str, dataset: str | None) -> dict:
    """The report's block for one external set (``internal``/``external``: the two report JSONs)."""
    alpha = internal["alpha"]
    by_key = {(r["arch"], r["weights"], r["drop"]): r for r in external["results"]}
    rows = []
    for r in internal["results"]:
        e = by_key.get((r["arch"], r["weights"], r["drop"]))
        if e is None:
            continue
        labels = {}
        for label, (a, alo, ahi) in _labels(r).items():
            b = _labels(e).get(label)
            if b is not None and a is not None and b[0] is not None:
                labels[label] = {"internal": a, "external": b[0], **difference((a, alo, ahi), tuple(b), alpha)}
        rows.append({"arch": r["arch"], "weights": r["weights"], "drop": r["drop"],
                     "internal": r["auroc"], "internal_ci_low": r["ci_low"], "internal_ci_high": r["ci_high"],
                     "external": e["auroc"], "external_ci_low": e["ci_low"], "external_ci_high": e["ci_high"],
                     **difference((r["auroc"], r["ci_low"], r["ci_high"]), (e["auroc"], e["ci_low"], e["ci_high"]),
                                  alpha),
                     "labels": labels})
    fi, fe = _finding_summary(internal), _finding_summary(external)
    not_scored = sorted({lab for r in rows for lab in COMPETITION_LABELS if lab not in r["labels"]})
    return {"name": name, "dataset": dataset, "configurations": rows, "method": METHOD,
            "ranking": rank_correlation([r["internal"] for r in rows], [r["external"] for r in rows], alpha),
            "findings": {"internal": fi, "external": fe, "holds": _holds(fi, fe, alpha)},
            "competition_labels_not_scored": not_scored, "incomplete": external.get("incomplete", [])}


# ----------------------------------------------------------------------------- at plan time

def external_sets(given: list) -> list[dict]:
    """``--external`` (``SET:DIR`` or folders, or the plan's records of them) -> ``[{"name", "data", "dataset"}]``:
    each evaluated by every run after its own validation set, into ``RUN/external/NAME.json``. A name is the set's
    (``nih``), or the folder's for a CheXpert-layout set; a name given twice gets ``-2``, ``-3``. One set listed
    twice (one folder, however spelled, read as one data set) is refused."""
    from chexcut.data.datasets import resolve

    out, names, sets = [], set(), {}
    for item in given:
        if isinstance(item, dict):
            if not (isinstance(item.get("name"), str) and isinstance(item.get("data"), str)
                    and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", item["name"])) or item["name"] in names:
                raise ChexcutError(f"an external set's record is damaged: {item!r}")
            names.add(item["name"])
            out.append({"name": item["name"], "data": item["data"], "dataset": item.get("dataset")})
            continue
        data, dataset = resolve(item)
        if not data.is_dir():
            raise ChexcutError(f"--external {item}: {data} is not a folder")
        key = (str(data.resolve()), dataset or "chexpert")
        if key in sets:
            raise ChexcutError(f"--external lists one set twice ({sets[key]} and {item}: {key[1]} in {key[0]}); "
                               f"give each external set once")
        sets[key] = item
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset or data.resolve().name).strip("-.") or "external"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.add(name)
        out.append({"name": name, "data": str(data.resolve()), "dataset": dataset})
    return out



def check_external_sets(data: Path, externals: list[dict], options) -> None:
    """The external sets every run will be evaluated on (``external_sets``' records), checked at plan time against
    the training data ``data`` read with ``options`` (the runs' FinetuneOptions): none is the training set itself,
    each is readable with the labels the runs learn, none shares images (by path, as ``evaluate`` compares them) or
    patients with the runs' training rows. Patient ids are compared only where they name the same people
    (:func:`chexcut.data.datasets.patients_comparable`: one published set, or two copies of CheXpert itself); NIH
    patient 12 and CheXpert's patient00012 are different people, and so are two hospitals' CheXpert-layout exports."""
    import dataclasses

    from chexcut.data.datasets import patients_comparable, resolve
    from chexcut.data.tables import load_split

    opts = options.data
    folder, named = resolve(data, opts.dataset, opts.csv)
    training = None if opts.csv else (named or "chexpert")  # a --csv table of one's own: no declared set
    for ext in externals:
        if Path(ext["data"]) == folder.resolve() and (ext["dataset"] or "chexpert") == training:
            raise ChexcutError(f"--external {_ref(ext)} is the training set itself (--data {data}); an external set "
                               f"is other data (each run is evaluated on its own validation rows anyway)")
    train = None
    for ext in externals:
        ext_opts = dataclasses.replace(opts, csv=None, dataset=ext["dataset"], label_map=None)
        try:
            rows = load_split(ext["data"], "all", ext_opts)
        except ChexcutError as e:
            raise ChexcutError(f"the external set {ext['name']} ({ext['data']}) cannot be read: {e}") from None
        if train is None:
            try:
                train = load_split(folder, "train", opts)
            except ChexcutError as e:
                raise ChexcutError(f"the runs' training rows of --data {data} cannot be read: {e}") from None
        comparable = training is not None and patients_comparable(ext["dataset"], rows.paths, training, train.paths)
        _refuse_overlap(ext, rows, train, data, comparable)


def _ref(ext: dict) -> str:
    return f"{ext['dataset']}:{ext['data']}" if ext.get("dataset") else ext["data"]


def _refuse_overlap(ext: dict, rows, train, data: Path, patients: bool) -> None:
    """One line when the external rows share image paths (always) or patient ids (``patients``: one id space)
    with the training rows: every run's external AUROC would be inflated."""
    paths = set(train.paths)
    shared = [p for p in rows.paths if p in paths]
    ids = set(map(str, train.patient)) if patients else set()
    shared_patients = sorted({str(p) for p in rows.patient if str(p) in ids})
    if shared or shared_patients:
        first = shared[0] if shared else shared_patients[0]
        raise ChexcutError(f"--external {_ref(ext)} shares {len(shared)} images and {len(shared_patients)} patients "
                           f"with the runs' training rows (--data {data}; first: {first}): its AUROC would be "
                           f"inflated; choose an external set of other patients")
