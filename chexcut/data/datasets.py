"""Every public chest X-ray data set as it is published, declared once, read into one label space.

A :class:`Dataset` says where a set keeps its labels, how its rows become image paths, patients and
studies, which column holds the view, sex and age, its official split, its own label vocabulary and
how that vocabulary maps onto the CheXpert 14 (``mapping``: CheXpert label -> the set's labels that
name that finding, synonyms and subtypes; any positive makes it positive, all negative make it
negative). A CheXpert label a set never annotates is *not annotated*: blank in every row, never a
negative, never scored.

Each declaration has one reader that turns the published files into the set's own frame; one generic
step (:func:`harmonise`) turns that into the *index*: the columns of :data:`INDEX_COLUMNS`, the 14
CheXpert labels (1 / 0 / -1 / blank, ``not annotated`` in the CSV), then the set's own labels and
extra columns (PadChest's ``MethodLabel``). The index is itself a CheXpert-layout CSV (``--csv``
reads it back). Nothing here decodes an image or imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from chexcut.data.readers import (  # noqa: F401 (PREFIXES, find_dataset_dir, patient_study: re-exported)
    INDEX_COLUMNS,
    PREFIXES,
    find_dataset_dir,
    find_label_file,
    label_file_in,
    mimic_reader,
    patient_study,
    read_chexpert,
    read_nih,
    read_padchest,
    read_table,
    vinbig_reader,
)
from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS

NOT_ANNOTATED = "not annotated"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Dataset:
    """One published data set. ``read(root, dataset)`` returns its own frame: the ``INDEX_COLUMNS`` (Split blank
    where no official split is published) and one float column per own label (1 / 0 / -1 / NaN)."""

    name: str
    title: str
    reference: str
    label_files: tuple[str, ...]  # glob patterns in the data folder; the first that matches is read
    images: str  # how a row becomes an image path
    image_format: str
    views: str
    demographics: str
    official_split: str | None
    labels: tuple[str, ...]  # the set's own vocabulary, as its files spell it
    mapping: dict[str, tuple[str, ...]]  # CheXpert label -> own labels naming that finding
    read: Callable = field(repr=False, compare=False, default=None)
    extra: tuple[str, ...] = ()  # further columns kept in the index (filter or group by them)
    header: tuple[str, ...] = ()  # columns the label file must have (tells VinBigData's train.csv from CheXpert's)
    notes: str = ""

    @property
    def not_annotated(self) -> tuple[str, ...]:
        return tuple(c for c in CHEXPERT_LABELS if not self.mapping.get(c))

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "reference": self.reference,
                "label_files": list(self.label_files), "images": self.images, "image_format": self.image_format,
                "views": self.views, "demographics": self.demographics, "official_split": self.official_split,
                "mapping": {c: list(self.mapping.get(c, ())) for c in CHEXPERT_LABELS},
                "not_annotated": list(self.not_annotated), "own_labels": list(self.labels),
                "extra_columns": list(self.extra), "notes": self.notes}


# ----------------------------------------------------------------------------- the declarations

_CHEXPERT_SELF = {c: (c,) for c in CHEXPERT_LABELS}

NIH_LABELS = ("No Finding", "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
PADCHEST_MAPPING = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("mediastinal enlargement", "superior mediastinal enlargement"),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("infiltrates", "alveolar pattern", "increased density", "ground glass pattern"),
    "Lung Lesion": ("nodule", "multiple nodules", "pulmonary mass", "mass", "lung metastasis"),
    "Edema": ("pulmonary edema",),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "atelectasis basal", "total atelectasis", "round atelectasis"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Pleural Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion"),
    "Pleural Other": ("pleural thickening", "apical pleural thickening", "calcified pleural thickening",
                      "pleural plaques", "calcified pleural plaques"),
    "Fracture": ("fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
                 "vertebral fracture"),
    "Support Devices": ("pacemaker", "dual chamber device", "single chamber device", "electrical device", "NSG tube",
                        "endotracheal tube", "tracheostomy tube", "chest drain tube", "catheter",
                        "central venous catheter", "central venous catheter via jugular vein",
                        "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
                        "reservoir central venous catheter"),
}
PADCHEST_OWN = ("COPD signs", "aortic elongation", "scoliosis", "kyphosis", "interstitial pattern", "emphysema",
                "hiatal hernia", "bronchiectasis", "calcified granuloma", "granuloma", "tuberculosis",
                "tuberculosis sequelae", "pulmonary fibrosis", "costophrenic angle blunting", "air trapping",
                "hilar enlargement", "unchanged", "suboptimal study", "exclude")
VINBIG_LABELS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                 "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                 "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding")
_VINBIG_MAPPING = {"No Finding": ("No finding",), "Cardiomegaly": ("Cardiomegaly",), "Lung Opacity": ("Lung Opacity",),
                   "Lung Lesion": ("Nodule/Mass",), "Consolidation": ("Consolidation",), "Atelectasis": ("Atelectasis",),
                   "Pneumothorax": ("Pneumothorax",), "Pleural Effusion": ("Pleural effusion",),
                   "Pleural Other": ("Pleural thickening",)}


def _vinbig(name: str, rule: str, words: str) -> Dataset:
    return Dataset(
        name=name, title=f"VinDr-CXR / VinBigData ({rule} of readers)",
        reference="Nguyen et al., Sci Data 2022; Kaggle VinBigData Chest X-ray Abnormalities Detection",
        label_files=("train.csv", "train.csv.gz", "vinbigdata-train.csv*"), header=("image_id", "class_name", "rad_id"),
        images="train/IMAGE_ID.dicom (or .dcm/.png/.jpg)", image_format="DICOM",
        views="frontal (PA) only", demographics="none in the label file (in the DICOM headers)",
        official_split=None, labels=VINBIG_LABELS, mapping=_VINBIG_MAPPING, extra=("Readers",),
        read=vinbig_reader(rule),
        notes=f"3 of 17 radiologists read each image; a finding is positive when {words}; No Finding when no "
              f"finding is positive by that rule. Images are patients (no patient id is published).")


def _mimic(name: str, labeler: str, file: str) -> Dataset:
    """MIMIC-CXR-JPG with one of its two published label files (the same images, split and metadata)."""
    return Dataset(
        name=name, title=f"MIMIC-CXR-JPG 2.x ({labeler})", reference="Johnson et al., PhysioNet 2019",
        label_files=(f"mimic-cxr-2.0.0-{file}.csv*",), header=("subject_id", "study_id"),
        images="files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg", image_format="JPEG",
        views="metadata ViewPosition (PA, AP, LATERAL, LL, ...)",
        demographics="gender, anchor_age from MIMIC-IV patients.csv(.gz) in the folder, when given",
        official_split="mimic-cxr-2.0.0-split.csv.gz (train / validate / test)", labels=CHEXPERT_LABELS,
        mapping=_CHEXPERT_SELF, read=mimic_reader(labeler),
        notes="Labels are per study; every image of the study carries them.")


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(name="chexpert", title="CheXpert (small or full)", reference="Irvin et al., AAAI 2019",
            label_files=("train.csv", "valid.csv", "CheXpert-v1.0*/train.csv", "CheXpert-v1.0*/valid.csv"),
            header=("Path",), images="Path column (CheXpert-v1.0[-small]/train/patientP/studyS/viewV_frontal.jpg)", image_format="JPEG",
            views="Frontal/Lateral, AP/PA", demographics="Sex, Age", official_split="train.csv / valid.csv",
            labels=CHEXPERT_LABELS, mapping=_CHEXPERT_SELF, read=read_chexpert,
            notes="1 positive, 0 negative, -1 uncertain, blank not mentioned (the CheXpert labeler)."),
    _mimic("mimic", "CheXpert labeler", "chexpert"),
    _mimic("mimic-negbio", "NegBio labeler", "negbio"),
    Dataset(name="nih", title="NIH ChestX-ray14", reference="Wang et al., CVPR 2017 (Data_Entry_2017_v2020)",
            label_files=("Data_Entry_2017_v2020.csv*", "Data_Entry_2017.csv*"), header=("Image Index", "Finding Labels"),
            images="images/NAME.png or images_0NN/images/NAME.png", image_format="PNG (8-bit)",
            views="View Position (PA, AP)", demographics="Patient Gender, Patient Age",
            official_split="train_val_list.txt / test_list.txt (patient-disjoint), when in the folder",
            labels=NIH_LABELS, read=read_nih,
            mapping={"No Finding": ("No Finding",), "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",),
                     "Pleural Effusion": ("Effusion",), "Pneumonia": ("Pneumonia",), "Pneumothorax": ("Pneumothorax",),
                     "Consolidation": ("Consolidation",), "Edema": ("Edema",), "Lung Lesion": ("Mass", "Nodule"),
                     "Pleural Other": ("Pleural_Thickening",)},
            notes="Text-mined labels, 1 or 0 (no uncertain). Study = patient/follow-up number."),
    Dataset(name="padchest", title="PadChest", reference="Bustos et al., Med Image Anal 2020",
            label_files=("PADCHEST_chest_x_ray_images_labels_160K*.csv*", "PADCHEST*.csv*"), header=("ImageID", "Labels"),
            images="ImageDir/ImageID (16-bit PNG)", image_format="PNG (16-bit)",
            views="Projection (PA, L, AP, AP_horizontal; COSTAL, EXCLUDE, UNK are neither frontal nor lateral)",
            demographics="PatientSex_DICOM; age = study year - PatientBirth", official_split=None,
            labels=tuple(dict.fromkeys(t for ts in PADCHEST_MAPPING.values() for t in ts)) + PADCHEST_OWN,
            mapping=PADCHEST_MAPPING, read=read_padchest, extra=("MethodLabel",),
            notes="Labels as list strings; MethodLabel says Physician (27%) or RNN_model. A row with no Labels is "
                  "blank in every label."),
    _vinbig("vinbigdata", "majority", "at least 2 of its 3 readers (a majority) marked it"),
    _vinbig("vinbigdata-any", "any", "any of its readers marked it"),
)}


def get(name: str) -> Dataset:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ChexcutError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None


# ----------------------------------------------------------------------------- harmonising

def read_label_map(path) -> dict[str, tuple[str, ...]]:
    """A user's mapping file: a CSV with columns ``chexpert`` and ``source`` (one pair a row; a CheXpert label
    given with a blank source is declared not annotated). It replaces the declaration's mapping for the
    CheXpert labels it names and leaves the others as declared."""
    df = read_table(Path(path), text=True)
    if not {"chexpert", "source"} <= set(df.columns):
        raise ChexcutError(f"{path}: a label map needs the columns chexpert and source (has {', '.join(df.columns)})")
    out: dict[str, list[str]] = {}
    for i, (c, s) in enumerate(zip(df["chexpert"].fillna(""), df["source"].fillna("")), start=2):
        c, s = str(c).strip(), str(s).strip()
        if c not in CHEXPERT_LABELS:
            raise ChexcutError(f"{path}: row {i}: {c!r} is not one of the 14 CheXpert labels")
        out.setdefault(c, [])
        if s:
            out[c].append(s)
    return {c: tuple(v) for c, v in out.items()}


def harmonise(own, ds: Dataset, label_map: dict | None = None):
    """The set's own frame -> the index: INDEX_COLUMNS, the 14 CheXpert labels (NaN where not annotated), the
    set's own labels not named like a CheXpert label, its extra columns. Returns (frame, not_annotated)."""
    import pandas as pd

    mapping = {**ds.mapping, **(label_map or {})}
    unknown = sorted({s for srcs in (label_map or {}).values() for s in srcs} - set(ds.labels))
    if unknown:
        raise ChexcutError(f"the label map names {', '.join(map(repr, unknown))}, which {ds.title} does not have "
                           f"(its labels: {', '.join(ds.labels)})")
    n = len(own)
    cols = {}
    for c in CHEXPERT_LABELS:
        src = mapping.get(c, ())
        if not src:
            cols[c] = np.full(n, np.nan, dtype=np.float32)
            continue
        v = own[list(src)].to_numpy(dtype=np.float32)
        any_pos = (v == 1).any(axis=1)
        any_unc = (v == -1).any(axis=1)
        all_blank = np.isnan(v).all(axis=1)
        cols[c] = np.where(any_pos, 1.0, np.where(any_unc, -1.0, np.where(all_blank, np.nan, 0.0))).astype(np.float32)
    not_annotated = tuple(c for c in CHEXPERT_LABELS if not mapping.get(c))
    own_cols = [x for x in ds.labels if x not in CHEXPERT_LABELS and x not in INDEX_COLUMNS]
    frame = pd.concat([own[list(INDEX_COLUMNS)].reset_index(drop=True), pd.DataFrame(cols),
                       own[own_cols + list(ds.extra)].reset_index(drop=True)], axis=1)
    return frame, not_annotated


