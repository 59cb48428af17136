"""Image decoding: every mode and bit depth real X-ray exports come in, both resize modes."""

import numpy as np
import pytest
from conftest import REALCXR
from PIL import Image

from chexcut.data.images import load_image
from chexcut.errors import ChexcutError


def _gradient(w=80, h=60):
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_8bit_modes_give_the_same_gray(tmp_path, mode):
    g = (_gradient() * 255).astype(np.uint8)
    ref = load_image(_save(tmp_path, Image.fromarray(g, "L"), "ref.png"), 32)
    img = Image.fromarray(g, "L").convert(mode)
    out = load_image(_save(tmp_path, img, f"x_{mode}.png"), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def _save(tmp_path, img, name):
    p = tmp_path / name
    img.save(p)
    return p


def test_16bit_png(tmp_path):
    g16 = (_gradient() * 65535).astype(np.uint16)
    out = load_image(_save(tmp_path, Image.fromarray(g16), "x16.png"), 32)
    assert out.min() <= 5 and out.max() >= 250  # full 16-bit range -> full 8-bit range
    g12 = (_gradient() * 4095).astype(np.uint16)  # 12-bit data in a 16-bit container
    out12 = load_image(_save(tmp_path, Image.fromarray(g12), "x12.png"), 32)
    assert out12.max() >= 250


def test_transparent_rgba_goes_black(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., :3] = 200
    a[:10, :, 3] = 255
    out = load_image(_save(tmp_path, Image.fromarray(a, "RGBA"), "t.png"), 20)
    assert out[:8].mean() > 190 and out[12:].mean() < 5


def test_pad_letterboxes(tmp_path):
    g = np.full((50, 100), 255, np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(g), "w.png"), 40, resize="pad")
    assert out.shape == (40, 40)
    assert out[0].max() == 0 and out[-1].max() == 0 and out[20].min() == 255
    squashed = load_image(tmp_path / "w.png", 40, resize="squash")
    assert squashed.min() == 255


def test_corrupt_and_missing(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ChexcutError, match="bad.jpg"):
        load_image(bad, 32)
    with pytest.raises(ChexcutError, match="not found"):
        load_image(tmp_path / "none.png", 32)


@pytest.mark.skipif(not REALCXR.is_dir(), reason="../shared/realcxr-sample is absent")
def test_real_xrays_decode(tmp_path):
    import pandas as pd
    df = pd.read_csv(REALCXR / "labels.csv")
    modes = set()
    for p in df["Path"][:100]:
        with Image.open(REALCXR / p) as im:
            modes.add(im.mode)
        out = load_image(REALCXR / p, 64)
        assert out.shape == (64, 64) and 20 < out.mean() < 235
    assert "RGBA" in modes  # the sample's two RGBA exports went through
