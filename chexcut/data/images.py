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


#: The pip packages that give pydicom the decoders for compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000).
DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg; or python-gdcm"
GREY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
PYDICOM_MODULES = r"pydicom(\.|$)"  # the modules whose warnings :func:`_quiet_pydicom` silences


def _quiet_pydicom() -> None:
    """pydicom's UserWarnings (on stderr) name values it reads anyway or that the checks here refuse in their own
    line: silenced by a filter added once (``catch_warnings`` is no use: images are decoded in threads too)."""
    import warnings

    if not any(f[0] == "ignore" and getattr(f[3], "pattern", None) == PYDICOM_MODULES for f in warnings.filters):
        warnings.filterwarnings("ignore", category=UserWarning, module=PYDICOM_MODULES)


def _shown(value) -> str:
    """A tag's value as the file spells it, quoted for a message: multiple values joined by ``\\``, at most 40
    characters, escapes for anything unprintable (the message stays one line)."""
    from collections.abc import Sequence

    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        value = "\\".join(map(str, value))
    text = str(value).strip()
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in (text if len(text) <= 40 else text[:40] + "..."))
    return f"'{text}'"


def _read_tag(ds, keyword) -> tuple[object, str | None]:
    """(value, problem) of a tag, without trusting it: value None when absent or empty. pydicom converts an element
    on first access (malformed DS/IS text becomes a str); in its RAISE validation mode, for a binary value of the
    wrong length or an unknown VR, it raises instead: then the raw bytes come back, with the first line of why."""
    import struct

    import pydicom

    try:
        return ds.get(keyword), None
    except (ValueError, TypeError, OverflowError, NotImplementedError, struct.error,
            pydicom.errors.BytesLengthException) as e:
        raw = ds.get_item(keyword, keep_deferred=True)
        return getattr(raw, "value", None), (str(e).splitlines() or [type(e).__name__])[0]


def _number(ds, path, keyword: str, rule: str, ok=lambda x: True, *, integer: bool = True, multi: bool = False,
            required: bool = False, empty_ok: bool = True) -> float | None:
    """A numeric tag, checked: its value, as pydicom gives it, is a finite number (a whole one if ``integer``; with
    ``multi`` each of several values is, and the first counts, as in pydicom) that passes ``ok``. None when the tag
    is absent (refused if ``required``) or empty (refused if ``required`` or not ``empty_ok``). Anything else is
    refused in one line naming the file, the tag, its value and ``rule``."""
    import math
    import numbers
    from collections.abc import Sequence

    value, problem = _read_tag(ds, keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        if required or (keyword in ds and not empty_ok):
            raise ChexcutError(f"cannot read image {path}: the DICOM tag {keyword} is "
                               f"{'empty' if keyword in ds else 'missing'}; it must be {rule}")
        return None
    values = list(value) if multi and isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]

    def number(v) -> bool:
        real = isinstance(v, numbers.Number) and not isinstance(v, (bool, complex))
        return real and math.isfinite(float(v)) and (not integer or float(v).is_integer())

    if not (problem is None and values and all(map(number, values)) and ok(float(values[0]))):
        raise ChexcutError(f"cannot read image {path}: the DICOM tag {keyword} is {_shown(value)}; it must be {rule}")
    return float(values[0])