#: Declared sets that are one set of images under two label files: one id space for their patients.
_ID_SPACE = {"mimic-negbio": "mimic", "vinbigdata-any": "vinbigdata"}


def id_space(dataset: str | None) -> str:
    """Whose patient ids a set's rows carry: two sets with one id space may hold one patient under one id (CheXpert
    folders, a set under its two label files); NIH patient 12 and CheXpert's patient00012 are different people."""
    name = dataset or "chexpert"
    return _ID_SPACE.get(name, name)


def patients_comparable(dataset_a: str | None, paths_a, dataset_b: str | None, paths_b) -> bool:
    """Whether two sets' patient ids name the same people, so sharing one is leakage: two published sets of one id
    space (NIH and NIH under new file names; MIMIC under its two label files), or two copies of CheXpert itself
    (its own ``CheXpert-v1.0[-small]/`` paths: the small and the full download). Two other folders in the CheXpert
    layout (another hospital's export, a phantom) number their patients independently: never compared."""
    a, b = id_space(dataset_a), id_space(dataset_b)
    if a != b:
        return False
    if a != "chexpert":
        return True

    def own(paths) -> bool:
        paths = list(paths)
        return bool(paths) and all(str(p).startswith(PREFIXES) for p in paths[:1000])

    return own(paths_a) and own(paths_b)


