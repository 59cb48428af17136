"""A synthetic dataset in the exact CheXpert-v1.0-small layout, with findings a CNN can learn.

Every frontal image is a drawn chest: body, two lung fields with vessel markings, spine,
mediastinum and heart. Each observation changes the drawing the way it changes a radiograph:

    Cardiomegaly                 a wider cardiac silhouette
    Enlarged Cardiomediastinum   a wider upper mediastinum
    Pleural Effusion             a basal opacity with a meniscus, blunting one costophrenic angle
    Pneumothorax                 an apical region without lung markings, darker
    Edema                        bilateral perihilar haze
    Lung Opacity                 patchy opacities
    Consolidation                one dense lobar opacity
    Pneumonia                    a smaller dense opacity with a softer edge
    Atelectasis                  a plate-like band in a lower zone
    Lung Lesion                  a round nodule
    Pleural Other                a thickened lateral pleural rim
    Fracture                     a broken bright rib segment
    Support Devices              bright tubes and a round device
    No Finding                   none of the above (by construction)

Labels co-occur as in CheXpert (opacity with consolidation/pneumonia/edema/atelectasis; no finding
excludes the others). The training CSV has uncertain (-1) and blank cells; valid.csv has only 0/1,
like CheXpert's. Some studies have a second, lateral view.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from chexcut.choices import DEFAULT_IMAGE_SIZE
from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS

PREVALENCE = {
    "Enlarged Cardiomediastinum": 0.12, "Cardiomegaly": 0.2, "Lung Lesion": 0.1, "Edema": 0.22,
    "Consolidation": 0.14, "Pneumonia": 0.1, "Atelectasis": 0.2, "Pneumothorax": 0.12,
    "Pleural Effusion": 0.3, "Pleural Other": 0.06, "Fracture": 0.06, "Support Devices": 0.35,
}
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def sample_labels(rng: np.random.Generator) -> dict[str, int]:
    """One study's true findings (0/1), with CheXpert-like co-occurrence."""
    if rng.random() < 0.12:
        lab = {k: 0 for k in CHEXPERT_LABELS}
        lab["No Finding"] = 1
        return lab
    lab = {k: int(rng.random() < p) for k, p in PREVALENCE.items()}
    if lab["Cardiomegaly"] and rng.random() < 0.4:
        lab["Enlarged Cardiomediastinum"] = 1
    if lab["Edema"] and rng.random() < 0.4:
        lab["Pleural Effusion"] = 1
    parenchymal = lab["Edema"] or lab["Consolidation"] or lab["Pneumonia"] or lab["Atelectasis"]
    lab["Lung Opacity"] = int(parenchymal or rng.random() < 0.1)
    lab["No Finding"] = int(not any(v for k, v in lab.items() if k != "No Finding"))
    return lab


