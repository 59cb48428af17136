"""Hostile inputs, round 5: damaged DICOM files. Every tag :func:`dicom_gray_u8` relies on is checked before
decoding; a bad one is one line naming the file, the tag and its value (exit 2 through the CLI), never an internal
error and never a silently wrong image (a blank one from RescaleSlope 0, a wrapped one from 16-bit colour).
Truncated uncompressed pixel data is called damaged, not a missing decoder; colour is grey as a colour PNG's is."""

import numpy as np
import pytest
from conftest import run_cli
from test_datasets import _dicom

from chexcut.data.images import dicom_gray_u8
from chexcut.errors import ChexcutError

RAMP = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (16, 1))  # 16 x 16, 12-bit: 512 bytes of pixel data
LIMIT = 10 ** 6


def _raw_tags(path, **tags):
    """A valid 12-bit file, then each tag written as the bytes given (text no writer accepts, such as 'abc' in a
    decimal string, goes in as it is), or removed (None)."""
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    _dicom(path, RAMP)
    ds = pydicom.dcmread(path)
    for keyword, text in tags.items():
        tag = Tag(tag_for_keyword(keyword))
        if text is None:
            del ds[tag]
            continue
        value = text if isinstance(text, bytes) else text.encode()
        value += b" " * (len(value) % 2)
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path)
    return path


def _refused(path) -> str:
    with pytest.raises(ChexcutError) as e:
        dicom_gray_u8(path, LIMIT)
    message = str(e.value)
    assert message.startswith(f"cannot read image {path}: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("tags, words", [
    ({"WindowCenter": "2048", "WindowWidth": "0"}, "the DICOM tag WindowWidth is '0'; it must be a number of at least 1"),
    ({"WindowCenter": "2048", "WindowWidth": "abc"}, "the DICOM tag WindowWidth is 'abc'; it must be a number"),
    ({"WindowCenter": "2048", "WindowWidth": "1000\\abc"}, "the DICOM tag WindowWidth is '1000\\abc'"),
    ({"WindowCenter": "NaN", "WindowWidth": "100"}, "the DICOM tag WindowCenter is 'NaN'; it must be a finite number"),
    ({"WindowCenter": "2", "WindowWidth": "10", "VOILUTFunction": "CURVY"}, "the DICOM tag VOILUTFunction is 'CURVY'"),
    ({"NumberOfFrames": "abc"}, "the DICOM tag NumberOfFrames is 'abc'; it must be a whole number of at least 1"),
    ({"NumberOfFrames": "0"}, "the DICOM tag NumberOfFrames is '0'"),
    ({"Rows": None}, "the DICOM tag Rows is missing; it must be a whole number above 0"),
    ({"Columns": b"\0\0"}, "the DICOM tag Columns is '0'; it must be a whole number above 0"),
    ({"BitsAllocated": b"\x0c\0"}, "the DICOM tag BitsAllocated is '12'; it must be 1, 8, 16 or 32"),
    ({"BitsStored": b"\x11\0"}, "the DICOM tag BitsStored is '17'; it must be a whole number from 1 to BitsAllocated"),
    ({"SamplesPerPixel": b"\x02\0"}, "the DICOM tag SamplesPerPixel is '2'; it must be 1 (grey) or 3 (colour)"),
    ({"PhotometricInterpretation": "RGB"}, "the DICOM tag PhotometricInterpretation is 'RGB'; with SamplesPerPixel 1"),
    ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "the DICOM tag RescaleSlope is '0'; it must be a finite number "
                                                     "other than 0"),
    ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "the DICOM tag RescaleSlope is 'NaN'"),
    ({"RescaleSlope": "1", "RescaleIntercept": "inf"}, "the DICOM tag RescaleIntercept is 'inf'"),
])
def test_a_bad_tag_is_refused_in_one_line_naming_it_and_its_value(tmp_path, tags, words):
    message = _refused(_raw_tags(tmp_path / "x.dcm", **tags))
    assert words in message, message


def test_a_malformed_tag_is_refused_in_pydicoms_strict_reading_mode_too(tmp_path, monkeypatch):
    """In pydicom's RAISE validation mode the malformed value raises on access: read raw, the same line."""
    from pydicom import config

    path = _raw_tags(tmp_path / "x.dcm", WindowCenter="2048", WindowWidth="abc")
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert "the DICOM tag WindowWidth is 'abc'" in _refused(path)


def test_pydicoms_own_warnings_stay_off_stderr(tmp_path, recwarn):
    """pydicom warns about 'abc' in an integer string before the check refuses it: the user sees one line only."""
    _refused(_raw_tags(tmp_path / "x.dcm", NumberOfFrames="abc"))
    dicom_gray_u8(_raw_tags(tmp_path / "y.dcm", NumberOfFrames=""), LIMIT)  # read as one frame, as pydicom does
    assert not [w for w in recwarn if "pydicom" in w.filename], [str(w.message) for w in recwarn]