def _check_tags(ds, path) -> tuple[int, int, int]:
    """The Image Pixel, Modality LUT and VOI LUT tags (DICOM PS3.3 C.7.6.3, C.11.1, C.11.2) checked before decoding,
    each failure one line naming the tag and its value: (rows, columns, frames)."""
    def need(keyword, rule, ok):
        return _number(ds, path, keyword, rule, ok, required=True)

    rows = need("Rows", "a whole number above 0", lambda x: x > 0)
    cols = need("Columns", "a whole number above 0", lambda x: x > 0)
    frames = _number(ds, path, "NumberOfFrames", "a whole number of at least 1", lambda x: x >= 1) or 1
    allocated = need("BitsAllocated", "1, 8, 16 or 32", lambda x: x in (1, 8, 16, 32))
    need("BitsStored", f"a whole number from 1 to BitsAllocated ({allocated:g})", lambda x: 1 <= x <= allocated)
    need("PixelRepresentation", "0 (unsigned) or 1 (signed)", lambda x: x in (0, 1))
    samples = need("SamplesPerPixel", "1 (grey) or 3 (colour)", lambda x: x in (1, 3))
    if samples == 3:
        need("PlanarConfiguration", "0 or 1", lambda x: x in (0, 1))
    photometric, _ = _read_tag(ds, "PhotometricInterpretation")
    allowed = GREY_PHOTOMETRIC if samples == 1 else COLOUR_PHOTOMETRIC
    if not isinstance(photometric, str) or photometric.strip() not in allowed:
        raise ChexcutError(f"cannot read image {path}: the DICOM tag PhotometricInterpretation is "
                           f"{'missing' if photometric is None else _shown(photometric)}; with SamplesPerPixel "
                           f"{samples:g} it must be {' or '.join(allowed)}")
    _number(ds, path, "RescaleSlope", "a finite number other than 0", lambda x: x != 0, integer=False, empty_ok=False)
    _number(ds, path, "RescaleIntercept", "a finite number", integer=False, empty_ok=False)
    _number(ds, path, "WindowCenter", "a finite number (or several, separated by \\)", integer=False, multi=True)
    function = "LINEAR"
    if "WindowWidth" in ds and "VOILUTFunction" in ds:
        function, _ = _read_tag(ds, "VOILUTFunction")
        if not isinstance(function, str) or function.upper() not in VOI_FUNCTIONS:
            raise ChexcutError(f"cannot read image {path}: the DICOM tag VOILUTFunction is {_shown(function or '')}; "
                               f"it must be LINEAR, LINEAR_EXACT or SIGMOID")
    # PS3.3 C.11.2.1.2: a window is more than 0 wide; its LINEAR function (the default) needs at least 1
    linear = function.upper() == "LINEAR"
    _number(ds, path, "WindowWidth", "a number of at least 1 (for a LINEAR window)" if linear else "a number above 0",
            (lambda x: x >= 1) if linear else (lambda x: x > 0), integer=False, multi=True)
    return int(rows), int(cols), int(frames)


def _check_length(ds, path) -> None:
    """Uncompressed pixel data must be as long as Rows x Columns x SamplesPerPixel x BitsAllocated say (plus the
    one padding byte of an odd length): shorter is a truncated file, longer a file whose tags do not describe it."""
    from pydicom.pixels.utils import get_expected_length

    expected, found = get_expected_length(ds), len(ds.PixelData or b"")
    if found not in (expected, expected + expected % 2):
        what = "is damaged or truncated" if found < expected else \
            "is damaged: longer than its Rows, Columns, SamplesPerPixel and BitsAllocated say"
        raise ChexcutError(f"cannot read image {path}: the pixel data {what} (expected {expected:,} bytes, "
                           f"found {found:,})")


