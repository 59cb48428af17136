"""Decode any chest X-ray file into one uint8 grayscale square, (normalised on the device by the model's :class:`~chexcut.models.spec.Preprocess`).

JPEG and PNG, 8- and 16-bit, L / LA / P / RGB / RGBA all become one channel; DICOM through pydicom
(:func:`dicom_gray_u8`: Modality LUT, VOI LUT or window, MONOCHROME1 inverted). ``squash``
resizes to S x S ignoring the aspect ratio (the CheXpert baseline); ``pad`` letterboxes.
Batches travel as uint8 (4x less than float32) and are normalised where they are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.choices import Resize, check
from chexcut.errors import ChexcutError


def to_gray_u8(img) -> np.ndarray:
    """A PIL image of any mode -> (H, W) uint8."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        a = np.asarray(img, dtype=np.int64 if img.mode == "I" else np.uint16).astype(np.float32)
        top = float(a.max()) if a.size else 0.0
        # 16-bit containers hold 12- to 16-bit data: scale by the container's apparent bit depth
        bits = 16 if top > 4095 else (12 if top > 255 else 8)
        return np.clip(a / (2 ** bits - 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo + 1e-12) * 255 + 0.5).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA"):
        # an opaque alpha (the usual case for X-ray exports) is simply dropped; transparency goes to black
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def max_pixels() -> int:
    """The largest image chexcut decodes: ``CHEXCUT_MAX_PIXELS`` (default 50 million: a 7,000 x 7,000 image;
    real radiographs are 4,000-5,000 px a side). Larger files are refused as bad images (a decompression
    bomb would otherwise exhaust memory); ``--skip-bad`` skips them like any unreadable image."""
    import os

    try:
        return int(os.environ.get("CHEXCUT_MAX_PIXELS", 50_000_000))
    except ValueError:
        raise ChexcutError("CHEXCUT_MAX_PIXELS must be an integer number of pixels") from None


#: DICOM Modality values of projection radiographs (CR computed, DX digital, RG radiographic, DR/PX older uses).
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "PX", "OT")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def is_dicom(path, by_name: bool = True) -> bool:
    """A DICOM file by its name (``by_name``) or its Part 10 preamble (``DICM`` at byte 128)."""
    if by_name and str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _output_range(ds) -> tuple[float, float]:
    """The range of the stored values after the Modality LUT: what windowing maps onto (PS3.3 C.11.2.1.2, as
    pydicom's ``apply_windowing`` computes it) and what 12-16-bit data without a window is scaled from."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 8) or 8)
    lo, hi = (0, 2 ** bits - 1) if int(ds.get("PixelRepresentation", 0) or 0) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return float(lo), float(hi)


def dicom_gray_u8(path, limit: int) -> np.ndarray:
    """A DICOM projection radiograph -> (H, W) uint8: Modality LUT (RescaleSlope/Intercept), then the VOI LUT or
    window the file names (pydicom), scaled from its output range; MONOCHROME1 inverted. A file that is not a
    projection radiograph, has several frames, or needs a decoder that is not installed is refused (one line)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ChexcutError(f"cannot read image {path}: DICOM needs pydicom (pip install pydicom)") from None
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError) as e:
        raise ChexcutError(f"cannot read image {path}: not a readable DICOM file ({e})") from None
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise ChexcutError(f"cannot read image {path}: DICOM Modality {modality} is not a projection radiograph "
                           f"({', '.join(RADIOGRAPH_MODALITIES)})")
    if "PixelData" not in ds:
        raise ChexcutError(f"cannot read image {path}: the DICOM file holds no pixel data")
    rows, cols, frames = int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ChexcutError(f"cannot read image {path}: {frames} frames; a radiograph has one")
    if rows * cols > limit:
        raise ChexcutError(f"cannot read image {path}: {cols} x {rows} pixels is more than the limit of {limit:,} "
                           f"(CHEXCUT_MAX_PIXELS)")
    try:
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ChexcutError(f"cannot read image {path}: no decoder for its transfer syntax {name} is installed "
                           f"(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg; or python-gdcm): "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim == 3:  # colour (RGB, YBR after pydicom's conversion): luminance, as PIL's L does
        from PIL import Image

        return to_gray_u8(Image.fromarray(np.ascontiguousarray(raw).astype(np.uint8)))
    arr = apply_modality_lut(raw, ds)
    windowed = ds.get("VOILUTSequence") or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)
    if windowed:
        if ds.get("VOILUTSequence"):
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            lo, hi = _output_range(ds)
        arr = apply_voi_lut(arr, ds)
    else:
        lo, hi = _output_range(ds)
    out = (np.asarray(arr, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    gray = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def load_image(path: str | Path, size: int, resize: str = "squash") -> np.ndarray:
    """Decode ``path`` into a (size, size) uint8 array. Corrupt files raise ChexcutError naming the file."""
    from PIL import Image, UnidentifiedImageError

    resize = check(Resize, resize, "--resize")
    limit = max_pixels()
    if str(path).lower().endswith(DICOM_SUFFIXES):
        if not Path(path).is_file():
            raise ChexcutError(f"image not found: {path}")
        return resize_gray(dicom_gray_u8(path, limit), size, resize)
    Image.MAX_IMAGE_PIXELS = None  # chexcut's own limit below, checked from the header before decoding
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > limit:
                raise ChexcutError(f"cannot read image {path}: {img.size[0]} x {img.size[1]} pixels is more than "
                                   f"the limit of {limit:,} (CHEXCUT_MAX_PIXELS)")
            if img.format == "JPEG":
                # decode at reduced resolution directly in the DCT (2-8x less work for big images)
                img.draft("L", (size, size))
            img.load()
            gray = to_gray_u8(img)
    except FileNotFoundError:
        raise ChexcutError(f"image not found: {path}") from None
    except UnidentifiedImageError as e:
        if is_dicom(path, by_name=False):  # a DICOM named like another file (or with no suffix)
            return resize_gray(dicom_gray_u8(path, limit), size, resize)
        raise ChexcutError(f"cannot read image {path}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ChexcutError(f"cannot read image {path}: {e}") from None
    return resize_gray(gray, size, resize)


def resize_gray(gray: np.ndarray, size: int, resize: str = "squash") -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(gray, mode="L")
    if resize == "squash":
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        return np.asarray(im, dtype=np.uint8)
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(im, dtype=np.uint8)
    return out
