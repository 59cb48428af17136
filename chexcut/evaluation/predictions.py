"""Predictions CSV files (``Path`` + one probability column per label): read, write, align to rows.

Plain pandas and numpy: reading predictions never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError


def read_predictions(path: str | Path, labels: tuple[str, ...] | None = None, logits: bool = False):
    """A predictions CSV (``Path`` + one probability column per label) as a DataFrame indexed by Path.

    With ``logits`` the values are kept as they are: AUROC, the bootstrap and DeLong use only their
    order, and a sigmoid in floating point would map every logit above ~36.7 to exactly 1.0 (ties)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ChexcutError(f"predictions file not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"Path": str})
    except Exception as e:
        raise ChexcutError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    from chexcut.data.chexpert import _header

    header = _header(path)
    dups = sorted({c for c in header if header.count(c) > 1})
    if dups:
        raise ChexcutError(f"{path.name}: the header names {', '.join(map(repr, dups))} more than once")
    if "Path" not in df.columns:
        raise ChexcutError(f"{path.name}: no 'Path' column")
    if df.empty:
        raise ChexcutError(f"{path.name}: no rows (only a header)")
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
    out = np.zeros_like(vals, dtype=bool) if logits else (vals < 0) | (vals > 1)
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

        df.to_csv(sys.stdout, index=False)
        return
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False)  # shortest round-trip repr of each float64: order kept, no artificial ties


def align(evalset, preds, name: str = "predictions") -> np.ndarray:
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
