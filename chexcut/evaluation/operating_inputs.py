"""The files behind ``--readers`` and ``--thresholds``: readers' binary reads keyed like the truth (the CheXpert
test set's ``radiologists/benchmark_radiologists/bc4.csv`` ...), and thresholds chosen on another set (a
finetune run's validation predictions, an evaluation JSON's operating points, or a ``label,threshold`` CSV).
No torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation.operating import Curve, Rule


def check_inputs(readers, thresholds, threshold_rule: str):
    """``--readers``, ``--thresholds`` and ``--threshold-rule`` checked before any inference: (reader specs, rule)."""
    from chexcut.evaluation.operating import parse_rule

    specs, rule = parse_reader_specs(readers), parse_rule(threshold_rule)
    if thresholds and not Path(thresholds).exists():
        raise ChexcutError(f"--thresholds: no such run directory or file: {thresholds}")
    return specs, rule


def parse_reader_specs(specs) -> list[tuple[str, Path]]:
    """``FILE`` or ``NAME=FILE`` items (comma lists allowed) as (name, path); the name defaults to the stem."""
    out = []
    for item in [p.strip() for spec in specs or () for p in str(spec).split(",") if p.strip()]:
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (Path(item).stem, item)
        if not name or not path:
            raise ChexcutError(f"--readers takes FILE or NAME=FILE, not {item!r}")
        out.append((name, Path(path)))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ChexcutError(f"--readers: two readers are named {dup[0]!r}; name them with NAME=FILE")
    for name, path in out:
        if not path.is_file():
            raise ChexcutError(f"--readers {name}: file not found: {path}")
    return out


def read_readers(specs: list[tuple[str, Path]], evalset, key_col: str | None = None) -> dict[str, np.ndarray]:
    """Each reader's (N, L) reads in ``evalset``'s row order: 0/1, nan for a label the reader's file lacks.
    Every truth row must have a read (one line naming how many lack one, and the first)."""
    import pandas as pd

    from chexcut.evaluation.predictions import align, read_predictions

    out = {}
    for name, path in specs:
        reads = read_predictions(path, key_col=key_col)
        values = reads.to_numpy()
        if not np.isin(values, (0.0, 1.0)).all():
            row = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)).all(1))[0]) + 2
            raise ChexcutError(f"--readers {name}: {path.name} holds values other than 0 and 1 (first in row {row}); "
                               f"a reader's file gives one binary decision per label")
        have = [c for c in evalset.labels if c in reads.columns]
        if not have:
            raise ChexcutError(f"--readers {name}: {path.name} has none of the evaluated labels "
                               f"({', '.join(evalset.labels[:5])}...)")
        full = pd.DataFrame({c: reads[c] if c in reads.columns else np.nan for c in evalset.labels}, index=reads.index)
        full.attrs.update(reads.attrs)
        out[name] = align(evalset, full, name=f"reader {name}")
    return out


def given_thresholds(source, rule: Rule, labels, level: str, logits: bool) -> dict[str, Rule]:
    """label -> a fixed-threshold :class:`Rule` from ``source``: a finetune run directory (the rule applied to its
    validation predictions), an evaluation JSON (its operating points of that rule), or a CSV of
    ``label,threshold`` rows."""
    path = Path(source)
    if path.is_dir():
        if logits:
            raise ChexcutError("--thresholds RUN gives probability thresholds, and --logits says these predictions "
                               "are logits: evaluate probabilities, or give logit thresholds in a CSV")
        return _from_run(path, rule, labels, level)
    if not path.is_file():
        raise ChexcutError(f"--thresholds: no such run directory or file: {path}")
    if path.suffix.lower() == ".json":
        return _from_eval_json(path, rule, labels)
    return _from_csv(path, labels)


def _from_csv(path: Path, labels) -> dict[str, Rule]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise ChexcutError(f"--thresholds {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    if not {"label", "threshold"} <= set(df.columns):
        raise ChexcutError(f"--thresholds {path.name}: a thresholds CSV has the columns label,threshold "
                           f"(it has {', '.join(map(str, df.columns[:6]))})")
    out = {}
    for label, value in zip(df["label"].astype(str), pd.to_numeric(df["threshold"], errors="coerce")):
        if not np.isfinite(value):
            raise ChexcutError(f"--thresholds {path.name}: the threshold of {label!r} is not a number")
        if label in out:
            raise ChexcutError(f"--thresholds {path.name}: {label!r} has two rows")
        out[label] = Rule("given", threshold=float(value), chosen_on=f"{path.name} (given)")
    return _known(out, labels, path.name)


def _from_eval_json(path: Path, rule: Rule, labels) -> dict[str, Rule]:
    import json

    try:
        ev = json.loads(path.read_text())
        points = ev["operating_points"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ChexcutError(f"--thresholds {path.name}: not an evaluation JSON with operating points (evaluate "
                           f"--at-specificity S --json FILE writes one)") from None
    out = {}
    for p in points:
        if p.get("rule") == rule.name and p.get("threshold") is not None:
            out[p["label"]] = Rule("given", threshold=float(p["threshold"]),
                                   chosen_on=f"{path.name} ({rule.name} on its set)")
    if not out:
        rules = sorted({str(p.get("rule")) for p in points})
        raise ChexcutError(f"--thresholds {path.name}: no operating point with --threshold-rule {rule.name} "
                           f"(it has: {', '.join(rules) or 'none'})")
    return _known(out, labels, path.name)


def _from_run(run_dir: Path, rule: Rule, labels, level: str) -> dict[str, Rule]:
    """The rule applied to a run's validation predictions (the rows and labels its config names)."""
    from chexcut.data.chexpert import load_split
    from chexcut.evaluation import evalset as sets
    from chexcut.evaluation.evaluate import aggregate_by_study, evalset_from_table
    from chexcut.evaluation.predictions import align, read_predictions
    from chexcut.rundir import RunDir

    run = RunDir(run_dir)
    if not run.is_run() or not run.valid_predictions.is_file():
        raise ChexcutError(f"--thresholds {run_dir}: not a finished finetune run (no config.json or "
                           f"valid_predictions.csv)")
    es = sets.resolve(run_dir, None, None, {})
    preds = read_predictions(run.valid_predictions)
    table = load_split(es.data, es.split, es.opts)
    vs = evalset_from_table(table)
    missing = [c for c in vs.labels if c not in preds.columns]
    if missing:
        raise ChexcutError(f"--thresholds {run_dir}: its validation predictions lack {', '.join(missing)}")
    scores = align(vs, preds, name=str(run.valid_predictions))
    if level == "study":
        vs, (scores,) = aggregate_by_study(vs, [scores])
    out = {}
    where = f"{run_dir} validation ({rule.name})"
    for j, label in enumerate(vs.labels):
        rows = np.flatnonzero(vs.mask[:, j] > 0)
        y = vs.y[rows, j]
        if label not in labels or y.min(initial=1) == y.max(initial=0):
            continue
        curve = Curve(y, scores[rows, j], np.arange(len(rows)))
        tp, fp = curve.counts(np.ones((1, len(rows)), dtype=np.float32))
        t = curve.threshold(int(curve.index(rule, tp, fp)[0]))
        out[label] = Rule("given", threshold=float("inf") if t is None else t, chosen_on=where)
    return _known(out, labels, str(run_dir))


def _known(out: dict[str, Rule], labels, name: str) -> dict[str, Rule]:
    kept = {k: v for k, v in out.items() if k in labels}
    if not kept:
        raise ChexcutError(f"--thresholds {name}: no threshold for any evaluated label ({', '.join(labels[:5])}...)")
    return kept
