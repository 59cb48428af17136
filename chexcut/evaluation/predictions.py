"""Predictions CSV files (a key column + one probability column per label): read, write, align to rows.

Files as published: a row is keyed by ``Path`` (an image) or ``Study`` (a study folder, as the CheXpert
test-set files: ``CheXpert-v1.0/test/patient64741/study1``); ``--key-col`` names any other column. Keys are
compared after :func:`canonical_key`: the ``CheXpert-v1.0/`` and ``CheXpert-v1.0-small/`` prefixes match each
other and a trailing slash is dropped. Image-level predictions against study-level truth are aggregated to
studies (max over the study's images, the CheXpert convention); study-level predictions against image-level
truth give every image its study's score.

Plain pandas and numpy: reading predictions never imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError

KEY_COLUMNS = ("Path", "Study")
_PREFIX = re.compile(r"^CheXpert-v1\.0-small/")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".tif", ".tiff")


def canonical_key(key: str) -> str:
    """The key as compared: ``CheXpert-v1.0-small/`` read as ``CheXpert-v1.0/``, no surrounding space or
    trailing slash."""
    return _PREFIX.sub("CheXpert-v1.0/", str(key).strip().rstrip("/"))


def canonical_keys(keys) -> list[str]:
    return [canonical_key(k) for k in keys]


def is_image_key(key: str) -> bool:
    return str(key).lower().endswith(IMAGE_SUFFIXES)


def study_of(key: str) -> str:
    """The study a (canonical) image key belongs to: its folder."""
    return key.rsplit("/", 1)[0] if "/" in key else key


def key_column(header: list[str], key_col: str | None, name: str) -> str:
    """The column that keys ``name``'s rows: ``key_col`` if given, else Path, else Study."""
    if key_col:
        from chexcut.labels import CHEXPERT_LABELS

        if key_col in CHEXPERT_LABELS:
            raise ChexcutError(f"{name}: --key-col {key_col!r} is a label column; the key is the column that names each "
                               f"row (Path, Study, or your ID column)")
        if key_col not in header:
            raise ChexcutError(f"{name}: no key column {key_col!r} (--key-col; columns: {', '.join(header[:8])}...)")
        return key_col
    for c in KEY_COLUMNS:
        if c in header:
            return c
    raise ChexcutError(f"{name}: no 'Path' or 'Study' column to key its rows; name it with --key-col "
                       f"(columns: {', '.join(header[:8])}{'...' if len(header) > 8 else ''})")


def read_predictions(path: str | Path, labels: tuple[str, ...] | None = None, logits: bool = False,
                     key_col: str | None = None):
    """A predictions CSV as a DataFrame indexed by canonical key, with ``attrs["level"]`` "image" or "study"
    and ``attrs["key"]`` the key column's name.

    With ``logits`` the values are kept as they are: AUROC, the bootstrap and DeLong use only their
    order, and a sigmoid in floating point would map every logit above ~36.7 to exactly 1.0 (ties)."""
    import pandas as pd

    from chexcut.reading import csv_header, read_csv

    path = Path(path)
    if not path.is_file():
        raise ChexcutError(f"predictions file not found: {path}")
    header = csv_header(path)
    key = key_column(header, key_col, path.name)
    try:
        df = read_csv(path, text=[key])
    except Exception as e:
        raise ChexcutError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    dups = sorted({c for c in header if header.count(c) > 1})
    if dups:
        raise ChexcutError(f"{path.name}: the header names {', '.join(map(repr, dups))} more than once")
    if df.empty:
        raise ChexcutError(f"{path.name}: no rows (only a header)")
    if df[key].isna().any():
        rows = (np.flatnonzero(df[key].isna().to_numpy()) + 2)[:5]
        raise ChexcutError(f"{path.name}: empty {key} in rows {', '.join(map(str, rows))}")
    keys = pd.Index(canonical_keys(df[key]))
    dup = keys.duplicated()
    if dup.any():
        raise ChexcutError(f"{path.name}: {int(dup.sum())} duplicated {key} keys (first: {keys[dup][0]}; the "
                           f"CheXpert-v1.0/ and -small/ prefixes count as one)")
    others = [c for c in df.columns if c != key and c not in KEY_COLUMNS]
    cols = others if labels is None else list(labels)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        import difflib

        near = {m: difflib.get_close_matches(m, [str(c) for c in df.columns], n=1, cutoff=0.6) for m in missing}
        hint = "; ".join(f"{m!r}: did you mean {n[0]!r}?" for m, n in near.items() if n)
        raise ChexcutError(f"{path.name}: missing prediction columns: {', '.join(missing)}" + (f" ({hint})" if hint else ""))
    vals = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_nan = ~np.isfinite(vals)
    if bad_nan.any():
        rows = np.unique(np.nonzero(bad_nan)[0])[:5] + 2
        columns = [cols[j] for j in np.flatnonzero(bad_nan.any(0))]
        raise ChexcutError(f"{path.name}: {int(bad_nan.any(1).sum())} rows with missing or non-numeric predictions "
                           f"in {', '.join(map(repr, columns[:5]))} (rows {', '.join(map(str, rows))})")
    out = np.zeros_like(vals, dtype=bool) if logits else (vals < 0) | (vals > 1)
    if out.any():
        rows = np.unique(np.nonzero(out)[0])[:5] + 2
        raise ChexcutError(f"{path.name}: predictions outside [0, 1] in rows {', '.join(map(str, rows))}; "
                           f"pass --logits if these are logits")
    frame = pd.DataFrame(vals, index=keys, columns=cols)
    frame.attrs["key"] = key
    frame.attrs["level"] = "image" if all(is_image_key(k) for k in keys[:1000]) else "study"
    return frame


def to_studies(preds):
    """Image-level predictions as study-level ones: the max over each study's images."""
    studies = [study_of(k) for k in preds.index]
    out = preds.groupby(studies, sort=False).max()
    out.attrs.update(preds.attrs, level="study")
    return out


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


def align(evalrows, preds, name: str = "predictions", notes: list | None = None) -> np.ndarray:
    """The (N, L) scores of ``preds`` (DataFrame indexed by canonical key) in ``evalrows``'s row order.

    Truth rows without a prediction are an error naming how many and the first; prediction rows without a
    truth row are a note in ``notes`` (e.g. views the evaluation does not count)."""
    missing_cols = [c for c in evalrows.labels if c not in preds.columns]
    if missing_cols:
        raise ChexcutError(f"{name} lack label columns: {', '.join(missing_cols)}")
    keys = canonical_keys(evalrows.paths)
    if preds.attrs.get("level") == "study" and keys and is_image_key(keys[0]):
        keys = [study_of(k) for k in keys]  # every image gets its study's score
    import pandas as pd

    have = preds.index if preds.attrs.get("key") else pd.Index(canonical_keys(preds.index))  # a model's: raw paths
    pos = have.get_indexer(keys)
    unmatched = int((pos < 0).sum())
    if unmatched == len(keys):
        raise ChexcutError(f"no rows of the truth match the {name} on their keys (empty join; "
                           f"e.g. truth {keys[0]!r} vs {name} {have[0]!r})")
    if unmatched:
        first = evalrows.paths[int(np.flatnonzero(pos < 0)[0])]
        raise ChexcutError(f"{unmatched} of {len(keys)} truth rows have no {name} row (first: {first})")
    if notes is not None:
        extra = have.difference(keys, sort=False)
        if len(extra):
            notes.append(f"{len(extra)} {name} rows have no truth row and were not evaluated (first: {extra[0]})")
    return preds[list(evalrows.labels)].to_numpy(dtype=np.float64)[pos]