def _decode(ds, path) -> np.ndarray:
    """``ds.pixel_array``, its failures as one line: no transfer syntax or one pydicom cannot decode; uncompressed
    data of the wrong length (:func:`_check_length`) or otherwise undecodable; compressed data with no decoder
    installed (the pip hint); compressed data the installed decoders reject (damaged, or, where pydicom knows of
    decoders that are not installed, perhaps one of them would read it: the hint again)."""
    import struct

    import pydicom
    from pydicom.pixels import get_decoder

    syntax = _read_tag(ds.file_meta, "TransferSyntaxUID")[0] if hasattr(ds, "file_meta") else None
    if not syntax or not isinstance(syntax, str):
        raise ChexcutError(f"cannot read image {path}: the DICOM file names no transfer syntax (0002,0010) for its "
                           f"pixel data")
    name = getattr(syntax, "name", syntax)
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError, TypeError):
        raise ChexcutError(f"cannot read image {path}: its transfer syntax {name} is not one pydicom decodes") from None
    problem = _read_tag(ds, "PixelData")[1]
    if problem:
        raise ChexcutError(f"cannot read image {path}: the pixel data element is damaged ({problem})")
    if decoder.is_native:
        _check_length(ds, path)
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, TypeError, KeyError, IndexError,
            struct.error, pydicom.errors.BytesLengthException) as e:
        lines = [x.strip().rstrip(":") for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
        if decoder.is_native:
            raise ChexcutError(f"cannot read image {path}: the pixel data cannot be decoded ({lines[0]})") from None
        if not decoder.is_available:
            raise ChexcutError(f"cannot read image {path}: no decoder for its transfer syntax {name} is installed "
                               f"({DECODER_HINT}): {lines[0]}") from None
        why = lines[1] if len(lines) > 1 else lines[0]  # the first decoder's own complaint
        # pydicom's own decoder (RLE) reads the whole syntax: another one would not help
        other = decoder.missing_dependencies and "pydicom" not in decoder.available_plugins
        maybe = f", or needs a decoder that is not installed ({DECODER_HINT})" if other else ""
        raise ChexcutError(f"cannot read image {path}: its {name} pixel data cannot be decoded ({why}); it is "
                           f"damaged{maybe}") from None


def _colour_gray(rgb: np.ndarray, ds) -> np.ndarray:
    """Colour (RGB; YBR already converted to RGB by pydicom) -> uint8 grey, as the PNG path makes it: each channel
    scaled to 8 bits from the range its BitsStored spans, the way :func:`_output_range` scales 12-16-bit grey
    (so 8-bit data is unchanged; the Modality LUT is for grey only), then PIL's L conversion
    (L = R * 299/1000 + G * 587/1000 + B * 114/1000), as :func:`to_gray_u8` converts a colour PNG."""
    from PIL import Image

    bits = int(ds.BitsStored)
    lo, hi = (0, 2 ** bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    scaled = (np.asarray(rgb, dtype=np.float64) - lo) / (hi - lo)
    rgb8 = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return to_gray_u8(Image.fromarray(np.ascontiguousarray(rgb8)))


def _grey_u8(raw: np.ndarray, ds) -> np.ndarray:
    """Grey stored values -> uint8: Modality LUT, then the VOI LUT or window (pydicom), scaled from its output range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

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
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def dicom_gray_u8(path, limit: int) -> np.ndarray:
    """A DICOM projection radiograph -> (H, W) uint8: Modality LUT (RescaleSlope/Intercept), then the VOI LUT or
    window the file names (pydicom), scaled from its output range; MONOCHROME1 inverted; colour as
    :func:`_colour_gray`. Refused in one line: a file that is not a projection radiograph or has several frames;
    tags that are missing or out of range (:func:`_check_tags`, before decoding); pixel data that is truncated or
    needs a decoder that is not installed (:func:`_decode`); LUTs that cannot be applied."""
    import struct

    try:
        import pydicom
    except ImportError:
        raise ChexcutError(f"cannot read image {path}: DICOM needs pydicom (pip install pydicom)") from None
    _quiet_pydicom()
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, pydicom.errors.BytesLengthException, OSError, ValueError, EOFError,
            KeyError, IndexError, TypeError, NotImplementedError, struct.error) as e:
        raise ChexcutError(f"cannot read image {path}: not a readable DICOM file ({e})") from None
    modality = str(_read_tag(ds, "Modality")[0] or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise ChexcutError(f"cannot read image {path}: DICOM Modality {modality} is not a projection radiograph "
                           f"({', '.join(RADIOGRAPH_MODALITIES)})")
    if "PixelData" not in ds:
        raise ChexcutError(f"cannot read image {path}: the DICOM file holds no pixel data")
    rows, cols, frames = _check_tags(ds, path)
    if frames > 1:
        raise ChexcutError(f"cannot read image {path}: {frames} frames; a radiograph has one")
    if rows * cols > limit:
        raise ChexcutError(f"cannot read image {path}: {cols} x {rows} pixels is more than the limit of {limit:,} "
                           f"(CHEXCUT_MAX_PIXELS)")
    raw = _decode(ds, path)
    if raw.ndim == 3:
        return _colour_gray(raw, ds)
    try:
        gray = _grey_u8(raw, ds)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ChexcutError(f"cannot read image {path}: its Modality LUT or VOI LUT cannot be applied "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return 255 - gray if ds.PhotometricInterpretation.strip() == "MONOCHROME1" else gray


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
