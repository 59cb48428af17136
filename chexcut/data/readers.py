"""How each published chest X-ray data set's files become rows: one reader per set, shared steps between them.

A reader takes the data folder and its :class:`~chexcut.data.datasets.Dataset` declaration and returns the
set's own frame: the index columns (``INDEX_COLUMNS``) and one float column per own label (1 / 0 / -1 / NaN).
What the labels mean for the CheXpert 14 is the declaration's (``mapping``), applied by
:func:`chexcut.data.datasets.harmonise`, never here. Nothing here decodes an image or imports torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from chexcut.errors import ChexcutError

#: The harmonised index's leading columns, in order (then the 14 labels, then the set's own).
INDEX_COLUMNS = ("Path", "Patient", "Study", "Frontal/Lateral", "AP/PA", "Sex", "Age", "Split")
PREFIXES = ("CheXpert-v1.0-small", "CheXpert-v1.0")


def find_dataset_dir(root: Path) -> Path:
    """The folder holding train.csv/valid.csv: ``root`` itself or its CheXpert prefix folder."""
    root = Path(root)
    if not root.exists():
        raise ChexcutError(f"data folder {root} does not exist")
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    for prefix in PREFIXES:
        if (root / prefix / "train.csv").is_file() or (root / prefix / "valid.csv").is_file():
            return root / prefix
    raise ChexcutError(
        f"no train.csv or valid.csv in {root} or {root}/{PREFIXES[0]}; for another layout pass --csv FILE --path-col COL"
    )


_PATIENT = re.compile(r"(patient\d+)/(study\d+)")
_NIH = re.compile(r"(?:^|/)(\d+)_(\d+)\.\w+$")


def patient_study(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Patient and study ids from paths: ``patientNNNNN/studyN`` (CheXpert, MIMIC-like), NIH's
    ``PATIENT_FOLLOWUP.png``, else the image itself."""
    patients, studies = [], []
    search, nih = _PATIENT.search, _NIH.search
    for p in paths:
        m = search(p) or nih(p)
        if m:
            patients.append(m.group(1))
            studies.append(m.group(1) + "/" + m.group(2))
        else:
            patients.append(p)
            studies.append(p)
    return np.array(patients, dtype=object), np.array(studies, dtype=object)



# ----------------------------------------------------------------------------- shared reading steps

def label_file_in(root: Path, ds) -> tuple[Path | None, str]:
    """The set's label file in ``root`` (the first name its declaration's patterns match whose header has the
    declared columns), or None and why each candidate was passed over."""
    from chexcut.reading import csv_header

    passed = []
    for pattern in ds.label_files:
        for hit in sorted(Path(root).glob(pattern)):
            try:
                missing = [c for c in ds.header if c not in csv_header(hit)]
            except (OSError, UnicodeDecodeError, EOFError, ValueError) as e:
                passed.append(f"{hit.name} is not a readable CSV ({type(e).__name__})")
                continue
            if not missing:
                return hit, ""
            passed.append(f"{hit.name} {_lacks(missing)}")
    return None, "; ".join(passed)


def find_label_file(root: Path, ds) -> Path:
    hit, why = label_file_in(root, ds)
    if hit is not None:
        return hit
    raise ChexcutError(f"{root}: {why}" if why else f"{root}: no {ds.title} label file ({' or '.join(ds.label_files)})")


def _lacks(missing) -> str:
    return (f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} (a renamed column, or "
            f"a separator other than , ; or tab?)")