def _blur(a: np.ndarray, passes: int = 2) -> np.ndarray:
    for _ in range(passes):
        a = (a + np.roll(a, 1, 0) + np.roll(a, -1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 5
    return a


def _draw_findings(img, lab, x, y, lungs, lung_any, rng, jit, masks: dict):
    """The findings' opacities on top of the anatomy (in a fixed order: the random stream is part of the data)."""
    def blob(cx, cy, rx, ry, val, soft=False):
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        return np.clip(1.2 - d, 0, 1) * val if soft else (d < 1) * val

    lung_i = rng.integers(2)
    lung, cx = lungs[lung_i]
    if lab["Edema"]:
        for _, lcx in lungs:
            haze = blob(0.5 + (lcx - 0.5) * 0.7, 0.5, 0.16, 0.2, 0.22, soft=True) * lung_any
            img += haze
            masks["Edema"] = masks.get("Edema", False) | (haze > 0)
    if lab["Lung Opacity"]:
        for _ in range(3):
            l2, c2 = lungs[rng.integers(2)]
            patch = blob(c2 + jit(0.05), 0.45 + jit(0.1), 0.04, 0.04, 0.14, soft=True) * l2
            img += patch
            masks["Lung Opacity"] = masks.get("Lung Opacity", False) | (patch > 0)
    if lab["Consolidation"]:
        dense = blob(cx + jit(0.02), 0.58 + jit(0.03), 0.09, 0.1, 0.35) * lung
        img += dense
        masks["Consolidation"] = dense > 0
    if lab["Pneumonia"]:
        l2, c2 = lungs[1 - lung_i]
        soft = blob(c2 + jit(0.02), 0.4 + jit(0.04), 0.06, 0.06, 0.3, soft=True) * l2
        img += soft
        masks["Pneumonia"] = soft > 0
    if lab["Atelectasis"]:
        band = (np.abs((y - 0.64) - 0.25 * (x - cx)) < 0.015) & (np.abs(x - cx) < 0.1)
        img += band * 0.45 * lung
        masks["Atelectasis"] = band & lung
    if lab["Lung Lesion"]:
        l2, c2 = lungs[rng.integers(2)]
        nodule = blob(c2 + jit(0.04), 0.35 + jit(0.06), 0.025, 0.025, 0.45) * l2
        img += nodule
        masks["Lung Lesion"] = nodule > 0
    if lab["Pneumothorax"]:
        l2, c2 = lungs[rng.integers(2)]
        apex = l2 & (y < 0.36) & (np.abs(x - c2) > 0.02)
        img[apex] = 0.04
        masks["Pneumothorax"] = apex
    _draw_pleura_bone_devices(img, lab, x, y, lungs, rng, jit, masks)
    return img


def _draw_pleura_bone_devices(img, lab, x, y, lungs, rng, jit, masks: dict) -> None:
    """Effusion, pleural thickening, a rib fracture, tube and device: after the lung findings (same stream)."""
    def blob(cx, cy, rx, ry, val):
        return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1) * val

    if lab["Pleural Effusion"]:
        l2, c2 = lungs[rng.integers(2)]
        level = 0.64 + jit(0.02)
        meniscus = y > level - 0.06 * ((x - c2) / 0.14) ** 2 * np.sign(x - c2) * np.sign(c2 - 0.5)
        img[l2 & meniscus] = 0.62
        masks["Pleural Effusion"] = l2 & meniscus
    if lab["Pleural Other"]:
        l2, c2 = lungs[rng.integers(2)]
        rim = ((x - c2) / 0.14) ** 2 + ((y - 0.47) / 0.3) ** 2
        img += ((rim > 0.75) & (rim < 1.0)) * 0.3 * l2
        masks["Pleural Other"] = (rim > 0.75) & (rim < 1.0) & l2
    if lab["Fracture"]:
        side = rng.choice([-1, 1])
        rx0, ry0 = 0.5 + side * 0.36, 0.3 + rng.uniform(0, 0.3)
        seg = (np.abs(y - ry0 - 0.3 * (x - rx0)) < 0.008) & (np.abs(x - rx0) < 0.06) & (np.abs(x - rx0) > 0.012)
        img += seg * 0.6
        masks["Fracture"] = seg
    if lab["Support Devices"]:
        tube = (np.abs(x - (0.47 + 0.02 * np.sin(y * 9))) < 0.006) & (y < 0.7)
        img[tube] = 0.97
        device = blob(0.25 + jit(0.02), 0.2, 0.03, 0.03, 0.5)
        img += device
        masks["Support Devices"] = tube | (device > 0)


def draw_frontal(lab: dict[str, int], size: int, rng: np.random.Generator, masks: dict | None = None) -> np.ndarray:
    """A (size, size) uint8 frontal chest drawing showing the findings in ``lab``.

    With ``masks`` (a dict), each drawn finding's region is stored there as a boolean (size, size) array
    (the drawing, and the random numbers it draws, are the same with or without)."""
    masks = {} if masks is None else masks
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jit = lambda s=0.02: float(rng.normal(0, s))  # noqa: E731
    img = np.full((size, size), 0.08, np.float32)
    body = ((x - 0.5) / (0.46 + jit())) ** 2 + ((y - 0.55) / 0.55) ** 2 < 1
    img[body] = 0.55
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * (0.19 + jit(0.01))
        lung = ((x - cx) / (0.14 + jit(0.01))) ** 2 + ((y - 0.47) / (0.3 + jit(0.01))) ** 2 < 1
        lungs.append((lung, cx))
        img[lung] = 0.22
    lung_any = lungs[0][0] | lungs[1][0]
    # vessel markings: fine bright streaks radiating from the hila
    markings = np.zeros_like(img)
    for _ in range(40):
        side = rng.choice([-1, 1])
        ang = rng.uniform(-1.2, 1.2) + (0 if side > 0 else np.pi)
        r = np.linspace(0.03, 0.28, 60)
        px = np.clip(((0.5 + side * 0.08) + r * np.cos(ang)) * size, 0, size - 1).astype(int)
        py = np.clip((0.45 + r * np.sin(ang) * 1.3) * size, 0, size - 1).astype(int)
        markings[py, px] += 0.12
    img += _blur(markings, 1) * lung_any
    # spine, mediastinum, heart
    img[(np.abs(x - 0.5) < 0.035) & body] = 0.7
    med_w = 0.075 + (0.05 if lab["Enlarged Cardiomediastinum"] else 0.0) + jit(0.006)
    mediastinum = (np.abs(x - 0.5) < med_w) & (y > 0.15) & (y < 0.5)
    img[mediastinum] = 0.68
    if lab["Enlarged Cardiomediastinum"]:
        masks["Enlarged Cardiomediastinum"] = mediastinum
    heart_w = (0.13 if not lab["Cardiomegaly"] else 0.21) + jit(0.008)
    heart = ((x - 0.53) / heart_w) ** 2 + ((y - 0.62) / 0.12) ** 2 < 1
    img[heart] = 0.72
    if lab["Cardiomegaly"]:
        masks["Cardiomegaly"] = heart

    img = _draw_findings(img, lab, x, y, lungs, lung_any, rng, jit, masks)
    img = _blur(img, 1) + rng.normal(0, 0.025, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def draw_lateral(lab: dict[str, int], size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 0.08, np.float32)
    img[((x - 0.5) / 0.36) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1] = 0.5
    img[((x - 0.48) / 0.22) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1] = 0.25
    hr = 0.12 if not lab["Cardiomegaly"] else 0.17
    img[((x - 0.38) / hr) ** 2 + ((y - 0.6) / 0.12) ** 2 < 1] = 0.68
    img[(np.abs(x - 0.8) < 0.03) & (y > 0.1)] = 0.72
    if lab["Pleural Effusion"]:
        img[(y > 0.68) & (((x - 0.5) / 0.3) ** 2 < 1)] = 0.6
    img = _blur(img, 1) + rng.normal(0, 0.025, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _csv_value(true: int, rng: np.random.Generator, train: bool) -> str:
    """How a report would state a finding: mostly as it is, sometimes uncertain or unmentioned."""
    if not train:
        return f"{float(true):.1f}"
    r = rng.random()
    if true:
        return "-1.0" if r < 0.08 else "1.0"
    if r < 0.04:
        return "-1.0"
    if r < 0.55:
        return ""  # not mentioned
    return "0.0"


DEFAULT_N = 600  # images `chexcut phantom` draws unless told


def make_phantom(out: str | Path, n: int = DEFAULT_N, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                 valid_frac: float = 0.15, lateral_frac: float = 0.2, progress=None, masks: bool = False) -> Path:
    """Write ``n`` images (about ``lateral_frac`` of them lateral) under ``out/CheXpert-v1.0-small``.

    Returns the dataset folder. Valid patients get ids from 64541 on, like CheXpert's.
    """
    from PIL import Image

    if n < 20:
        raise ChexcutError(f"--n must be at least 20 (got {n})")
    if not 32 <= image_size <= 2048:
        raise ChexcutError(f"--image-size must be 32..2048 (got {image_size}); phantom images are drawn in memory")
    root = Path(out) / "CheXpert-v1.0-small"
    if (root / "train.csv").exists() or (root / "valid.csv").exists():
        raise ChexcutError(f"{root} already holds a dataset; choose an empty folder")
    rng = np.random.default_rng(seed)
    rows = {"train": [], "valid": []}
    mask_rows: list[list] = []
    n_valid = max(10, int(round(n * valid_frac)))
    made = 0
    patient = 0
    while made < n:
        split = "valid" if made >= n - n_valid else "train"
        patient += 1
        pid = f"patient{(64540 + patient) if split == 'valid' else patient:05d}"
        for study in range(1, 1 + (1 if split == "valid" else int(rng.integers(1, 3)))):
            if made >= n:
                break
            lab = sample_labels(rng)
            values = {k: _csv_value(v, rng, split == "train") for k, v in lab.items()}
            sex, age = rng.choice(["Male", "Female"]), int(rng.integers(18, 90))
            views = [("frontal", rng.choice(["AP", "PA"]))]
            if rng.random() < lateral_frac and made + 1 < n:
                views.append(("lateral", ""))
            for v, (kind, appa) in enumerate(views, start=1):
                rel = f"CheXpert-v1.0-small/{split}/{pid}/study{study}/view{v}_{kind}.jpg"
                path = Path(out) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                drawn: dict = {}
                pixels = draw_frontal(lab, image_size, rng, drawn) if kind == "frontal" else \
                    draw_lateral(lab, image_size, rng)
                Image.fromarray(pixels, mode="L").save(path, quality=90)
                if masks and kind == "frontal":
                    mask_rows += _write_masks(Path(out), rel, drawn)
                rows[split].append([rel, sex, age, kind.capitalize(), appa, *(values[k] for k in CHEXPERT_LABELS)])
                made += 1
                if progress:
                    progress(made, n)
    for split, data in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(data)
    if masks:
        with open(root / "masks.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MASK_HEADER)
            w.writerows(mask_rows)
    return root


MASK_HEADER = ["Path", "Label", "Mask", "AreaShare"]


def _write_masks(out: Path, rel: str, drawn: dict) -> list[list]:
    """One PNG per drawn finding (255 inside its region) beside the image under masks/; rows for masks.csv."""
    from PIL import Image

    rows = []
    for label, m in drawn.items():
        m = np.asarray(m, dtype=bool)
        if not m.any():
            continue
        mrel = rel.replace("CheXpert-v1.0-small/", "CheXpert-v1.0-small/masks/", 1).replace(
            ".jpg", f"_{label.lower().replace(' ', '_')}.png")
        (out / mrel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((m * 255).astype(np.uint8), mode="L").save(out / mrel)
        rows.append([rel, label, mrel, f"{m.mean():.6f}"])
    return rows


def read_masks(root: Path) -> dict[tuple[str, str], Path]:
    """(image Path as in the CSV, label) -> mask PNG, from a phantom written with ``masks=True``."""
    import pandas as pd

    index = Path(root) / "masks.csv"
    if not index.is_file():
        raise ChexcutError(f"{index} not found: make the phantom with `chexcut phantom DIR --masks`")
    df = pd.read_csv(index)
    base = Path(root).parent
    return {(r.Path, r.Label): base / r.Mask for r in df.itertuples()}
