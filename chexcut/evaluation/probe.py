"""``chexcut probe``: a linear probe at every depth of a model, from one forward pass per image.

Reads top to bottom in :func:`run_probe`: the training and evaluation rows (``--label-fraction``: training patients
drawn as finetune draws them) -> the pooled features of every kept block, computed once and cached float16
(:mod:`chexcut.evaluation.probe_features`) -> per block, an L2-regularised logistic head per label on standardised
features, its C chosen on a patient-disjoint validation part of the training rows -> per block, the evaluation
(:func:`chexcut.evaluation.evaluate.evaluate`: clustered bootstrap CIs) with the paired test against the best block,
Holm-adjusted across blocks -> ``probe.json`` (the depth curve) and ``probe.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation.logistic import MAX_ITER
from chexcut.evaluation.settings import Inference, Statistics

#: The regularisation grid (sklearn's C: the inverse of the L2 penalty's weight), chosen per block.
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
#: The share of the training patients held out to choose C (patient-disjoint, seeded by --seed).
VALIDATION_SHARE = 0.2
FEATURES = "features"  # OUT/features/: the cached features


@dataclass(frozen=True)
class ProbeInputs:
    """What to probe: ``source`` (MODEL parsed; ``model`` as given) over ``data`` (training rows: the ``train``
    split, evaluation rows: ``split``) with ``opts``; outputs in ``out``."""

    source: object  # chexcut.models.source.ModelSource
    model: str
    data: Path
    out: Path
    opts: object  # chexcut.data.tables.DataOptions
    split: str = "valid"
    label_fraction: float = 1.0
    seed: int = 0


def choose_c(x: np.ndarray, table, seed: int) -> tuple[float, float | None]:
    """(C, its mean validation AUROC over the evaluable labels): the grid's C whose heads, fit on the training
    patients outside a seeded ``VALIDATION_SHARE`` of them, rank that share best (the smallest C on a tie);
    sklearn's default C = 1 when no label is evaluable there. Every C of the grid is fit at once."""
    from chexcut.data.tables import patient_split
    from chexcut.evaluation.logistic import fit_logistic
    from chexcut.evaluation.summary import label_aurocs

    fit, val = patient_split(table, VALIDATION_SHARE, seed)
    y, counted, n = table.targets, table.mask > 0, table.targets.shape[1]
    p = fit_logistic(x[fit], y[fit], counted[fit], C_GRID).probabilities(x[val])
    best_c, best = 1.0, None
    for k, c in enumerate(C_GRID):
        auc = label_aurocs(y[val], counted[val], p[:, k * n:(k + 1) * n])
        score = float(np.mean(auc[np.isfinite(auc)])) if np.isfinite(auc).any() else None
        if score is not None and (best is None or score > best):
            best_c, best = c, score
    return best_c, best


def fit_blocks(blocks: list[np.ndarray], table, seed: int, progress=None) -> tuple[list, list[dict]]:
    """Per block: C chosen on the validation patients, then the heads refit on all training rows with it
    (:class:`chexcut.evaluation.logistic.Heads`, one problem per label)."""
    from chexcut.evaluation.logistic import fit_logistic

    heads, chosen = [], []
    for k, x in enumerate(blocks, 1):
        x = x.astype(np.float64)
        c, val_auroc = choose_c(x, table, seed)
        h = fit_logistic(x, table.targets, table.mask > 0, [c])
        heads.append(h)
        chosen.append({"C": c, "validation_auroc": val_auroc, "unconverged": h.unconverged})
        if progress:
            progress(k, len(blocks))
    return heads, chosen


def depth_curve(evalrows, probs: list[np.ndarray], stats: Statistics) -> tuple[str, int, list[dict]]:
    """(the mean compared, the best block's index, per block its evaluation): the best block has the highest mean
    competition AUROC (the mean over every evaluable label when no competition label is); every other block is
    evaluated against it on the same rows (``compare``), and the p-values are Holm-adjusted across those blocks."""
    from chexcut.evaluation.evaluate import evaluate
    from chexcut.evaluation.metrics import holm
    from chexcut.evaluation.summary import competition_columns, label_aurocs

    aucs = [label_aurocs(evalrows.y, evalrows.mask > 0, p) for p in probs]
    comp = competition_columns(evalrows.labels, aucs[0])
    cols = comp or [j for j in range(len(evalrows.labels)) if np.isfinite(aucs[0][j])]
    if not cols:
        raise ChexcutError("no label is evaluable on the evaluation rows (each needs positives and negatives)")
    key = "mean_competition" if comp else "mean_all"
    best = int(np.argmax([np.mean(a[cols]) for a in aucs]))
    results = [evaluate(evalrows, p, stats, compare=None if k == best else probs[best]) for k, p in enumerate(probs)]
    tests = [(r["compare"] or {}).get(key) for r in results]
    adjusted = holm([t["p"] if t else None for t in tests])
    for t, p_holm in zip(tests, adjusted):
        if t:
            t["p_holm"] = p_holm
    return key, best, [{"result": r, "vs_best": t} for r, t in zip(results, tests)]