def read_table(path: Path, **kwargs):
    import pandas as pd

    from chexcut.reading import csv_header, read_csv

    missing = [c for c in kwargs.get("usecols") or () if c not in csv_header(path)]
    if missing:
        raise ChexcutError(f"{path} {_lacks(missing)}")
    try:
        return read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as e:
        raise ChexcutError(f"{path} is not a readable CSV: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except ValueError as e:  # usecols naming a column the file lacks
        raise ChexcutError(f"{path}: {e}") from None


LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain; a blank cell is NaN


def label_values(raw, name) -> np.ndarray:
    """(N, L) float32 of a frame's label cells, each 1, 0, -1 or blank (NaN); any other cell (``yes``, ``2.0``,
    text) refused naming the file, the row (as a spreadsheet numbers it: header = 1) and the column."""
    import pandas as pd

    values = np.array(raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32))  # writable
    # a non-numeric cell became NaN: that is an error, unlike a genuinely blank cell
    bad = (np.isnan(values) & raw.notna().to_numpy()) | ~(np.isnan(values) | np.isin(values, LABEL_VALUES))
    if bad.any():
        r, c = np.nonzero(bad)
        shown = ", ".join(f"row {i + 2} {raw.columns[j]}={raw.iat[i, j]!r}" for i, j in list(zip(r, c))[:3])
        raise ChexcutError(f"{name}: {len(r)} label cells are not 1, 0, -1 or blank: {shown}")
    return values


def _first_bad(cells, bad) -> tuple[int, str] | None:
    """(row index, cell) of the first cell ``bad(cell)`` holds for, judging each distinct cell once."""
    import pandas as pd

    series = pd.Series(cells)
    for cell in series.dropna().unique():
        if bad(cell):
            return int(np.flatnonzero(series.to_numpy(dtype=object) == cell)[0]), cell
    return None


def check_terms(cells, path, column: str, vocabulary: tuple[str, ...], split) -> None:
    """Every term of a label column is one the set declares (case and spaces ignored): a misspelt or foreign term
    would otherwise read as a negative. One line naming the file, the row and the term."""
    known = {v.lower() for v in vocabulary}
    hit = _first_bad(cells, lambda cell: any(t.strip().lower() not in known for t in split(str(cell))))
    if hit is not None:
        i, cell = hit
        term = next(t.strip() for t in split(str(cell)) if t.strip().lower() not in known)
        raise ChexcutError(f"{path}: row {i + 2} {column}={cell!r}: {term!r} is not one of the set's "
                           f"{len(vocabulary)} labels ({', '.join(vocabulary[:4])}, ...)")


#: PadChest's Labels cell: one flat Python-style list of quoted strings, as every one of its 160,758 lists is.
PADCHEST_LIST = re.compile(r"\[\s*(?:'[^'\[\]]*'(?:\s*,\s*'[^'\[\]]*')*)?\s*\]")


def check_lists(cells, path, column: str) -> None:
    """Each cell a flat list of single-quoted strings (``['pleural effusion', 'cardiomegaly']``) or blank: a nested,
    double-quoted or bare cell would be split into the wrong terms and read as negatives."""
    hit = _first_bad(cells, lambda cell: not PADCHEST_LIST.fullmatch(str(cell).strip()))
    if hit is not None:
        i, cell = hit
        raise ChexcutError(f"{path}: row {i + 2} {column}={str(cell)[:80]!r} is not a flat list of quoted labels "
                           f"(['term', 'term'])")


def multi_hot(cells, vocabulary: tuple[str, ...], split: Callable[[str], list[str]]) -> np.ndarray:
    """(N, V) float32: 1 where a row's list of terms holds the term (case and spaces ignored), 0 elsewhere, NaN for
    a row without a list. ``split`` turns one cell into its terms. One pass of plain dict lookups: 160,861 PadChest
    rows in ~0.2 s, several times faster than pandas' string methods here."""
    import pandas as pd

    column = {v.lower(): j for j, v in enumerate(vocabulary)}
    cells = pd.Series(cells).to_numpy(dtype=object)
    out = np.zeros((len(cells), len(vocabulary)), dtype=np.float32)
    rows, cols = [], []
    get = column.get
    for i, cell in enumerate(cells):
        if cell.__class__ is not str:
            out[i] = np.nan
            continue
        for term in split(cell.lower()):
            j = get(term.strip())
            if j is not None:
                rows.append(i)
                cols.append(j)
    out[rows, cols] = 1.0
    return out


def sex_word(values, mapping: dict[str, str]):
    import pandas as pd

    return pd.Series(values).astype("string").str.strip().str.upper().map(mapping).fillna("").to_numpy(dtype=object)


