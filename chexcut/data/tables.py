"""CheXpert-layout label tables: CSV -> rows with targets + mask (label policy applied once).

CheXpert's ``train.csv`` / ``valid.csv`` have ``Path,Sex,Age,Frontal/Lateral,AP/PA`` and the 14
observations, each ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (not
mentioned). A :class:`LabelTable` holds, for the selected rows, the resolved image paths, the
raw label values, ``targets`` (float32 0/1) and ``mask`` (1 = this label counts for this row),
and the patient / study ids used for splits, clustering and study-level evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from chexcut.choices import Blank, Split, Views, check
from chexcut.data.readers import PREFIXES, find_dataset_dir, label_values, patient_study  # noqa: F401 (re-exported)
from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS

# The CheXpert paper's best uncertainty approach per competition task, where it is U-Ones or
# U-Zeros: U-Ones for Atelectasis and Edema; the others used U-MultiClass / U-SelfTrained,
# which map to no fixed value, so they fall back to the default (zeros).
UNCERTAIN_PRESETS = {"chexpert": "Atelectasis=ones,Edema=ones,default=zeros"}
_POLICY_VALUES = {"ones": 1.0, "zeros": 0.0, "ignore": None}


@dataclass(frozen=True)
class DataOptions:
    """The data options shared by ``prepare``, ``finetune`` and ``evaluate``.

    csv:       a generic CSV (any layout) instead of the CheXpert train.csv/valid.csv.
    path_col:  the column holding image paths (relative to the data folder).
    labels:    label columns, in head order (default: the 14 CheXpert names present in the CSV).
    views:     frontal | lateral | ap | pa | all.
    uncertain: ones | zeros | ignore | per-label ``A=ones,B=zeros,default=zeros`` | preset ``chexpert``.
    blank:     zeros (CheXpert's "not mentioned") | ignore.
    valid_frac / split_seed: the patient-level split used when there is no valid.csv.
    dataset:   a declared data set (:mod:`chexcut.data.datasets`: nih, padchest, mimic, ...) read as published;
               None: the CheXpert layout, or the set whose label file the folder holds.
    label_map: a CSV (chexpert,source) replacing the data set's declared label mapping where it names a label.
    images_outside: allow image paths (absolute, or with ``..``) that lead outside the data folder; refused by
               default, so that a label file cannot make chexcut read (and draw) a file elsewhere.
    """

    csv: str | None = None
    path_col: str = "Path"
    labels: tuple[str, ...] | None = None
    views: str = "frontal"
    uncertain: str = "zeros"
    blank: str = "zeros"
    valid_frac: float = 0.1
    split_seed: int = 0
    dataset: str | None = None
    label_map: str | None = None
    images_outside: bool = False

    def __post_init__(self):
        """Bad options fail here, as one line, before any file is read."""
        object.__setattr__(self, "views", check(Views, self.views, "--views"))
        object.__setattr__(self, "blank", check(Blank, self.blank, "--blank"))
        if self.labels:
            parse_uncertain(self.uncertain, tuple(self.labels))
        if self.dataset is not None:
            from chexcut.data.datasets import get

            object.__setattr__(self, "dataset", get(self.dataset).name)
        if self.label_map is not None and self.csv:
            raise ChexcutError("--label-map maps a published data set's labels; a --csv table names its own columns")
        if not (isinstance(self.valid_frac, (int, float)) and 0 < self.valid_frac < 1):  # even when valid.csv exists
            raise ChexcutError(f"--valid-frac must be in (0, 1), not {self.valid_frac}")

    @classmethod
    def from_json(cls, d: dict) -> "DataOptions":
        """The inverse of :meth:`to_json` (extra keys, e.g. a run config's, are ignored)."""
        return cls(csv=d.get("csv"), path_col=d.get("path_col", "Path"),
                   labels=tuple(d["labels"]) if d.get("labels") else None, views=d.get("views", "frontal"),
                   uncertain=d.get("uncertain", "zeros"), blank=d.get("blank", "zeros"),
                   valid_frac=d.get("valid_frac", 0.1), split_seed=d.get("split_seed", 0),
                   dataset=d.get("dataset"), label_map=d.get("label_map"),
                   images_outside=bool(d.get("images_outside", False)))

    def to_json(self) -> dict:
        return {"csv": self.csv, "path_col": self.path_col, "labels": list(self.labels) if self.labels else None,
                "views": self.views, "uncertain": self.uncertain, "blank": self.blank,
                "valid_frac": self.valid_frac, "split_seed": self.split_seed,
                **{k: v for k, v in (("dataset", self.dataset), ("label_map", self.label_map)) if v is not None},
                **({"images_outside": True} if self.images_outside else {})}


@dataclass
class LabelTable:
    """Selected rows of one split. Arrays are aligned with ``paths``."""

    root: Path
    paths: list[str]  # as written in the CSV (the join key for predictions)
    files: list[str]  # resolved image files
    labels: tuple[str, ...]
    values: np.ndarray  # (N, L) float32 raw labels, NaN = blank
    targets: np.ndarray  # (N, L) float32 0/1
    mask: np.ndarray  # (N, L) float32 1 = counts
    patient: np.ndarray  # (N,) str
    study: np.ndarray  # (N,) str (patient/study)
    csv_rows: np.ndarray  # (N,) int: line numbers in the CSV (header = 1)
    split: str = "train"
    notes: list[str] = field(default_factory=list)
    not_annotated: tuple[str, ...] = ()  # labels blank in every row: never scored, never negatives

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "LabelTable":
        index = np.asarray(index)
        return replace(
            self, paths=[self.paths[i] for i in index], files=[self.files[i] for i in index],
            values=self.values[index], targets=self.targets[index], mask=self.mask[index],
            patient=self.patient[index], study=self.study[index], csv_rows=self.csv_rows[index],
        )

    def prevalence(self) -> list[dict]:
        """Per label: positives / negatives / uncertain / blank in the raw CSV, and what counts."""
        out = []
        for j, name in enumerate(self.labels):
            v = self.values[:, j]
            m = self.mask[:, j] > 0
            out.append({
                "label": name, "annotated": name not in self.not_annotated,
                "positive": int((v == 1).sum()), "negative": int((v == 0).sum()),
                "uncertain": int((v == -1).sum()), "blank": int(np.isnan(v).sum()),
                "train_pos": int(((self.targets[:, j] == 1) & m).sum()),
                "train_neg": int(((self.targets[:, j] == 0) & m).sum()),
                "masked": int((~m).sum()),
            })
        return out


# ----------------------------------------------------------------------------- policies

def parse_uncertain(policy: str, labels: tuple[str, ...]) -> list[float | None]:
    """Per label: the value given to uncertain (-1) cells, or ``None`` to mask them out."""
    policy = UNCERTAIN_PRESETS.get(policy.strip().lower(), policy.strip())
    if policy.lower() in _POLICY_VALUES:
        return [_POLICY_VALUES[policy.lower()]] * len(labels)
    mapping, default = {}, "zeros"
    for part in policy.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ChexcutError(
                f"--uncertain {policy!r}: use ones | zeros | ignore | chexpert | LABEL=ones,...,default=zeros"
            )
        name, value = (s.strip() for s in part.split("=", 1))
        if value.lower() not in _POLICY_VALUES:
            raise ChexcutError(f"--uncertain: {name}={value}: the value must be ones, zeros or ignore")
        if name.lower() == "default":
            default = value.lower()
        elif name not in labels:
            raise ChexcutError(f"--uncertain names {name!r}, which is not one of the labels ({', '.join(labels)})")
        else:
            mapping[name] = value.lower()
    return [_POLICY_VALUES[mapping.get(n, default)] for n in labels]


def apply_policies(values: np.ndarray, uncertain: list[float | None], blank: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (NaN = blank) -> (targets, mask), vectorised. ``blank``: zeros | ignore (checked by DataOptions)."""
    targets = (values == 1).astype(np.float32)
    mask = np.ones_like(values, dtype=np.float32)
    unc = values == -1
    for j, u in enumerate(uncertain):
        if u is None:
            mask[unc[:, j], j] = 0
        else:
            targets[unc[:, j], j] = u
    if blank == "ignore":
        mask[np.isnan(values)] = 0
    return targets, mask


# ----------------------------------------------------------------------------- reading

IMAGES_OUTSIDE_FLAG = "--images-outside-data"  # the option that lets image paths lead outside the data folder


def resolve_paths(paths: list[str], base: Path, outside: bool = False, source: str = "the label file") -> list[str]:
    """CSV paths -> file paths (strings). CheXpert paths start with their prefix folder; ``base``
    may be that folder itself or the folder that contains it (decided once per prefix).

    A path leading outside ``base`` (absolute elsewhere, or out by ``..``) is refused unless ``outside``. The paths
    returned are the ones judged (``..`` resolved in the text: a symlinked folder inside cannot be climbed out of);
    the data folder may be named through a symlink or by its real path."""
    import os

    base_s = os.path.abspath(base)  # absolute: the same image has one name, whatever the cwd
    strip_prefix: dict[str, bool] = {}
    out = []
    for p in paths:
        first, _, rest = p.partition("/")
        if os.path.isabs(p):  # an absolute path in the CSV is used as it is
            out.append(os.path.normpath(p))
        elif rest and first in PREFIXES:
            strip = strip_prefix.get(first)
            if strip is None:
                strip = strip_prefix[first] = base.name == first or not (base / first).is_dir()
            out.append(os.path.normpath(f"{base_s}/{rest if strip else p}"))
        else:
            out.append(os.path.normpath(f"{base_s}/{p}"))
    roots = {base_s, os.path.realpath(base)}
    away = [] if outside else [p for p, f in zip(paths, out) if not any(os.path.commonpath([r, f]) == r for r in roots)]
    if away:
        raise ChexcutError(f"{source}: {len(away)} image paths lead outside the data folder {base} (e.g. "
                           f"{', '.join(repr(p) for p in away[:3])}); pass {IMAGES_OUTSIDE_FLAG} if your layout "
                           f"keeps images elsewhere")
    return out


def _view_mask(df, views: str, paths: list[str]) -> np.ndarray:
    n = len(df)  # views was checked by DataOptions
    if views == "all":
        return np.ones(n, dtype=bool)
    if views in ("frontal", "lateral"):
        if "Frontal/Lateral" in df.columns:
            col = df["Frontal/Lateral"].fillna("").astype(str).str.lower().to_numpy()
        else:  # infer from the file name (view1_frontal.jpg); unnamed views count as frontal
            col = np.array(["lateral" if "lateral" in p.lower() else "frontal" for p in paths])
        return col == views
    if "AP/PA" not in df.columns:
        raise ChexcutError(f"--views {views} needs an AP/PA column, which the CSV lacks")
    return df["AP/PA"].fillna("").astype(str).str.lower().to_numpy() == views


def read_csv_table(csv: Path, base: Path, opts: DataOptions, split: str) -> LabelTable:
    """Read one CSV, validate it, select views, apply the label policies."""
    import pandas as pd

    from chexcut.reading import read_csv

    try:
        df = read_csv(csv, text=[opts.path_col, "Patient", "Study"], low_memory=False)
    except FileNotFoundError:
        raise ChexcutError(f"CSV not found: {csv}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ChexcutError(f"{csv} is not a readable CSV: {str(e).splitlines()[0]}") from None
    return table_from_frame(df, csv.name, base, opts, split)


def table_from_frame(df, name: str, base: Path, opts: DataOptions, split: str, not_annotated: tuple = ()) -> LabelTable:
    """A label frame (a CSV's, or a data set's harmonised index) -> the selected rows as a :class:`LabelTable`.

    Patient and study ids come from ``Patient`` / ``Study`` columns when the frame has both (an index),
    else from the paths. A cell reading ``not annotated`` (an index's mark) is blank, and its label is
    never counted; so is every label in ``not_annotated``."""
    import pandas as pd

    from chexcut.data.datasets import NOT_ANNOTATED

    if opts.path_col not in df.columns:
        raise ChexcutError(f"{name}: no path column {opts.path_col!r} (columns: {', '.join(map(str, df.columns[:8]))}...)")
    if opts.labels:
        labels = tuple(opts.labels)
        missing = [c for c in labels if c not in df.columns]
        if missing:
            raise ChexcutError(f"{name}: missing label columns: {', '.join(missing)}")
    else:
        labels = tuple(c for c in CHEXPERT_LABELS if c in df.columns)
        if not labels:
            raise ChexcutError(f"{name}: none of the 14 CheXpert label columns is present; name them with --labels")
    twice = df[opts.path_col].duplicated()
    if twice.any():
        first = df[opts.path_col][twice].iloc[0]
        raise ChexcutError(f"{name}: {int(twice.sum())} rows repeat an image path (first: {first}, row "
                           f"{int(np.flatnonzero(twice.to_numpy())[0]) + 2}); each image must appear once")
    if df[opts.path_col].isna().any():
        rows = (np.flatnonzero(df[opts.path_col].isna().to_numpy()) + 2)[:5]
        raise ChexcutError(f"{name}: empty {opts.path_col} in rows {', '.join(map(str, rows))}")
    raw = df[list(labels)]
    marked = np.zeros(raw.shape, dtype=bool)
    for j, n in enumerate(labels):  # only a text column can hold the mark
        if raw[n].dtype == object or isinstance(raw[n].dtype, pd.StringDtype):
            marked[:, j] = (raw[n].astype("string").str.strip().str.lower() == NOT_ANNOTATED).fillna(False).to_numpy()
    not_annotated = tuple(n for j, n in enumerate(labels) if n in not_annotated or (len(raw) and marked[:, j].any()))
    raw = raw.mask(marked)
    values = label_values(raw, name)
    for j, n in enumerate(labels):
        if n in not_annotated:
            values[:, j] = np.nan
    paths = df[opts.path_col].astype(str).tolist()
    keep = _view_mask(df, opts.views, paths)
    sel = np.flatnonzero(keep)
    paths = [paths[i] for i in sel]
    values = values[sel]
    targets, mask = apply_policies(values, parse_uncertain(opts.uncertain, labels), opts.blank)
    if "Patient" in df.columns and "Study" in df.columns:
        patient = df["Patient"].astype(str).to_numpy(dtype=object)[sel]
        study = df["Study"].astype(str).to_numpy(dtype=object)[sel]
    else:
        patient, study = patient_study(paths)
    return mark_not_annotated(LabelTable(
        root=base, paths=paths, files=resolve_paths(paths, base, opts.images_outside, name), labels=labels,
        values=values, targets=targets, mask=mask, patient=patient, study=study, csv_rows=sel + 2, split=split))


def patient_split(table: LabelTable, valid_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded patient-level split: no patient in both parts. Returns (train_index, valid_index)."""
    if not 0 < valid_frac < 1:
        raise ChexcutError(f"--valid-frac must be in (0, 1), not {valid_frac}")
    patients = np.unique(table.patient.astype(str))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_valid = max(1, int(round(valid_frac * len(patients))))
    valid_patients = set(patients[:n_valid])
    is_valid = np.array([p in valid_patients for p in table.patient.astype(str)])
    return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


def load_split(data: str | Path, split: str, opts: DataOptions = DataOptions()) -> LabelTable:
    """Rows of ``split`` ("train" | "valid" | "all") with ``opts`` applied.

    CheXpert layout: train.csv and valid.csv. Without a valid.csv (or with ``--csv``), valid is
    a seeded patient-level split of the one CSV.
    """
    split = check(Split, split, "--split")
    from chexcut.data.datasets import resolve

    data, dataset = resolve(data, opts.dataset, opts.csv)
    if dataset is not None and dataset != "chexpert":
        if opts.csv:
            raise ChexcutError(f"--csv reads a table of your own; the {dataset} data set is read as published")
        return _non_empty(_dataset_split(data, dataset, split, opts), opts)
    if opts.label_map:
        raise ChexcutError("--label-map maps a published data set's labels (nih:DIR, padchest:DIR, ...); "
                           "CheXpert's are the 14 themselves")
    if split == "test":
        raise ChexcutError("the CheXpert layout has no test split in its folder (train.csv, valid.csv); evaluate "
                           "the published test set with --truth, or choose --split valid or all")
    if opts.csv:
        csv = Path(opts.csv)
        if not csv.is_file() and (data / csv).is_file():
            csv = data / csv
        if not data.is_dir():
            raise ChexcutError(f"data folder {data} does not exist")
        table = read_csv_table(csv, data, opts, split)
        note = (f"patient-level split of {csv.name} (valid {opts.valid_frac:.0%}, seed {opts.split_seed})"
                if split != "all" else f"all rows of {csv.name}")
    else:
        ddir = find_dataset_dir(data)
        base = data if ddir != data else ddir
        train_csv, valid_csv = ddir / "train.csv", ddir / "valid.csv"
        if valid_csv.is_file() and train_csv.is_file():
            if split == "all":
                a, b = (read_csv_table(c, base, opts, s) for c, s in ((train_csv, "train"), (valid_csv, "valid")))
                table = _concat(a, b)
            else:
                table = read_csv_table(ddir / f"{split}.csv", base, opts, split)
            table.notes.append(f"{split} = the dataset's own {split}.csv" if split != "all" else "train.csv + valid.csv")
            return _non_empty(table, opts)
        table = read_csv_table(train_csv if train_csv.is_file() else valid_csv, base, opts, split)
        note = f"no valid.csv: patient-level split (valid {opts.valid_frac:.0%}, seed {opts.split_seed})"
    if split != "all":
        tr, va = patient_split(table, opts.valid_frac, opts.split_seed)
        table = table.subset(tr if split == "train" else va)
        table.split = split
    table.notes.append(note)
    return _non_empty(table, opts)


def _dataset_split(root: Path, name: str, split: str, opts: DataOptions) -> LabelTable:
    """Rows of ``split`` of a declared data set: its official split where it publishes one (valid: a patient-level
    split of its train rows when it publishes no valid rows), else a patient-level split of all its rows."""
    from chexcut.data.datasets import get, read_index

    frame, not_annotated, label_file = read_index(root, name, opts.label_map)
    ds = get(name)
    official = frame["Split"].to_numpy(dtype=object)
    has = {s: bool((official == s).any()) for s in ("train", "valid", "test")}
    carve = split in ("train", "valid") and not has["valid"]  # no published valid rows: a patient-level split
    if split == "all":
        rows, note = np.arange(len(frame)), f"all rows of {label_file.name}"
    elif carve:
        rows = np.flatnonzero(official == "train") if has["train"] else np.arange(len(frame))
        note = (f"patient-level split of {'the official train rows' if has['train'] else 'all rows'} "
                f"(valid {opts.valid_frac:.0%}, seed {opts.split_seed})")
    elif has[split]:
        rows, note = np.flatnonzero(official == split), f"{split} = {ds.title}'s official {split} split"
    else:
        raise ChexcutError(f"{ds.title} in {root} has no official {split} split"
                           f"{' (' + ds.official_split + ')' if ds.official_split else ''}; choose --split valid or all")
    table = table_from_frame(frame.iloc[rows].reset_index(drop=True), f"{ds.name}:{label_file.name}", root, opts,
                             split, not_annotated)
    table.csv_rows = rows[table.csv_rows - 2] + 2
    if carve:
        tr, va = patient_split(table, opts.valid_frac, opts.split_seed)
        table = table.subset(tr if split == "train" else va)
        table.split = split
    table.notes.append(f"{ds.title}: {note}")
    return table


def _concat(a: LabelTable, b: LabelTable) -> LabelTable:
    if a.labels != b.labels:
        raise ChexcutError("train.csv and valid.csv have different label columns")
    return LabelTable(
        root=a.root, paths=a.paths + b.paths, files=a.files + b.files, labels=a.labels,
        values=np.concatenate([a.values, b.values]), targets=np.concatenate([a.targets, b.targets]),
        mask=np.concatenate([a.mask, b.mask]), patient=np.concatenate([a.patient, b.patient]),
        study=np.concatenate([a.study, b.study]), csv_rows=np.concatenate([a.csv_rows, b.csv_rows]), split="all",
    )


def _non_empty(table: LabelTable, opts: DataOptions) -> LabelTable:
    if len(table) == 0:
        raise ChexcutError(f"no images selected for split {table.split!r} with --views {opts.views}")
    return mark_not_annotated(table)


def mark_not_annotated(table: LabelTable) -> LabelTable:
    """A label blank in every selected row was never annotated in this data set (NIH has no Fracture,
    for one): it counts nowhere, whatever ``--blank`` says, and the table names it."""
    blank = np.isnan(table.values).all(axis=0) if len(table) else np.zeros(len(table.labels), bool)
    names = tuple(n for n, b in zip(table.labels, blank) if b)
    if names != table.not_annotated:
        table.mask[:, blank] = 0
        table.targets[:, blank] = 0
        table.not_annotated = names
        if names:
            table.notes.append(f"not annotated in this data set (blank in every row, never counted): "
                               f"{', '.join(names)}")
    return table


def check_files(table: LabelTable, skip_missing: bool = False) -> LabelTable:
    """Every image file exists, checked before any work starts; ``skip_missing`` drops (and notes) them."""
    import os

    missing = [i for i, f in enumerate(table.files) if not os.path.isfile(f)]
    if not missing:
        return table
    shown = ", ".join(str(table.files[i]) for i in missing[:3])
    if not skip_missing:
        raise ChexcutError(f"{len(missing)} of {len(table)} images are missing (first: {shown}); "
                           f"--skip-missing proceeds without them")
    keep = np.setdiff1d(np.arange(len(table)), missing)
    if len(keep) == 0:
        raise ChexcutError(f"all {len(table)} images are missing (first: {shown})")
    out = table.subset(keep)
    out.notes = table.notes + [f"skipped {len(missing)} missing images (first: {shown})"]
    return out


def label_files(data, opts) -> list[Path]:
    """The files that hold the labels ``load_split`` reads for ``data`` and ``opts``."""
    from chexcut.data.datasets import find_label_file, get, resolve

    data, name = resolve(data, opts.dataset, opts.csv)
    if opts.csv:
        return [Path(opts.csv) if Path(opts.csv).is_file() else Path(data) / opts.csv]
    if name and name != "chexpert":
        ds = get(name)
        found = [find_label_file(data, ds)]
        return found + sorted(p for p in Path(data).glob("*") if p.is_file() and p.name.endswith(
            (".txt", ".csv", ".csv.gz")) and p not in found and p.name != "index.csv")
    return [find_dataset_dir(data) / n for n in ("train.csv", "valid.csv")]


def dataset_fingerprint(data: Path, opts) -> str:
    """sha256 over the label CSVs' bytes and the data options."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(opts.to_json(), sort_keys=True).encode())
    for c in label_files(data, opts):
        if c.is_file():
            h.update(c.read_bytes())
    return h.hexdigest()