def detect(root: Path) -> Dataset | None:
    """The declared set whose label file is in ``root`` (CheXpert first), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    for ds in DATASETS.values():
        if ds.name in ("mimic-negbio", "vinbigdata-any"):
            continue  # variants: chosen by name only
        if label_file_in(root, ds)[0] is not None:
            return ds
    return None


def _near_miss(root: Path) -> str | None:
    """Why a folder holding a file named like a set's label file is no set (a renamed column, another separator),
    when it holds no CheXpert train.csv/valid.csv either: said, rather than "no train.csv"."""
    try:
        find_dataset_dir(root)
        return None
    except ChexcutError:
        pass
    for ds in DATASETS.values():
        hit, why = label_file_in(root, ds)
        if hit is None and why:
            return f"{root}: not read as {ds.title}: {why}"
    return None


def published(data) -> str | None:
    """The published set (other than CheXpert's own layout) whose label file ``data`` holds, or None."""
    found = detect(data)
    return found.name if found is not None and found.name != "chexpert" else None


def split_ref(data) -> tuple[Path, str | None]:
    """``nih:/data/nih`` -> (Path('/data/nih'), 'nih'); a plain folder -> (folder, None). An existing path that
    happens to contain a colon is a path."""
    s = str(data)
    name, sep, rest = s.partition(":")
    if sep and name.lower() in DATASETS and rest:
        if not Path(s).exists():
            return Path(rest), name.lower()
        if Path(rest).is_dir():  # both readings exist: never pick one without a word
            raise ChexcutError(f"--data {s} names both the folder {s!r} and the {name.lower()} set in {rest}; write "
                               f"./{s} for the folder")
    if sep and re.fullmatch(r"[a-z][a-z0-9-]*", name) and rest and not Path(s).exists() and not Path(name).exists():
        get(name)  # an unknown set name: one line listing the known ones
    return Path(s), None


def resolve(data, dataset: str | None = None, csv=None) -> tuple[Path, str | None]:
    """``--data`` under the options' ``dataset`` -> (the folder, the published set or None): ``SET:DIR`` names the
    set, else the options do, else the label file in the folder does; a ``--csv`` table is no published set. The one
    rule every command applies (load_split, the fingerprint, the CLI's options, subgroup sources, the card)."""
    folder, named = split_ref(data)
    if named and dataset not in (None, named):
        raise ChexcutError(f"--data {named}:{folder} names another data set than the options ({dataset})")
    name = named or dataset
    if name is None and not csv:
        name = published(folder)
        why = _near_miss(folder) if name is None else None
        if why:
            raise ChexcutError(why)
    return folder, name


_INDEX_CACHE: dict = {}


def read_index(root: Path, name: str, label_map: str | None = None):
    """(index frame, not_annotated, label file) of data set ``name`` in ``root``; cached per process on the label
    files' sizes and times (evaluate reads a set up to three times)."""
    ds = get(name)
    root = Path(root)
    if not root.is_dir():
        raise ChexcutError(f"data folder {root} does not exist")
    label_file = find_label_file(root, ds)
    stamp = []
    for p in sorted(root.glob("*")):
        if p.is_file() and (p.suffix in (".csv", ".gz", ".txt", ".zip", ".bz2", ".xz")):
            st = p.stat()
            stamp.append((p.name, st.st_size, st.st_mtime_ns))
    if label_map:
        st = Path(label_map).stat() if Path(label_map).is_file() else None
        stamp.append((str(label_map), st and st.st_size, st and st.st_mtime_ns))
    key = (str(root.resolve()), name, tuple(stamp))
    if key not in _INDEX_CACHE:
        if label_map and not Path(label_map).is_file():
            raise ChexcutError(f"label map not found: {label_map}")
        frame, not_annotated = harmonise(ds.read(root, ds), ds, read_label_map(label_map) if label_map else None)
        twice = frame["Path"].duplicated()
        if twice.any():
            first = int(np.flatnonzero(twice.to_numpy())[0])
            raise ChexcutError(f"{label_file}: {int(twice.sum())} rows repeat an image (first: "
                               f"{frame['Path'].iat[first]}); each image must appear once")
        _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = (frame, not_annotated, label_file)
    return _INDEX_CACHE[key]


def index_csv_frame(frame, not_annotated: tuple[str, ...], ds: Dataset, all_labels: bool = False):
    """The index as written: labels 1/0/-1/blank (integers), ``not annotated`` in every cell of a label the set
    lacks; of the set's own labels, those no CheXpert label is mapped from (all of them with ``all_labels``)."""
    used = {s for srcs in ds.mapping.values() for s in srcs}
    keep = [c for c in frame.columns if all_labels or c not in used or c in INDEX_COLUMNS or c in CHEXPERT_LABELS]
    out = frame[keep].copy()
    for c in keep:
        if c in CHEXPERT_LABELS and c in not_annotated:
            out[c] = NOT_ANNOTATED
        elif c not in INDEX_COLUMNS and c not in ds.extra and out[c].dtype.kind == "f":
            out[c] = out[c].astype("Int8")
    return out


def index_summary(frame, not_annotated: tuple[str, ...], ds: Dataset, label_file: Path, missing: list[str]) -> dict:
    """What ``datasets index`` says about an index: counts as the files hold them."""
    def counts(col):
        return {str(k): int(v) for k, v in frame[col].replace("", "(blank)").value_counts().items()}

    labels = {}
    for c in CHEXPERT_LABELS:
        if c in not_annotated:
            labels[c] = NOT_ANNOTATED
        else:
            v = frame[c].to_numpy()
            labels[c] = {"positive": int((v == 1).sum()), "negative": int((v == 0).sum()),
                         "uncertain": int((v == -1).sum()), "blank": int(np.isnan(v).sum())}
    return {"dataset": ds.name, "title": ds.title, "label_file": str(label_file), "images": len(frame),
            "patients": int(frame["Patient"].nunique()), "studies": int(frame["Study"].nunique()),
            "views": counts("Frontal/Lateral"), "ap_pa": counts("AP/PA"), "sex": counts("Sex"),
            "split": counts("Split"), "labels": labels, "not_annotated": list(not_annotated),
            "missing_images": len(missing), "missing_first": missing[:5]}


def missing_files(root: Path, paths) -> list[str]:
    """The image paths (relative to ``root``) with no file, found by listing each folder once."""
    by_dir: dict[str, set[str]] = {}
    missing = []
    for p in paths:
        d, _, name = str(p).rpartition("/")
        have = by_dir.get(d)
        if have is None:
            try:
                have = by_dir[d] = {e.name for e in os.scandir(Path(root) / d)} if d else set(os.listdir(root))
            except OSError:
                have = by_dir[d] = set()
        if name not in have:
            missing.append(str(p))
    return missing


def write_index(ref: str, out, label_map: str | None = None, all_labels: bool = False) -> tuple[dict, list[str]]:
    """``chexcut datasets index``: the harmonised index of the set ``ref`` names (``SET:DIR``, or a folder whose
    label file names its set) written to ``out`` (``-``: stdout), no image decoded. Returns (the summary, the
    missing images). ``out`` is checked first: never one of the files the set's folder holds (label files, lists,
    metadata, images; a new file there is fine)."""
    import sys

    from chexcut.fileio import atomic_path, check_output_file

    root, name = resolve(ref)
    name = name or ("chexpert" if root.is_dir() else None)
    if name is None:
        raise ChexcutError(f"data folder {root} does not exist")
    label_map = str(Path(label_map).resolve()) if label_map else None
    frame, not_annotated, label_file = read_index(root, name, label_map)
    if str(out) != "-":
        check_output_file(Path(out), "index", inputs=[label_file] + ([Path(label_map)] if label_map else []),
                          protected=[root])
    ds = get(name)
    missing = missing_files(root, frame["Path"].tolist())
    table = index_csv_frame(frame, not_annotated, ds, all_labels)
    if str(out) == "-":
        table.to_csv(sys.stdout, index=False)
    else:
        with atomic_path(Path(out)) as tmp:
            table.to_csv(tmp, index=False)
    return {**index_summary(frame, not_annotated, ds, label_file, missing), "index": str(out)}, missing
