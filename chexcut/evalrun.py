"""``chexcut evaluate`` end to end: sources (a model over a dataset, or predictions CSVs) -> arrays
-> :func:`chexcut.evaluate.evaluate` -> the evaluation JSON, plus the CSV outputs.

The statistics live in :mod:`chexcut.evaluate` and :mod:`chexcut.metrics`; this module only
gathers their inputs. Model inference imports torch; the predictions-only path does not.
"""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.evaluate import aggregate_by_study, check_parameters, evalset_from_table, evaluate
from chexcut.modelsource import ModelSource
from chexcut.predictions import align, read_predictions, write_predictions


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
    from chexcut.infer import pick_device, predict, resolve_precision
    from chexcut.modelfile import load_model, read_spec

    path = ModelSource.parse(str(model_path)).require_file("evaluate")
    spec = read_spec(path)
    want = tuple(labels or spec["labels"])
    extra = [label for label in want if label not in spec["labels"]]
    if extra:
        raise ChexcutError(f"{path} has no head output for: {', '.join(extra)}")
    table = check_files(load_split(data, split, dataclasses.replace(opts, labels=want)))
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
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
    probs = predict(model, spec, loader, len(ds), dev, precision, channels_last, progress)
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


def check_sources(model, data, predictions, label_file) -> None:
    """One-line errors for what to evaluate, before any inference or progress output."""
    if (model is None) == (predictions is None):
        raise ChexcutError("give a MODEL (with --data) or --predictions (with --truth FILE), not both or neither")
    if model is not None:
        if data is None:
            raise ChexcutError("evaluating a MODEL needs --data DIR")
        ModelSource.parse(str(model)).spec()  # a bad model fails here, not after the data is read
    elif label_file is None:
        raise ChexcutError("--predictions needs the label CSV: --truth FILE")


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
    check_sources(model, data, predictions, label_file)
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