def test_damaged_uncompressed_pixel_data_is_not_a_missing_decoder(tmp_path):
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    for name, cut in (("explicit.dcm", None), ("implicit.dcm", ImplicitVRLittleEndian)):
        path = _dicom(tmp_path / name, RAMP)
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:-12]
        if cut:
            ds.file_meta.TransferSyntaxUID = cut
        ds.save_as(path)
        message = _refused(path)
        assert "the pixel data is damaged or truncated (expected 512 bytes, found 500)" in message, message
        assert "decoder" not in message and "pip install" not in message
    whole = _dicom(tmp_path / "whole.dcm", RAMP).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-101])  # a file cut short on disk: pydicom reads what is there
    assert "(expected 512 bytes, found 411)" in _refused(tmp_path / "cut.dcm")
    ds = pydicom.dcmread(tmp_path / "whole.dcm")
    ds.PixelData += bytes(64)  # more data than Rows x Columns say: the tags do not describe it
    ds.save_as(tmp_path / "long.dcm")
    assert "longer than its Rows, Columns" in _refused(tmp_path / "long.dcm")


def test_a_damaged_stream_that_an_installed_decoder_rejects_is_no_missing_decoder(tmp_path):
    """RLE is decoded by pydicom itself: a broken stream is damaged, and no pip install would help."""
    import pydicom
    from pydicom.uid import RLELossless

    path = _dicom(tmp_path / "rle.dcm", RAMP)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])
    ds.save_as(path)
    message = _refused(path)
    assert "its RLE Lossless pixel data cannot be decoded (" in message and message.endswith("it is damaged")
    assert "pip install" not in message


def test_colour_is_grey_as_a_colour_png_is(tmp_path):
    """8-bit RGB: PIL's L, as a colour PNG. 12- and 16-bit RGB: each channel scaled to 8 bits from BitsStored (as
    12-16-bit grey is), then L = R*299/1000 + G*587/1000 + B*114/1000 (PIL rounds; within 1), never the low byte."""
    from PIL import Image
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = dicom_gray_u8(_dicom(tmp_path / "rgb8.dcm", rgb8, "RGB", 8), LIMIT)
    assert np.array_equal(got, np.asarray(Image.fromarray(rgb8).convert("L")))
    got = dicom_gray_u8(_dicom(tmp_path / "ybr.dcm", rgb8, "YBR_FULL", 8), LIMIT)  # pydicom converts YBR_FULL to RGB
    assert np.array_equal(got, np.asarray(Image.fromarray(convert_color_space(rgb8, "YBR_FULL", "RGB")).convert("L")))
    for bits in (16, 12):
        rgb = rng.integers(0, 2 ** bits, (16, 16, 3), dtype=np.uint16)
        got = dicom_gray_u8(_dicom(tmp_path / f"rgb{bits}.dcm", rgb, "RGB", bits), LIMIT).astype(int)
        scaled = np.floor(rgb / (2 ** bits - 1) * 255 + 0.5)
        formula = scaled[..., 0] * 299 / 1000 + scaled[..., 1] * 587 / 1000 + scaled[..., 2] * 114 / 1000
        assert np.abs(got - formula).max() <= 1
        assert np.array_equal(got, np.asarray(Image.fromarray(scaled.astype(np.uint8)).convert("L")))
        wrapped = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L")).astype(int)  # the old cast
        assert np.abs(got - wrapped).max() > 50


def test_a_valid_monochrome_file_reads_as_before(tmp_path):
    """No window: the 12-bit range onto 0-255; a multi-valued window: its first value, as pydicom takes it; an empty
    NumberOfFrames is one frame, as pydicom reads it."""
    expect = np.round(RAMP / 4095 * 255)
    assert np.abs(dicom_gray_u8(_dicom(tmp_path / "a.dcm", RAMP), LIMIT) - expect).max() <= 1
    assert np.array_equal(dicom_gray_u8(_raw_tags(tmp_path / "f.dcm", NumberOfFrames=""), LIMIT),
                          dicom_gray_u8(tmp_path / "a.dcm", LIMIT))
    one = dicom_gray_u8(_dicom(tmp_path / "one.dcm", RAMP, WindowCenter=2000, WindowWidth=1000), LIMIT)
    several = dicom_gray_u8(_dicom(tmp_path / "several.dcm", RAMP, WindowCenter=[2000, 40], WindowWidth=[1000, 400]),
                            LIMIT)
    assert np.array_equal(one, several)
    y = np.clip((RAMP - (2000 - 0.5)) / (1000 - 1) + 0.5, 0, 1)  # DICOM PS3.3 C.11.2.1.2.1
    assert np.abs(one - np.round(y * 255)).max() <= 1


def test_prepare_refuses_a_damaged_dicom_in_one_line(tmp_path):
    import pydicom

    data = tmp_path / "data"
    data.mkdir()
    _raw_tags(data / "slope.dcm", RescaleSlope="0", RescaleIntercept="0")
    ds = pydicom.dcmread(_dicom(data / "cut.dcm", RAMP))
    ds.PixelData = ds.PixelData[:-100]
    ds.save_as(data / "cut.dcm")
    _raw_tags(data / "frames.dcm", NumberOfFrames="abc")
    for name, words in (("slope.dcm", "the DICOM tag RescaleSlope is '0'"),
                        ("frames.dcm", "the DICOM tag NumberOfFrames is 'abc'"),
                        ("cut.dcm", "the pixel data is damaged or truncated (expected 512 bytes, found 412)")):
        (data / "rows.csv").write_text(f"Path,Patient,Atelectasis\n{name},p1,1\n")
        rc, _, err = run_cli("prepare", data, "--csv", "rows.csv", "--image-size", "32", "--cache", tmp_path / "cache",
                             "-q")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"chexcut: error: cannot read image {data / name}: ") and words in err, err
