"""Evaluation: predictions + labels -> per-label AUROC, bootstrap CIs, paired comparison -> JSON.

Everything here works on plain arrays and DataFrames; :mod:`chexcut.infer` produces the
predictions when a model is given, and the CLI only renders what :func:`evaluate` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexcut import metrics
from chexcut.errors import ChexcutError
from chexcut.labels import COMPETITION_LABELS


@dataclass
class EvalSet:
    """Rows to evaluate: ``y``/``mask`` (N, L), and the ids used for aggregation and clustering."""

    paths: list[str]
    labels: tuple[str, ...]
    y: np.ndarray
    mask: np.ndarray
    patient: np.ndarray
    study: np.ndarray


# ----------------------------------------------------------------------------- predictions files

def read_predictions(path: str | Path, labels: tuple[str, ...] | None = None, logits: bool = False):
    """A predictions CSV (``Path`` + one probability column per label) as a DataFrame indexed by Path."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ChexcutError(f"predictions file not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"Path": str})
    except Exception as e:
        raise ChexcutError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    if "Path" not in df.columns:
        raise ChexcutError(f"{path.name}: no 'Path' column")
    dup = df["Path"].duplicated()
    if dup.any():
        raise ChexcutError(f"{path.name}: {int(dup.sum())} duplicated paths (first: {df['Path'][dup].iloc[0]})")
    cols = [c for c in df.columns if c != "Path"] if labels is None else list(labels)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ChexcutError(f"{path.name}: missing prediction columns: {', '.join(missing)}")
    vals = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_nan = np.isnan(vals)
    if bad_nan.any():
        rows = np.unique(np.nonzero(bad_nan)[0])[:5] + 2
        raise ChexcutError(f"{path.name}: {int(bad_nan.any(1).sum())} rows with missing or non-numeric predictions "
                           f"(rows {', '.join(map(str, rows))})")
    if logits:
        vals = 1 / (1 + np.exp(-vals))
    out = (vals < 0) | (vals > 1)
    if out.any():
        rows = np.unique(np.nonzero(out)[0])[:5] + 2
        raise ChexcutError(f"{path.name}: predictions outside [0, 1] in rows {', '.join(map(str, rows))}; "
                           f"pass --logits if these are logits")
    return pd.DataFrame(vals, index=df["Path"].tolist(), columns=cols)


def write_predictions(path: str | Path, paths: list[str], labels: tuple[str, ...], probs: np.ndarray) -> None:
    import pandas as pd

    from chexcut.fileio import atomic_path

    df = pd.DataFrame(probs, columns=list(labels))
    df.insert(0, "Path", paths)
    if str(path) == "-":
        import sys

        df.to_csv(sys.stdout, index=False, float_format="%.9g")
        return
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")  # float32 round-trips: no artificial ties


def align(evalset: EvalSet, preds, name: str = "predictions") -> np.ndarray:
    """The (N, L) scores of ``preds`` (DataFrame indexed by Path) in ``evalset``'s row order."""
    missing_cols = [c for c in evalset.labels if c not in preds.columns]
    if missing_cols:
        raise ChexcutError(f"{name} lack label columns: {', '.join(missing_cols)}")
    have = preds.index
    pos = have.get_indexer(evalset.paths)
    unmatched = int((pos < 0).sum())
    if unmatched == len(evalset.paths):
        raise ChexcutError(f"no rows of the labels match the {name} on Path (empty join; "
                           f"e.g. labels {evalset.paths[0]!r} vs {name} {have[0]!r})")
    if unmatched:
        first = evalset.paths[int(np.flatnonzero(pos < 0)[0])]
        raise ChexcutError(f"{unmatched} of {len(evalset.paths)} label rows have no {name} row (first: {first})")
    return preds[list(evalset.labels)].to_numpy(dtype=np.float64)[pos]


# ----------------------------------------------------------------------------- aggregation

