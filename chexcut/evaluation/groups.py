"""Where subgroup columns come from: the truth CSV (CheXpert's carry ``Sex``, ``Age``, ``Frontal/Lateral``,
``AP/PA``), a data set's train.csv/valid.csv, or a ``--groups CSV`` keyed like the truth (the first source
holding a column wins). Values are text; a blank is no group; ``Age`` becomes the intervals of ``--age-bins``.
No torch here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError


def _name(source) -> str:
    return source.attrs.get("name", "index") if hasattr(source, "columns") else Path(source).name


def read_table(csv, key_col: str | None, columns: list[str]):
    import pandas as pd

    from chexcut.evaluation.predictions import canonical_keys, key_column
    from chexcut.reading import csv_header, read_csv

    if hasattr(csv, "columns"):  # a published data set's harmonised index, in memory
        have = [c for c in columns if c in csv.columns]
        if not have:
            return None, list(csv.columns)
        df = csv[have].astype(object).where(csv[have].notna(), None)
        df = df.apply(lambda c: c.map(lambda v: None if v is None else (f"{v:g}" if isinstance(v, float) else str(v))))
        df.index = pd.Index(canonical_keys(csv["Path"].astype(str)))
        return df, list(csv.columns)
    header = csv_header(csv)
    have = [c for c in columns if c in header]
    if not have:
        return None, header
    key = key_column(header, key_col, csv.name)
    try:
        df = read_csv(csv, text=True, usecols=[key, *have], keep_default_na=True)
    except Exception as e:
        raise ChexcutError(f"{csv} is not a readable CSV: {str(e).splitlines()[0]}") from None
    df.index = pd.Index(canonical_keys(df[key].fillna("")))
    dup = df.index.duplicated()
    if dup.any():
        raise ChexcutError(f"{csv.name}: {int(dup.sum())} duplicated {key} keys (first: {df.index[dup][0]})")
    return df[have], header


def attach_groups(evalrows, stats, sources: list[tuple[Path, str | None]]):
    """(``evalrows`` with ``groups`` {column: (N,) values or None} for every column of ``stats.by``, warnings: a
    source that leaves evaluated rows out says how many)."""
    from chexcut.evaluation.predictions import canonical_keys
    from chexcut.evaluation.subgroups import age_intervals

    wanted = list(stats.by)
    if "Age" in wanted and not stats.age_bins:
        raise ChexcutError("--by Age needs --age-bins EDGES (e.g. 0,40,60,80,200): each age would be its own group")
    if stats.age_bins and "Age" not in wanted:
        raise ChexcutError("--age-bins applies to --by Age; add Age to --by")
    keys = canonical_keys(evalrows.paths)
    groups, headers, warnings = {}, [], []
    for csv, key_col in sources:
        todo = [c for c in wanted if c not in groups]
        if not todo:
            break
        if not hasattr(csv, "columns") and not Path(csv).is_file():
            raise ChexcutError(f"groups CSV not found: {csv}")
        df, header = read_table(csv if hasattr(csv, "columns") else Path(csv), key_col, todo)
        headers.append((_name(csv), header))
        if df is None:
            continue
        pos = df.index.get_indexer(keys)
        if (pos < 0).all():
            raise ChexcutError(f"{_name(csv)}: no key matches the evaluated rows (e.g. {keys[0]!r} vs "
                               f"{df.index[0]!r}); a --groups CSV is keyed like the truth")
        unmatched = int((pos < 0).sum())
        if unmatched:
            first = keys[int(np.flatnonzero(pos < 0)[0])]
            warnings.append(f"{_name(csv)} has no row for {unmatched} of the {len(keys)} evaluated rows (first: "
                            f"{first}): they are in no group of {', '.join(df.columns)}")
        for c in df.columns:
            col = df[c].to_numpy(dtype=object)
            vals = np.array([None if p < 0 or not isinstance(col[p], str) or not col[p].strip() else col[p].strip()
                             for p in pos], dtype=object)
            groups[c] = age_intervals(vals, stats.age_bins) if c == "Age" else vals
    unknown = [c for c in wanted if c not in groups]
    if unknown:
        seen = "; ".join(f"{name}: {', '.join(h[:10])}{'...' if len(h) > 10 else ''}" for name, h in headers)
        raise ChexcutError(f"--by {', '.join(unknown)}: no such column in the truth or --groups CSV ({seen})")
    return dataclasses.replace(evalrows, groups=groups), warnings
