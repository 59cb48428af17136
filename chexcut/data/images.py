"""Decode any chest X-ray file into one uint8 grayscale square, (normalised on the device by the model's :class:`~chexcut.models.spec.Preprocess`).

JPEG and PNG, 8- and 16-bit, L / LA / P / RGB / RGBA all become one channel. ``squash``
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


def load_image(path: str | Path, size: int, resize: str = "squash") -> np.ndarray:
    """Decode ``path`` into a (size, size) uint8 array. Corrupt files raise ChexcutError naming the file."""
    from PIL import Image, UnidentifiedImageError

    resize = check(Resize, resize, "--resize")
    limit = max_pixels()
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
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