def aggregate_by_study(evalset: EvalSet, scores: list[np.ndarray]) -> tuple[EvalSet, list[np.ndarray]]:
    """One row per study: the max prediction over its views (the official CheXpert evaluation);
    a label counts for the study if it counts for any view, positive if positive in any."""
    import pandas as pd

    codes, uniq = pd.factorize(pd.Series(evalset.study, dtype=object))
    k = len(uniq)

    def group_max(a):
        out = np.full((k, a.shape[1]), -np.inf)
        np.maximum.at(out, codes, a)
        return out

    masked_y = np.where(evalset.mask > 0, evalset.y, -np.inf)
    y = group_max(masked_y)
    mask = group_max(evalset.mask.astype(np.float64))
    y = np.where(np.isfinite(y), y, 0.0)
    first = np.zeros(k, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    agg = EvalSet(paths=[str(u) for u in uniq], labels=evalset.labels, y=y, mask=mask,
                  patient=evalset.patient[first], study=np.asarray(uniq, dtype=object))
    return agg, [group_max(s) for s in scores]


# ----------------------------------------------------------------------------- the evaluation

def check_parameters(bootstrap: int = 1000, ci: float = 0.95, alpha: float = 0.05, cluster: str = "patient",
                     method: str = "bootstrap", level: str = "study") -> None:
    """One-line errors for evaluation parameters, checked before any inference runs."""
    if bootstrap < 0:
        raise ChexcutError(f"--bootstrap must be >= 0, not {bootstrap}")
    if not 0 < ci < 1:
        raise ChexcutError(f"--ci must be in (0, 1), not {ci}")
    if not 0 < alpha < 1:
        raise ChexcutError(f"--alpha must be in (0, 1), not {alpha}")
    if cluster not in ("patient", "study", "none"):
        raise ChexcutError(f"--cluster must be patient, study or none, not {cluster!r}")
    if method not in ("bootstrap", "delong"):
        raise ChexcutError(f"--method must be bootstrap or delong, not {method!r}")
    if level not in ("study", "image"):
        raise ChexcutError(f"--level must be study or image, not {level!r}")


def _summary(values: np.ndarray, reps: np.ndarray | None, ci: float) -> dict:
    if reps is None:
        return {"auroc": _num(values), "ci_low": None, "ci_high": None}
    iv = metrics.percentile_interval(values, reps, ci)
    return {"auroc": _num(iv.estimate), "ci_low": _num(iv.low), "ci_high": _num(iv.high),
            "replicates_used": iv.valid_replicates, "replicates_excluded": int(len(reps) - iv.valid_replicates)}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _mean_of(auc: np.ndarray, reps: np.ndarray | None, cols: list[int], ci: float) -> dict | None:
    if not cols:
        return None
    point = float(np.mean(auc[cols]))
    mean_reps = None if reps is None else reps[:, cols].mean(1)  # nan if any label has one class
    out = _summary(point, mean_reps, ci)
    out["labels"] = len(cols)
    return out


def evaluate(evalset: EvalSet, scores: np.ndarray, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
             cluster: str = "patient", compare: np.ndarray | None = None, method: str = "bootstrap",
             alpha: float = 0.05, chunk: int | None = None) -> dict:
    """The evaluation JSON (see the README for the schema)."""
    check_parameters(bootstrap=bootstrap, ci=ci, alpha=alpha, cluster=cluster, method=method)
    y, mask, labels = evalset.y, evalset.mask > 0, evalset.labels
    n_labels = len(labels)
    auc = np.array([metrics.auroc(y[mask[:, j], j], scores[mask[:, j], j]) for j in range(n_labels)])
    auc_b = None
    if compare is not None:
        auc_b = np.array([metrics.auroc(y[mask[:, j], j], compare[mask[:, j], j]) for j in range(n_labels)])
    reps = reps_b = None
    if bootstrap:
        ids = {"patient": evalset.patient, "study": evalset.study, "none": np.arange(len(y))}[cluster]
        clusters = metrics.cluster_ids(ids)
        mats = [scores] + ([compare] if compare is not None else [])
        got = metrics.bootstrap_aurocs(y, mats, mask, clusters, bootstrap, seed=seed, chunk=chunk)
        reps = got[0]
        reps_b = got[1] if compare is not None else None
        # a replicate where the full data is not evaluable for a label stays excluded
    per_label = []
    for j, name in enumerate(labels):
        yj = y[mask[:, j], j]
        n_pos, n_neg = int(yj.sum()), int(len(yj) - yj.sum())
        row = {"label": name, "n_pos": n_pos, "n_neg": n_neg, **_summary(auc[j], None if reps is None else reps[:, j], ci)}
        if not np.isfinite(auc[j]):
            row["not_evaluable"] = (f"only {'positives' if n_pos else 'negatives'}" if len(yj) else "no counted rows")
        per_label.append(row)
    evaluable = [j for j in range(n_labels) if np.isfinite(auc[j])]
    comp = [j for j in evaluable if labels[j] in COMPETITION_LABELS]
    result = {
        "n": int(len(y)), "bootstrap": int(bootstrap), "ci": ci, "seed": seed, "cluster": cluster,
        "labels": per_label,
        "mean_competition": _mean_of(auc, reps, comp, ci),
        "mean_all": _mean_of(auc, reps, evaluable, ci),
        "competition_labels": [labels[j] for j in comp],
        "compare": None,
    }
    if compare is not None:
        result["compare"] = _compare(y, mask, labels, auc, auc_b, reps, reps_b, compare, scores, comp, evaluable,
                                     method, ci, alpha)
    return result


def _compare(y, mask, labels, auc, auc_b, reps, reps_b, compare, scores, comp, evaluable, method, ci, alpha):
    both = [j for j in evaluable if np.isfinite(auc_b[j])]
    rows = []
    for j, name in enumerate(labels):
        d = auc[j] - auc_b[j]
        if j not in both:
            rows.append({"label": name, "delta": None, "ci_low": None, "ci_high": None, "p": None})
            continue
        if method == "delong":
            m = mask[:, j]
            delta, lo, hi, p = metrics.delong_test(y[m, j], scores[m, j], compare[m, j])
            rows.append({"label": name, "delta": _num(delta), "ci_low": _num(lo), "ci_high": _num(hi), "p": _num(p),
                         "method": "delong"})
        elif reps is not None:
            dr = reps[:, j] - reps_b[:, j]
            iv = metrics.percentile_interval(d, dr, ci)
            rows.append({"label": name, "delta": _num(d), "ci_low": _num(iv.low), "ci_high": _num(iv.high),
                         "p": _num(metrics.bootstrap_p(dr)), "method": "bootstrap"})
        else:
            rows.append({"label": name, "delta": _num(d), "ci_low": None, "ci_high": None, "p": None})

    def mean_delta(cols):
        cols = [j for j in cols if j in both]
        if not cols:
            return None
        d = float(np.mean(auc[cols]) - np.mean(auc_b[cols]))
        if reps is None:
            return {"delta": d, "ci_low": None, "ci_high": None, "p": None, "labels": len(cols)}
        dr = reps[:, cols].mean(1) - reps_b[:, cols].mean(1)
        iv = metrics.percentile_interval(d, dr, ci)
        return {"delta": d, "ci_low": _num(iv.low), "ci_high": _num(iv.high), "p": _num(metrics.bootstrap_p(dr)),
                "labels": len(cols), "method": "bootstrap"}

    mc = mean_delta(comp)
    out = {"labels": rows, "mean_competition": mc, "mean_all": mean_delta(evaluable), "alpha": alpha,
           "method": method}
    out["verdict"] = verdict(mc, alpha)
    out["significant"] = bool(mc and mc["p"] is not None and mc["p"] < alpha)
    return out


def verdict(mc: dict | None, alpha: float) -> str:
    if not mc:
        return "no competition label is evaluable in both: no verdict"
    if mc["p"] is None:
        return f"mean competition AUROC differs by {mc['delta']:+.4f}; no test without --bootstrap"
    sig = mc["p"] < alpha
    direction = "higher" if mc["delta"] > 0 else "lower"
    if sig:
        return (f"significant at alpha={alpha}: mean competition AUROC is {abs(mc['delta']):.4f} {direction} "
                f"(p={mc['p']:.3g})")
    return f"no significant difference at alpha={alpha} (delta {mc['delta']:+.4f}, p={mc['p']:.3g})"


# ----------------------------------------------------------------------------- sources -> EvalSet + scores

def evalset_from_table(table) -> EvalSet:
    return EvalSet(paths=list(table.paths), labels=tuple(table.labels), y=table.targets.astype(np.float64),
                   mask=table.mask, patient=table.patient, study=table.study)


def _is_predictions_csv(target: str) -> bool:
    p = Path(target)
    return p.is_file() and p.suffix.lower() == ".csv"


def model_predictions(model_path, data, split: str, opts, image_size: int | None, batch_size: int,
                      device: str | None, workers: int, precision: str | None, cache_dir, labels=None,
                      progress=None):
    """Run a model file or run dir over ``split`` of ``data``: (table, predictions DataFrame, spec)."""
    import dataclasses

    import pandas as pd
    import torch

    from chexcut.data.cache import open_cache
    from chexcut.data.chexpert import check_files, load_split
    from chexcut.data.dataset import XrayBatches, batch_order, make_loader
    from chexcut.infer import default_precision, pick_device, predict, resolve_model_path
    from chexcut.modelfile import load_model, read_spec

    path = resolve_model_path(str(model_path))
    spec = read_spec(path)
    want = tuple(labels or spec["labels"])
    extra = [label for label in want if label not in spec["labels"]]
    if extra:
        raise ChexcutError(f"{path} has no head output for: {', '.join(extra)}")
    table = check_files(load_split(data, split, dataclasses.replace(opts, labels=want)))
    dev = pick_device(device)
    model = load_model(path, device=str(dev))
    size = int(image_size or spec.get("image_size", 320))
    from chexcut.anatomy import check_image_size

    check_image_size(spec["arch"], size)
    resize = getattr(opts, "resize", "squash")
    try:  # `chexcut prepare` caches the whole dataset (train + valid): read this split from it
        key_files = load_split(data, "all", dataclasses.replace(opts, labels=want)).files
    except ChexcutError:
        key_files = None
    cache = open_cache(table.files, size, resize, cache_dir, key_files=key_files)
    ds = XrayBatches(table, size, resize, cache=cache)
    channels_last = dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(ds, batch_order(len(ds), batch_size, False, 0, 0), workers, pin=dev.type == "cuda")
    probs = predict(model, spec, loader, len(ds), dev, precision or default_precision(dev), channels_last, progress)
    df = pd.DataFrame(probs, index=table.paths, columns=list(spec["labels"]))
    return table, df, spec


def write_results_csv(path, result: dict) -> None:
    """Per-label rows (and the two means) with the comparison columns when there is one."""
    import pandas as pd

    from chexcut.fileio import atomic_path

    rows = []
    comp = {r["label"]: r for r in (result["compare"] or {}).get("labels", [])}
    for r in result["labels"]:
        c = comp.get(r["label"], {})
        rows.append({"label": r["label"], "n_pos": r["n_pos"], "n_neg": r["n_neg"], "auroc": r["auroc"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "delta": c.get("delta"),
                     "delta_ci_low": c.get("ci_low"), "delta_ci_high": c.get("ci_high"), "p": c.get("p")})
    for key in ("mean_competition", "mean_all"):
        m = result[key] or {}
        c = (result["compare"] or {}).get(key) or {}
        rows.append({"label": key, "auroc": m.get("auroc"), "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high"),
                     "delta": c.get("delta"), "delta_ci_low": c.get("ci_low"), "delta_ci_high": c.get("ci_high"),
                     "p": c.get("p")})
    with atomic_path(Path(path)) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def run_evaluation(*, model=None, data=None, split: str = "valid", predictions=None, label_file=None, labels=None,
                   compare=None, logits: bool = False, opts, level: str = "study", bootstrap: int = 1000,
                   ci: float = 0.95, seed: int = 0, cluster: str = "patient", method: str = "bootstrap",
                   alpha: float = 0.05, predictions_out=None, infer: dict | None = None, progress=None) -> dict:
    """What ``chexcut evaluate`` does: get predictions (run MODEL over ``split`` of ``data``, or read
    ``predictions`` + ``label_file``), the same for ``compare``, aggregate, evaluate. Returns the JSON dict.

    ``progress(description)`` returns a context manager yielding ``update(done, total)``.
    """
    import contextlib
    import dataclasses

    check_parameters(bootstrap=bootstrap, ci=ci, alpha=alpha, cluster=cluster, method=method, level=level)
    infer = infer or {}
    progress = progress or (lambda what: contextlib.nullcontext(lambda *a, **k: None))
    if model is not None:
        with progress("inference") as update:
            table, preds, _spec = model_predictions(model, data, split, opts, labels=labels, progress=update, **infer)
        if predictions_out:
            write_predictions(predictions_out, table.paths, tuple(preds.columns), preds.to_numpy())
    else:
        from chexcut.data.chexpert import read_csv_table

        preds = read_predictions(predictions, logits=logits)
        label_file = Path(label_file)
        table = read_csv_table(label_file, label_file.parent, dataclasses.replace(opts, labels=tuple(preds.columns)),
                               "valid")
    evalset = evalset_from_table(table)
    mats = [align(evalset, preds)]
    if compare:
        if _is_predictions_csv(compare):
            mats.append(align(evalset, read_predictions(compare, logits=logits), name=f"--compare {compare}"))
        else:
            if data is None:
                raise ChexcutError("--compare with a model needs --data DIR to run it on")
            with progress("inference (compare)") as update:
                _, other, _ = model_predictions(compare, data, split, opts, labels=evalset.labels, progress=update,
                                                **infer)
            mats.append(align(evalset, other, name=f"--compare {compare}"))
    if level == "study":
        evalset, mats = aggregate_by_study(evalset, mats)
    result = evaluate(evalset, mats[0], bootstrap=bootstrap, ci=ci, seed=seed, cluster=cluster,
                      compare=mats[1] if len(mats) > 1 else None, method=method, alpha=alpha)
    result["level"] = level
    result["source"] = {"model": str(model) if model else None, "predictions": str(predictions) if predictions else None,
                        "compare": compare, "data": str(Path(data).resolve()) if data else None, "split": split,
                        "options": opts.to_json()}
    return result
