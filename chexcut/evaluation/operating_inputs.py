"""The files behind ``--readers`` and ``--thresholds``: readers' binary reads keyed like the truth (the CheXpert
test set's ``radiologists/benchmark_radiologists/bc4.csv`` ...), and thresholds chosen on another set (a
finetune run's validation predictions, an evaluation JSON's operating points, or a ``label,threshold`` CSV).
No torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.evaluation.operating import Curve, Rule


def check_inputs(readers, thresholds, threshold_rule: str | None):
    """``--readers``, ``--thresholds`` and ``--threshold-rule`` checked before any inference: (reader specs, rule).
    A rule without ``--thresholds`` is refused: it would be ignored."""
    from chexcut.evaluation.operating import parse_rule

    if threshold_rule is not None and not thresholds:
        raise ChexcutError("--threshold-rule says how --thresholds RUN|JSON chose its thresholds: give --thresholds "
                           "(--at-specificity/--at-sensitivity choose them on the evaluated set)")
    specs, rule = parse_reader_specs(readers), parse_rule(threshold_rule or "youden")
    if thresholds and not Path(thresholds).exists():
        raise ChexcutError(f"--thresholds: no such run directory or file: {thresholds}")
    return specs, rule


def parse_reader_specs(specs) -> list[tuple[str, Path]]:
    """``FILE`` or ``NAME=FILE`` items (comma lists allowed) as (name, path); the name defaults to the stem."""
    out = []
    for item in [p.strip() for spec in specs or () for p in str(spec).split(",") if p.strip()]:
        name, sep, path = item.partition("=")
        if Path(item).is_file():  # a file whose name holds '=' is that file, not NAME=FILE
            name, sep, path = Path(item).stem, "", item
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


def read_readers(specs: list[tuple[str, Path]], evalrows, key_col: str | None = None) -> dict[str, np.ndarray]:
    """Each reader's (N, L) reads in ``evalrows``'s row order: 0/1, nan for a label the reader's file lacks.
    Every truth row must have a read (one line naming how many lack one, and the first)."""
    import pandas as pd

    from chexcut.evaluation.predictions import align, read_predictions

    out = {}
    for name, path in specs:
        reads = read_predictions(path, key_col=key_col, logits=True)  # any number here: the 0/1 check below
        values = reads.to_numpy()
        if not np.isin(values, (0.0, 1.0)).all():
            row = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)).all(1))[0]) + 2
            raise ChexcutError(f"--readers {name}: {path.name} holds values other than 0 and 1 (first in row {row}); "
                               f"a reader's file gives one binary decision per label")
        have = [c for c in evalrows.labels if c in reads.columns]
        if not have:
            raise ChexcutError(f"--readers {name}: {path.name} has none of the evaluated labels "
                               f"({', '.join(evalrows.labels[:5])}...)")
        full = pd.DataFrame({c: reads[c] if c in reads.columns else np.nan for c in evalrows.labels}, index=reads.index)
        full.attrs.update(reads.attrs)
        out[name] = align(evalrows, full, name=f"reader {name}")
    return out


def given_thresholds(source, rule: Rule, labels, level: str, logits: bool) -> tuple[dict[str, Rule], list[str]]:
    """(label -> a fixed-threshold :class:`Rule`, warnings) from ``source``: a finetune run directory (the rule
    applied to its validation predictions), an evaluation JSON (its operating points of that rule), or a CSV of
    ``label,threshold`` rows. File entries pass :func:`_entries` (one line naming the file, row and field)."""
    path = Path(source)
    if path.is_dir():
        if logits:
            raise ChexcutError("--thresholds RUN gives probability thresholds, and --logits says these predictions "
                               "are logits: evaluate probabilities, or give logit thresholds in a CSV")
        return _known(_from_run(path, rule, labels, level), labels, str(path))
    if not path.is_file():
        raise ChexcutError(f"--thresholds: no such run directory or file: {path}")
    if path.suffix.lower() == ".json":
        return _known(_from_eval_json(path, rule, labels, logits), labels, path.name)
    return _known(_from_csv(path, labels, logits), labels, path.name)


def _entries(rows, name: str, labels, logits: bool, chosen_on: str) -> dict[str, Rule]:
    """The one check of a thresholds file's entries, ``(where, label, value)``: a label is a string (surrounding
    space and a BOM dropped) that this evaluation knows or a CheXpert observation, named once; a threshold is a
    finite number, within [0, 1] for probabilities. Anything else is one line naming the file, where and what."""
    from chexcut.labels import CHEXPERT_LABELS

    out = {}
    for where, label, value in rows:
        if not isinstance(label, str) or not label.strip("\ufeff \t"):
            raise ChexcutError(f"--thresholds {name}: {where}: 'label' is missing or not a name ({label!r})")
        label = label.strip("\ufeff \t")
        if label not in labels and label not in CHEXPERT_LABELS:
            raise ChexcutError(f"--thresholds {name}: {where}: unknown label {label!r} (evaluated: "
                               f"{', '.join(labels[:6])}{'...' if len(labels) > 6 else ''})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ChexcutError(f"--thresholds {name}: {where}: the threshold of {label!r} is not a finite number "
                               f"({value!r})")
        if not logits and not 0 <= value <= 1:
            raise ChexcutError(f"--thresholds {name}: {where}: the threshold of {label!r} is {value:g}, outside the "
                               f"probabilities' 0..1 (logit thresholds need --logits)")
        if label in out:
            raise ChexcutError(f"--thresholds {name}: {where}: {label!r} has two thresholds")
        out[label] = Rule("given", threshold=float(value), chosen_on=chosen_on)
    return out


def _from_csv(path: Path, labels, logits: bool = False) -> dict[str, Rule]:
    import pandas as pd

    from chexcut.reading import read_csv

    try:
        df = read_csv(path, text=["label"], skipinitialspace=True)
    except Exception as e:
        raise ChexcutError(f"--thresholds {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    if not {"label", "threshold"} <= set(df.columns):
        raise ChexcutError(f"--thresholds {path.name}: a thresholds CSV has the columns label,threshold "
                           f"(it has {', '.join(map(str, df.columns[:6]))})")
    values = pd.to_numeric(df["threshold"], errors="coerce")
    rows = [(f"row {i + 2}", label, float(v) if np.isfinite(v) else df["threshold"].iloc[i])
            for i, (label, v) in enumerate(zip(df["label"], values))]
    return _entries(rows, path.name, labels, logits, f"{path.name} (given)")


def _from_eval_json(path: Path, rule: Rule, labels, logits: bool = False) -> dict[str, Rule]:
    from chexcut.reading import read_json

    try:
        ev = read_json(path)
        points = ev["operating_points"]
    except (ChexcutError, KeyError, TypeError):
        raise ChexcutError(f"--thresholds {path.name}: not an evaluation JSON with operating points (evaluate "
                           f"--at-specificity S --json FILE writes one)") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ChexcutError(f"--thresholds {path.name}: 'operating_points' is a list of objects (evaluate "
                           f"--at-specificity S --json FILE writes one)")
    rows = [(f"operating_points[{i}]", p.get("label"), p.get("threshold")) for i, p in enumerate(points)
            if p.get("rule") == rule.name and p.get("threshold") is not None]
    if not rows:
        rules = sorted({str(p.get("rule")) for p in points})
        raise ChexcutError(f"--thresholds {path.name}: no operating point with --threshold-rule {rule.name} "
                           f"(it has: {', '.join(rules) or 'none'})")
    return _entries(rows, path.name, labels, logits, f"{path.name} ({rule.name} on its set)")


def _from_run(run_dir: Path, rule: Rule, labels, level: str) -> dict[str, Rule]:
    """The rule applied to a run's validation predictions (the rows and labels its config names)."""
    from chexcut.data.tables import load_split
    from chexcut.evaluation import evaluation_set as sets
    from chexcut.evaluation.evaluate import aggregate_by_study, evalrows_from_table
    from chexcut.evaluation.predictions import align, read_predictions
    from chexcut.rundir import RunDir

    run = RunDir(run_dir)
    if not run.is_run() or not run.valid_predictions.is_file():
        raise ChexcutError(f"--thresholds {run_dir}: not a finished finetune run (no config.json or "
                           f"valid_predictions.csv)")
    es = sets.which_rows(run_dir, None, None, {})
    preds = read_predictions(run.valid_predictions)
    table = load_split(es.data, es.split, es.opts)
    vs = evalrows_from_table(table)
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
    return out


def _known(out: dict[str, Rule], labels, name: str) -> tuple[dict[str, Rule], list[str]]:
    """The thresholds of the evaluated labels, and a warning naming the evaluated labels left without one and the
    file's labels this evaluation does not evaluate."""
    kept = {k: v for k, v in out.items() if k in labels}
    if not kept:
        raise ChexcutError(f"--thresholds {name}: no threshold for any evaluated label ({', '.join(labels[:5])}...)")
    warnings = []
    missing = [lab for lab in labels if lab not in kept]
    if missing:
        warnings.append(f"--thresholds {name} gives no threshold for {len(missing)} of the {len(labels)} evaluated "
                        f"labels ({', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}): no given-threshold "
                        f"operating point for them")
    extra = sorted(set(out) - set(kept))
    if extra:
        warnings.append(f"--thresholds {name}: {len(extra)} label(s) not evaluated here are ignored "
                        f"({', '.join(extra[:4])})")
    return kept, warnings