def _view_columns(values, frontal: dict[str, str], lateral: tuple[str, ...]):
    """The set's view column -> CheXpert's Frontal/Lateral and AP/PA columns (blank: neither)."""
    import pandas as pd

    v = pd.Series(values).astype("string").str.strip().str.upper().fillna("")
    fl = np.where(v.isin([k.upper() for k in frontal]), "Frontal", np.where(v.isin(lateral), "Lateral", ""))
    appa = v.map({k.upper(): x for k, x in frontal.items()}).fillna("").to_numpy(dtype=object)
    return fl.astype(object), appa


def _frame(n: int, **cols):
    import pandas as pd

    df = pd.DataFrame({c: cols.get(c, [""] * n) for c in INDEX_COLUMNS})
    return df


def _label_columns(df, labels) -> np.ndarray:
    """(N, L) float32 of a frame's label columns as numbers (1 / 0 / -1 / NaN); NaN for a label it lacks."""
    import pandas as pd

    own = np.full((len(df), len(labels)), np.nan, dtype=np.float32)
    for j, name in enumerate(labels):
        if name in df.columns:
            own[:, j] = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float32)
    return own


def _own(df, vocabulary, matrix):
    import pandas as pd

    return pd.concat([df, pd.DataFrame(matrix, columns=list(vocabulary), index=df.index)], axis=1)


def _split_lists(root: Path, n_names, names, files: dict[str, str]):
    """The official split from one-name-a-line list files (NIH's train_val_list.txt / test_list.txt)."""
    split = np.full(n_names, "", dtype=object)
    for value, fname in files.items():
        f = Path(root) / fname
        if f.is_file():
            listed = set(f.read_text().split())
            split[np.fromiter((n in listed for n in names), bool, n_names)] = value
    return split


# ----------------------------------------------------------------------------- readers

def read_chexpert(root: Path, ds):
    import pandas as pd

    ddir = find_dataset_dir(root)
    parts = []
    for split, name in (("train", "train.csv"), ("valid", "valid.csv")):
        if (ddir / name).is_file():
            df = read_table(ddir / name, text=["Path"])
            label_values(df[[c for c in ds.labels if c in df.columns]], ddir / name)
            df["Split"] = split
            parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    patient, study = patient_study(df["Path"].astype(str).tolist())
    out = _frame(len(df), Path=df["Path"].astype(str).to_numpy(), Patient=patient, Study=study,
                 **{"Frontal/Lateral": df.get("Frontal/Lateral", pd.Series([""] * len(df))).fillna("").to_numpy(),
                    "AP/PA": df.get("AP/PA", pd.Series([""] * len(df))).fillna("").to_numpy()},
                 Sex=df.get("Sex", pd.Series([""] * len(df))).fillna("").to_numpy(),
                 Age=pd.to_numeric(df.get("Age", pd.Series([np.nan] * len(df))), errors="coerce").to_numpy(),
                 Split=df["Split"].to_numpy())
    return _own(out, ds.labels, _label_columns(df, ds.labels))


def _nih_image_dirs(root: Path) -> tuple[str | None, list[str]]:
    """NIH's images: one ``images/`` folder, or the download's ``images_001/images/`` ... folders."""
    if (root / "images").is_dir():
        return "images", []
    parts = sorted(str(p.relative_to(root)) for p in root.glob("images_[0-9][0-9][0-9]/images") if p.is_dir())
    return (None, parts) if parts else ("images", [])