def block_rows(names, widths, chosen, curve: list[dict], key: str) -> list[dict]:
    """The JSON's ``blocks``: per block its index, name, width, C, validation and evaluation AUROCs, vs best."""
    rows = []
    for k, (name, width, c, e) in enumerate(zip(names, widths, chosen, curve), 1):
        r, t = e["result"], e["vs_best"]
        mean = r[key] or {}
        rows.append({"block": k, "name": name, "width": int(width), **c,
                     "auroc": mean.get("auroc"), "ci_low": mean.get("ci_low"), "ci_high": mean.get("ci_high"),
                     "labels": [{f: lab.get(f) for f in ("label", "auroc", "ci_low", "ci_high", "n_pos", "n_neg")}
                                for lab in r["labels"]],
                     "vs_best": None if t is None else {f: t.get(f) for f in ("delta", "ci_low", "ci_high", "p",
                                                                              "p_holm", "method")}})
    return rows


def probe_rows(inputs: ProbeInputs) -> tuple:
    """(training table, the rows of it the heads are fit on (``--label-fraction``; None: all), evaluation table, the
    label budget or None): the rows as evaluation reads them. Features are computed for every training row, so a
    probe at another fraction reuses them."""
    from chexcut.data.tables import check_files, load_split

    if inputs.split == "train":
        raise ChexcutError("--split train: the probe is fit on the training rows; evaluate on valid (or test)")
    train = check_files(load_split(inputs.data, "train", inputs.opts))
    evaluated = check_files(load_split(inputs.data, inputs.split, inputs.opts))
    shared = set(map(str, train.patient)) & set(map(str, evaluated.patient))
    if shared:  # (--split all holds the training rows): heads scored on the rows they were fit on
        raise ChexcutError(f"--split {inputs.split}: {len(shared)} of its patients are the probe's training patients; "
                           f"evaluate on rows apart from the train split (valid, or test)")
    keep, budget = None, None
    if inputs.label_fraction < 1:  # patients of the training rows only, drawn in the seed's order (as finetune)
        from chexcut.data.fractions import draw_patients

        keep, budget = draw_patients(train, inputs.label_fraction, inputs.seed)
    patients = set(map(str, train.patient if keep is None else train.patient[keep]))
    if len(patients) < 2:
        raise ChexcutError(f"the probe needs at least 2 training patients (a part of them chooses C); the training "
                           f"rows have {len(patients)}")
    return train, keep, evaluated, budget


def probe_model(inputs: ProbeInputs, labels, infer: Inference):
    """(Extractor, the model's identity in the features' key): MODEL built or loaded at its input size."""
    from chexcut.data.cpus import limit_threads
    from chexcut.evaluation.probe_features import Extractor, model_identity
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.infer import pick_device, resolve_precision
    from chexcut.models.modelfile import load_model
    from chexcut.models.registry import get_arch
    from chexcut.models.surgery import truncate

    src = inputs.source
    dev = pick_device(infer.device)
    precision = resolve_precision(infer.precision, dev)
    limit_threads()
    if src.file is not None:
        model = load_model(src.file, device=str(dev), image_size=infer.image_size)
    else:
        model = truncate(src.arch, drop=src.drop, weights=src.weights, labels=labels, in_chans=src.in_chans,
                         image_size=infer.image_size, seed=src.seed).to(dev)
    spec = model.chexcut_spec
    check_image_size(spec.arch, spec.preprocess.image_size)
    extractor = Extractor(model.eval(), get_arch(spec.arch), spec, dev, precision)
    return extractor, model_identity(src, spec)


def cached_features(ex, identity: dict, table, split: str, inputs: ProbeInputs, infer: Inference, progress):
    """(features of ``table``'s rows, the file, whether it was reused): read from OUT/features when the key
    matches, else one forward pass, written there."""
    from chexcut.data.cache import dataset_cache
    from chexcut.evaluation.probe_features import feature_key, read_features, write_features

    pre = ex.spec.preprocess
    key = feature_key(identity, pre, ex.precision, table.files)
    path = key.path(Path(inputs.out) / FEATURES, split)
    blocks = read_features(path, key)
    if blocks is not None:
        return blocks, path, True
    cache = dataset_cache(inputs.data, inputs.opts, table.files, pre.image_size, pre.resize, infer.cache_dir)
    with progress(f"features ({split})") as update:
        blocks = ex.table_features(table, infer, cache, update)
    write_features(path, key, blocks)
    return blocks, path, False


