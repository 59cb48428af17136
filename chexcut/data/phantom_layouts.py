"""The phantom's drawn chests written in the published layouts of other data sets (``chexcut phantom --layout``).

Each layout writes the files its :class:`~chexcut.data.datasets.Dataset` declaration reads, with that set's
own vocabulary: a finding the CheXpert 14 and the set share is written under the set's first own name for it
(the declaration's mapping, read backwards), so ``--data SET:DIR`` reads back the drawn truth for every label
the set annotates. ``nih``: Data_Entry_2017_v2020.csv, ``images/PPPPPPPP_FFF.png``, train_val_list.txt /
test_list.txt. ``padchest``: the 160K CSV (list-string labels, Projection, MethodLabel) and 16-bit PNGs under
``ImageDir/``. ``vinbigdata``: train.csv with three readers an image and DICOMs under ``train/`` (MONOCHROME1
and MONOCHROME2, 12-bit, some with a window and a RescaleSlope). ``mimic``: MIMIC-CXR-JPG's three csv.gz
files, MIMIC-IV's patients.csv.gz and ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from chexcut.choices import DEFAULT_IMAGE_SIZE
from chexcut.data.phantom import DEFAULT_N
from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS

LAYOUTS = ("chexpert", "nih", "padchest", "vinbigdata", "mimic")


def own_values(lab: dict[str, int], name: str) -> dict[str, int]:
    """A drawn study's CheXpert findings in data set ``name``'s own vocabulary (its mapping, backwards)."""
    from chexcut.data.datasets import get

    ds = get(name)
    out = {label: 0 for label in ds.labels}
    for c, sources in ds.mapping.items():
        if sources and lab.get(c):
            out[sources[0]] = 1
    return out


def _studies(n: int, rng: np.random.Generator, size: int):
    """(patient number, study number, CheXpert findings, sex, age, pixels) for ``n`` frontal images."""
    from chexcut.data.phantom import draw_frontal, sample_labels

    made, patient = 0, 0
    while made < n:
        patient += 1
        for study in range(int(rng.integers(1, 3))):
            if made >= n:
                break
            lab = sample_labels(rng)
            yield patient, study, lab, str(rng.choice(["M", "F"])), int(rng.integers(18, 90)), draw_frontal(lab, size, rng)
            made += 1


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _nih(out: Path, n: int, size: int, rng, progress) -> Path:
    from PIL import Image

    (out / "images").mkdir(parents=True)
    rows, by_patient = [], {}
    for i, (p, s, lab, sex, age, px) in enumerate(_studies(n, rng, size), start=1):
        name = f"{p:08d}_{s:03d}.png"
        Image.fromarray(px, mode="L").save(out / "images" / name)
        own = own_values(lab, "nih")
        findings = "|".join(k for k, v in own.items() if v and k != "No Finding") or "No Finding"
        rows.append([name, findings, s, p, age, sex, str(rng.choice(["PA", "AP"])), size, size, 0.143, 0.143])
        by_patient.setdefault(p, []).append(name)
        progress and progress(i, n)
    _write_csv(out / "Data_Entry_2017_v2020.csv", ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
               "Patient Age", "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
               "OriginalImagePixelSpacing[x", "y]"], rows)
    patients = sorted(by_patient)
    test = set(patients[int(len(patients) * 0.8):])
    for fname, chosen in (("train_val_list.txt", [p for p in patients if p not in test]), ("test_list.txt", sorted(test))):
        (out / fname).write_text("".join(f"{name}\n" for p in chosen for name in by_patient[p]))
    return out


def _padchest(out: Path, n: int, size: int, rng, progress) -> Path:
    from PIL import Image

    (out / "0").mkdir(parents=True)
    rows = []
    for i, (p, s, lab, sex, age, px) in enumerate(_studies(n, rng, size), start=1):
        image_id = f"2168401113{p:06d}{s:02d}_00-{i:03d}-000.png"
        # 12-bit data in a 16-bit PNG, as PadChest's are
        Image.fromarray((px.astype(np.uint16) * 16).astype(np.uint16)).save(out / "0" / image_id)
        own = own_values(lab, "padchest")
        terms = [k for k, v in own.items() if v] or ["normal"]
        year = 2010 + int(rng.integers(0, 8))
        rows.append([i - 1, image_id, 0, f"{year}0315", f"study{p}_{s}", f"patient{p}", float(year - age), sex,
                     "POSTEROANTERIOR", str(rng.choice(["PA", "AP", "AP_horizontal"])),
                     str(rng.choice(["Physician", "RNN_model"])), str(terms)])
        progress and progress(i, n)
    _write_csv(out / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
               ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
                "ViewPosition_DICOM", "Projection", "MethodLabel", "Labels"], rows)
    return out


def write_dicom(path: Path, pixels: np.ndarray, kind: int) -> None:
    """``pixels`` (uint8) as a 12-bit DX DICOM that decodes back to them: kind 0 MONOCHROME2; 1 MONOCHROME1
    (stored inverted); 2 MONOCHROME2 with RescaleSlope 2, RescaleIntercept -4095 and a window over the output
    range."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    stored = np.round(pixels.astype(np.float64) / 255 * 4095).astype(np.uint16)
    if kind == 1:
        stored = (4095 - stored).astype(np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME1" if kind == 1 else "MONOCHROME2", 12)
    if kind == 2:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -4095
        ds.WindowCenter, ds.WindowWidth = 0.5, 8190  # the whole output range -4095..4095
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _vinbigdata(out: Path, n: int, size: int, rng, progress) -> Path:
    rows = []
    classes = {name: i for i, name in enumerate(("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
               "Consolidation", "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
               "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding"))}
    for i, (p, s, lab, _sex, _age, px) in enumerate(_studies(n, rng, size), start=1):
        image_id = f"{p:016x}{s:016x}"
        write_dicom(out / "train" / f"{image_id}.dicom", px, i % 3)
        found = [k for k, v in own_values(lab, "vinbigdata").items() if v and k != "No finding"]
        for reader in rng.choice(17, size=3, replace=False):
            seen = [k for k in found if rng.random() < 0.9]  # each reader misses a finding one time in ten
            for k in seen or ["No finding"]:
                box = ["", "", "", ""] if k == "No finding" else [10, 10, size - 10, size - 10]
                rows.append([image_id, k, classes[k], f"R{reader + 1}", *box])
        progress and progress(i, n)
    _write_csv(out / "train.csv", ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"],
               rows)
    return out


def _mimic(out: Path, n: int, size: int, rng, progress) -> Path:
    from PIL import Image

    labels, meta, split, patients = [], [], [], {}
    for i, (p, s, lab, sex, age, px) in enumerate(_studies(n, rng, size), start=1):
        subject, study, dicom = 10000000 + p, 50000000 + p * 10 + s, f"{i:08x}-{p:08x}"
        path = out / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, mode="L").save(path, quality=90)
        labels.append([subject, study, *("1.0" if lab[c] else ("" if rng.random() < 0.5 else "0.0")
                                         for c in CHEXPERT_LABELS)])
        meta.append([dicom, subject, study, "CHEST (PA AND LAT)", str(rng.choice(["PA", "AP"])), size, size])
        patients[subject] = [subject, sex, age]
        progress and progress(i, n)
    test = {s for s in patients if s % 5 == 0}
    for d, subject, _study, *_ in meta:
        split.append([d, _study, subject, "test" if subject in test else ("validate" if subject % 5 == 1 else "train")])
    _write_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], labels)
    _write_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id",
               "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], meta)
    _write_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split)
    _write_csv(out / "patients.csv.gz", ["subject_id", "gender", "anchor_age"], list(patients.values()))
    return out


WRITERS = {"nih": _nih, "padchest": _padchest, "vinbigdata": _vinbigdata, "mimic": _mimic}


def make_layout_phantom(out, layout: str, n: int = DEFAULT_N, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                        progress=None) -> Path:
    """Write ``n`` drawn frontal images in ``layout``'s published layout under ``out``; returns ``out``."""
    if layout not in WRITERS:
        raise ChexcutError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if n < 20:
        raise ChexcutError(f"--n must be at least 20 (got {n})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ChexcutError(f"{out} is not empty; choose an empty folder for the {layout} phantom")
    out.mkdir(parents=True, exist_ok=True)
    return WRITERS[layout](out, n, image_size, np.random.default_rng(seed), progress)