def read_nih(root: Path, ds):
    import pandas as pd

    f = find_label_file(root, ds)
    df = read_table(f, text=["Image Index", "Finding Labels"],
               usecols=["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                        "Patient Gender", "View Position"])
    check_terms(df["Finding Labels"], f, "Finding Labels", ds.labels, lambda s: s.split("|"))
    names = df["Image Index"].astype(str).to_numpy()
    one, parts = _nih_image_dirs(root)
    if one:
        paths = np.char.add(f"{one}/", names.astype(str)).astype(object)
    else:  # which images_0NN folder holds each file: listed once
        where = {e.name: p for p in parts for e in os.scandir(root / p)}
        paths = np.array([f"{where[n]}/{n}" if n in where else f"{parts[0]}/{n}" for n in names], dtype=object)
    patient = df["Patient ID"].astype(str).to_numpy(dtype=object)
    fl, appa = _view_columns(df["View Position"], {"PA": "PA", "AP": "AP"}, ())
    age = pd.to_numeric(df["Patient Age"].astype(str).str.extract(r"(\d+)")[0], errors="coerce").to_numpy()
    out = _frame(len(df), Path=paths, Patient=patient,
                 Study=np.char.add(np.char.add(patient.astype(str), "/"), df["Follow-up #"].astype(str).to_numpy().astype(str)).astype(object),
                 **{"Frontal/Lateral": fl, "AP/PA": appa}, Sex=sex_word(df["Patient Gender"], {"M": "Male", "F": "Female"}),
                 Age=age, Split=_split_lists(root, len(names), names, {"train": "train_val_list.txt", "test": "test_list.txt"}))
    return _own(out, ds.labels, multi_hot(df["Finding Labels"], ds.labels, lambda s: s.split("|")))


def read_padchest(root: Path, ds):
    import pandas as pd

    f = find_label_file(root, ds)
    cols = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "Projection", "MethodLabel", "Labels"]
    df = read_table(f, usecols=cols, text=["ImageID", "ImageDir", "StudyID", "PatientID", "Labels", "MethodLabel"])
    check_lists(df["Labels"], f, "Labels")
    image_dir = df["ImageDir"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
    flat = not any((root / d).is_dir() for d in image_dir.unique()[:64])
    if flat and (root / "images").is_dir():
        paths = ("images/" + df["ImageID"].astype(str)).to_numpy(dtype=object)
    elif flat and len(df) and (root / str(df["ImageID"].iat[0])).is_file():
        paths = df["ImageID"].astype(str).to_numpy(dtype=object)
    else:
        paths = (image_dir + "/" + df["ImageID"].astype(str)).to_numpy(dtype=object)
    fl, appa = _view_columns(df["Projection"], {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP"}, ("L",))
    year = pd.to_numeric(df["StudyDate_DICOM"].astype(str).str[:4], errors="coerce")
    age = (year - pd.to_numeric(df["PatientBirth"], errors="coerce")).to_numpy()
    out = _frame(len(df), Path=paths, Patient=df["PatientID"].astype(str).to_numpy(dtype=object),
                 Study=df["StudyID"].astype(str).to_numpy(dtype=object), **{"Frontal/Lateral": fl, "AP/PA": appa},
                 Sex=sex_word(df["PatientSex_DICOM"], {"M": "Male", "F": "Female", "O": "Other"}), Age=age)
    out["MethodLabel"] = df["MethodLabel"].fillna("").to_numpy(dtype=object)
    hot = multi_hot(df["Labels"], ds.labels, lambda s: s.strip("[]").replace("'", "").split(","))
    return _own(out, ds.labels, hot)


def mimic_reader(labeler: str):
    def read(root: Path, ds):
        import pandas as pd

        labels_file = find_label_file(root, ds)
        meta = _one(root, "mimic-cxr-2.0.0-metadata.csv*", ds)
        lab = read_table(labels_file, text=["subject_id", "study_id"])
        label_values(lab[[c for c in ds.labels if c in lab.columns]], labels_file)
        twice = lab.duplicated(["subject_id", "study_id"]).to_numpy()
        if twice.any():
            i = int(np.flatnonzero(twice)[0])
            raise ChexcutError(f"{labels_file}: row {i + 2} repeats study {lab['study_id'].iat[i]} of subject "
                               f"{lab['subject_id'].iat[i]}; a study has one row of labels")
        md = read_table(meta, text=["dicom_id", "subject_id", "study_id"], usecols=["dicom_id", "subject_id", "study_id",
                                                                               "ViewPosition"])
        df = md.merge(lab, on=["subject_id", "study_id"], how="left", validate="many_to_one")
        split_file = next(iter(sorted(root.glob("mimic-cxr-2.0.0-split.csv*"))), None)
        split = np.full(len(df), "", dtype=object)
        if split_file is not None:
            sp = read_table(split_file, text=["dicom_id"], usecols=["dicom_id", "split"])
            split = df["dicom_id"].map(sp.set_index("dicom_id")["split"].map(
                {"train": "train", "validate": "valid", "test": "test"})).fillna("").to_numpy(dtype=object)
        sid, study = df["subject_id"].astype(str), df["study_id"].astype(str)
        paths = ("files/p" + sid.str[:2] + "/p" + sid + "/s" + study + "/" + df["dicom_id"].astype(str) + ".jpg")
        fl, appa = _view_columns(df["ViewPosition"], {"PA": "PA", "AP": "AP"}, ("LATERAL", "LL"))
        sex = np.full(len(df), "", dtype=object)
        age = np.full(len(df), np.nan)
        patients = next(iter(sorted(root.glob("patients.csv*"))), None)
        if patients is not None:
            pt = read_table(patients, text=["subject_id"], usecols=["subject_id", "gender", "anchor_age"]).set_index("subject_id")
            sex = sex_word(sid.map(pt["gender"]), {"M": "Male", "F": "Female"})
            age = pd.to_numeric(sid.map(pt["anchor_age"]), errors="coerce").to_numpy()
        out = _frame(len(df), Path=paths.to_numpy(dtype=object), Patient=sid.to_numpy(dtype=object),
                     Study=(sid + "/" + study).to_numpy(dtype=object), **{"Frontal/Lateral": fl, "AP/PA": appa},
                     Sex=sex, Age=age, Split=split)
        return _own(out, ds.labels, _label_columns(df, ds.labels))

    read.__doc__ = f"MIMIC-CXR-JPG with the {labeler} labels"
    return read


def _one(root: Path, pattern: str, ds) -> Path:
    hits = sorted(Path(root).glob(pattern))
    if not hits:
        raise ChexcutError(f"{root}: {ds.title} needs {pattern} beside its labels")
    return hits[0]


def vinbig_reader(rule: str):
    def read(root: Path, ds):

        f = find_label_file(root, ds)
        df = read_table(f, text=["image_id", "class_name", "rad_id"], usecols=["image_id", "class_name", "rad_id"])
        check_terms(df["class_name"], f, "class_name", ds.labels, lambda s: [s])
        readers = df.groupby("image_id", sort=True)["rad_id"].nunique()
        ids = readers.index.to_numpy()
        calls = df.drop_duplicates(["image_id", "rad_id", "class_name"]).groupby(["image_id", "class_name"]).size()
        votes = calls.unstack(fill_value=0).reindex(index=ids, columns=list(ds.labels), fill_value=0).to_numpy()
        need = np.ceil((readers.to_numpy() + 1) / 2) if rule == "majority" else np.ones(len(ids))
        own = (votes >= need[:, None]).astype(np.float32)
        nf = ds.labels.index("No finding")
        own[:, nf] = (own[:, [j for j in range(len(ds.labels)) if j != nf]].sum(axis=1) == 0)
        folder = "train" if (root / "train").is_dir() else "."
        suffix = next((s for s in (".dicom", ".dcm", ".png", ".jpg") if len(ids) and (root / folder / f"{ids[0]}{s}").is_file()),
                      ".dicom")
        paths = np.array([f"{folder}/{i}{suffix}" if folder != "." else f"{i}{suffix}" for i in ids], dtype=object)
        out = _frame(len(ids), Path=paths, Patient=ids.astype(object), Study=ids.astype(object),
                     **{"Frontal/Lateral": np.full(len(ids), "Frontal", dtype=object)},
                     Age=np.full(len(ids), np.nan))
        out["Readers"] = readers.to_numpy()
        return _own(out, ds.labels, own)

    read.__doc__ = f"VinBigData's per-reader boxes -> image labels by the {rule} rule"
    return read