def run_probe(inputs: ProbeInputs, stats: Statistics = Statistics(calibration=False), infer: Inference = Inference(),
              progress=None) -> dict:
    """What ``chexcut probe`` does; returns probe.json's dict (written with probe.png by :func:`write_outputs`).
    ``progress(description)`` returns a context manager yielding ``update(done, total)``."""
    import contextlib

    from chexcut.evaluation.evaluate import aggregate_by_study, evalrows_from_table

    progress = progress or (lambda what: contextlib.nullcontext(lambda *a, **k: None))
    clock = [time.perf_counter()]
    train, keep, evaluated, budget = probe_rows(inputs)
    ex, identity = probe_model(inputs, train.labels, infer)
    feats, files, reused = {}, {}, {}
    for split, table in (("train", train), ("evaluation", evaluated)):
        name = "train" if split == "train" else inputs.split
        feats[split], files[split], reused[split] = cached_features(ex, identity, table, name, inputs, infer, progress)
    clock.append(time.perf_counter())
    fit_table = train if keep is None else train.subset(keep)
    fit_feats = feats["train"] if keep is None else [b[keep] for b in feats["train"]]
    with progress("probes") as update:
        heads, chosen = fit_blocks(fit_feats, fit_table, inputs.seed, update)
    clock.append(time.perf_counter())
    evalrows = evalrows_from_table(evaluated)
    probs = [h.probabilities(b) for h, b in zip(heads, feats["evaluation"])]
    if stats.level == "study":
        evalrows, probs = aggregate_by_study(evalrows, probs)
    with progress("evaluation"):
        key, best, curve = depth_curve(evalrows, probs, stats)
    clock.append(time.perf_counter())
    result = {
        "kind": "chexcut-probe", "format_version": 1, "model": model_json(inputs, ex.spec),
        "data": {"dir": str(Path(inputs.data).resolve()), "split": inputs.split, **inputs.opts.to_json(),
                 "train_images": len(fit_table), "train_patients": len(set(map(str, fit_table.patient))),
                 "evaluation_images": len(evaluated), "evaluation_rows": len(evalrows.y),
                 "labels": list(evalrows.labels), "label_budget": budget},
        "settings": {"C_grid": list(C_GRID), "validation_share": VALIDATION_SHARE, "seed": inputs.seed,
                     "label_fraction": inputs.label_fraction, "precision": ex.precision, "device": str(ex.device),
                     "batch_size": infer.batch_size, "statistics": stats.to_json()},
        "features": {"dtype": "float16", "pooling": pooling(ex.spec), "files": {s: str(f) for s, f in files.items()},
                     "reused": reused},
        "mean": key, "best_block": best + 1,
        "blocks": block_rows(ex.spec.kept_blocks, [b.shape[1] for b in feats["train"]], chosen, curve, key),
        "timings": {"features_s": clock[1] - clock[0], "fits_s": clock[2] - clock[1],
                    "evaluation_s": clock[3] - clock[2], "total_s": clock[3] - clock[0]},
    }
    result["notes"], result["warnings"] = probe_notes(result, train, evaluated, curve)
    return result


def model_json(inputs: ProbeInputs, spec) -> dict:
    from chexcut.models.spec import weights_label

    p = spec.preprocess
    return {"source": inputs.model, "arch": spec.arch, "drop": spec.drop, "keep": spec.num_blocks - spec.drop,
            "num_blocks": spec.num_blocks, "weights": spec.weights_name, "weights_label": weights_label(spec.weights),
            "pool": spec.pool, "image_size": p.image_size, "resize": p.resize, "in_chans": p.in_chans}


def pooling(spec) -> str:
    """How each block's output was pooled (the module docstring of probe_features says why)."""
    from chexcut.models.registry import get_arch

    if not get_arch(spec.arch).family.tokens:
        return "global average of the block's output map"
    return {"token": "the class token after the final norm",
            "avg": "the mean of the patch tokens after the final norm"}[spec.pool]


def probe_notes(result: dict, train, evaluated, curve) -> tuple[list[str], list[str]]:
    """(notes, warnings): features reused, the label budget, fits that did not converge, the evaluation's."""
    notes = list(train.notes) + list(evaluated.notes)
    for split, path in result["features"]["files"].items():
        if result["features"]["reused"][split]:
            notes.append(f"{split} features reused from {path} (the same model, preprocessing and rows)")
    budget = result["data"]["label_budget"]
    warns = []
    if budget:
        notes.append(f"--label-fraction {budget['fraction']:g}: {budget['patients']} of {budget['of_patients']} "
                     f"training patients ({budget['images']} images)")
        if budget["without_positives"]:
            warns.append(f"no positive training row for {', '.join(budget['without_positives'])}: its probe "
                         f"predicts a constant")
    stuck = sum(b["unconverged"] for b in result["blocks"])
    if stuck:
        warns.append(f"{stuck} logistic fits stopped at {MAX_ITER} iterations before converging")
    seen = dict.fromkeys(w for e in curve for w in e["result"]["warnings"])
    return notes, warns + list(seen)


def write_outputs(result: dict, out: Path) -> None:
    """OUT/probe.json and OUT/probe.png (listed in the JSON as ``plot``), each written atomically."""
    from chexcut.evaluation.plots import write_probe_plot
    from chexcut.fileio import write_json

    result["plot"] = str(write_probe_plot(result, Path(out) / "probe.png"))
    write_json(Path(out) / "probe.json", result)
