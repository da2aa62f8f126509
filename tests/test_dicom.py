"""keras_hourglass.data.dicom: checks, VOI, orientation, resize, transform (tiny files written here)."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicom_factory import mammogram_dataset
from keras_hourglass.data import dicom
from keras_hourglass.errors import InputError

ROWS, COLS = 64, 48
BLOB = (slice(40, 48), slice(8, 16))  # a bright 8x8 blob inside the tissue of `breast()`


def breast(chest_wall: str = "left", background: int = 80, tissue: int = 2500) -> np.ndarray:
    """A 64x48 uint16 'breast': a half ellipse from the chest wall, a bright blob in it."""
    y, x = np.mgrid[0:ROWS, 0:COLS]
    inside = ((y + 0.5 - ROWS / 2) / (ROWS * 0.48)) ** 2 + ((x + 0.5) / (COLS * 0.75)) ** 2 <= 1
    img = np.where(inside, tissue, background).astype(np.uint16)
    img[BLOB] = 4000
    return img if chest_wall == "left" else img[:, ::-1].copy()


def make_ds(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12, **tags) -> Dataset:
    """A minimal valid MG For Presentation dataset around `pixels` (uint16), no laterality tags."""
    return mammogram_dataset(pixels, photometric=photometric, bits_stored=bits_stored,
                             PatientID="RAWPID-0001", **tags)


def save(tmp_path, ds: Dataset, name: str = "x.dcm") -> str:
    path = os.fspath(tmp_path / name)
    ds.save_as(path, enforce_file_format=True)
    return path


def read(path, **kw) -> dicom.Mammogram:
    kw.setdefault("long_side", None)
    kw.setdefault("orient", "none")
    return dicom.read_mammogram(path, **kw)


# ------------------------------------------------------------------------------------ no TF import
def test_module_imports_no_tensorflow(imports_tensorflow):
    assert not imports_tensorflow("keras_hourglass.data.dicom")


# -------------------------------------------------------------------------------------- rejections
def _expect(path, code, cls, **kw):
    with pytest.raises(cls) as info:
        dicom.read_mammogram(path, **kw)
    err = info.value
    assert isinstance(err, InputError) and isinstance(err, dicom.DicomError)
    assert err.code == code
    assert err.path == os.fspath(path)
    message = str(err)
    assert message.startswith(os.fspath(path)) and "\n" not in message and code in message
    return err


def test_reject_for_processing_sop_class(tmp_path):
    ds = make_ds(breast(), SOPClassUID=dicom.FOR_PROCESSING_SOP_CLASS, PresentationIntentType=None)
    ds.file_meta.MediaStorageSOPClassUID = dicom.FOR_PROCESSING_SOP_CLASS
    _expect(save(tmp_path, ds), "for_processing", dicom.ForProcessingError)


def test_reject_for_processing_intent_tag(tmp_path):
    ds = make_ds(breast(), PresentationIntentType="FOR PROCESSING")
    _expect(save(tmp_path, ds), "for_processing", dicom.ForProcessingError)


def test_reject_not_mammography(tmp_path):
    err = _expect(save(tmp_path, make_ds(breast(), Modality="CT")), "not_mammography", dicom.NotMammographyError)
    assert "'CT'" in str(err)
    _expect(save(tmp_path, make_ds(breast(), Modality=None), "m.dcm"), "not_mammography",
            dicom.NotMammographyError)


def test_reject_no_pixel_data(tmp_path):
    _expect(save(tmp_path, make_ds(breast(), PixelData=None)), "no_pixel_data", dicom.NoPixelDataError)


def test_reject_multi_frame(tmp_path):
    frames = np.stack([breast(), breast()])
    ds = make_ds(breast(), NumberOfFrames=2)
    ds.PixelData = frames.astype("<u2").tobytes()
    _expect(save(tmp_path, ds), "multi_frame", dicom.MultiFrameError)


def test_reject_unsupported_transfer_syntax(tmp_path):
    ds = make_ds(breast())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    err = _expect(save(tmp_path, ds), "unsupported_transfer_syntax", dicom.UnsupportedTransferSyntaxError)
    assert "1.2.840.10008.1.2.4.100" in str(err)


def test_reject_syntax_whose_plugin_is_missing(tmp_path, monkeypatch):
    # Here every syntax pydicom knows has a plugin installed; simulate a site without pylibjpeg-rle.
    real = pydicom.pixels.get_decoder

    class Missing:
        is_available = False
        UID = RLELossless
        missing_dependencies = ["pylibjpeg-rle - requires pylibjpeg>=2.0 and pylibjpeg-rle>=2.0"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Missing() if uid == RLELossless else real(uid))
    ds = make_ds(breast())
    ds.compress(RLELossless)
    err = _expect(save(tmp_path, ds), "unsupported_transfer_syntax", dicom.UnsupportedTransferSyntaxError)
    assert "not installed" in str(err) and "pylibjpeg-rle" in str(err) and "RLE Lossless" in str(err)


def test_reject_non_monochrome(tmp_path):
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    ds = make_ds(breast(), photometric="RGB", SamplesPerPixel=3, BitsAllocated=8, BitsStored=8, HighBit=7,
                 PlanarConfiguration=0)
    ds.PixelData = rgb.tobytes()
    _expect(save(tmp_path, ds), "unsupported_photometric", dicom.UnsupportedPhotometricError)


def test_too_large_rejected_from_header_before_decoding(tmp_path, monkeypatch):
    # The header claims 60000 x 60000 but only 64x48 pixels are stored: decoding would fail with a
    # different error (or allocate 7 GB); the header check must fire first and no decode may run.
    ds = make_ds(breast(), Rows=60000, Columns=60000)
    path = save(tmp_path, ds)

    def no_decode(*args, **kwargs):
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(dicom, "stored_values", no_decode)
    monkeypatch.setattr(Dataset, "pixel_array", property(no_decode))
    err = _expect(path, "too_large", dicom.TooLargeError)
    assert "3600000000" in str(err)
    with pytest.raises(dicom.TooLargeError):
        dicom.read_header(path)
    small = save(tmp_path, make_ds(breast()), "small.dcm")
    _expect(small, "too_large", dicom.TooLargeError, max_pixels=ROWS * COLS - 1)


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("this is not a DICOM file\n" * 20)
    err = _expect(text, "unreadable", dicom.UnreadableDicomError)
    assert "not a DICOM file" in str(err)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    _expect(empty, "unreadable", dicom.UnreadableDicomError)
    _expect(tmp_path / "missing.dcm", "unreadable", dicom.UnreadableDicomError)
    good = save(tmp_path, make_ds(breast()), "good.dcm")
    data = open(good, "rb").read()
    for cut in (len(data) // 2, len(data) - 100, 200):
        truncated = tmp_path / f"cut{cut}.dcm"
        truncated.write_bytes(data[:cut])
        _expect(truncated, "unreadable", dicom.UnreadableDicomError)


def test_corrupt_compressed_pixel_data_is_unreadable(tmp_path):
    ds = make_ds(breast())
    ds.compress(RLELossless)
    frame = b"\x01\x00\x00\x00@\x00\x00\x00" + b"\x00" * 56 + b"\x85garbage" * 3
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    _expect(save(tmp_path, ds), "unreadable", dicom.UnreadableDicomError)


def test_pixel_data_shorter_than_header_is_unreadable(tmp_path):
    ds = make_ds(breast())
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    _expect(save(tmp_path, ds), "unreadable", dicom.UnreadableDicomError)


def test_fuzzed_files_never_raise_raw_errors(tmp_path):
    # Random byte corruption and truncation of uncompressed, RLE and JPEG 2000 files: every outcome is
    # a valid image or a DicomError (pydicom's lazy element parsing and pylibjpeg-rle's Rust panics
    # included), never a raw exception.
    import io
    import warnings

    sources = []
    for uid in (None, RLELossless, JPEG2000Lossless):
        ds = make_ds(breast(), WindowCenter=2000, WindowWidth=3000, ImageLaterality="L")
        if uid is not None:
            ds.compress(uid)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        sources.append(buf.getvalue())
    rng = np.random.default_rng(0)
    outcomes = set()
    path = tmp_path / "fuzz.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(240):
            data = bytearray(sources[i % 3])
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            if rng.random() < 0.2:
                data = data[: int(rng.integers(len(data)))]
            path.write_bytes(bytes(data))
            try:
                img = dicom.read_mammogram(path, long_side=32).image
                assert img.dtype == np.float32 and np.isfinite(img).all() and 0 <= img.min() <= img.max() <= 1
                outcomes.add("ok")
            except dicom.DicomError as err:
                assert err.path == os.fspath(path) and err.code in dicom.ERROR_CODES
                outcomes.add(err.code)
    assert {"ok", "unreadable"} <= outcomes and len(outcomes) >= 4


def test_bad_options_are_programming_errors(tmp_path):
    path = save(tmp_path, make_ds(breast()))
    for kwargs in ({"long_side": 0}, {"voi": -1}, {"voi": True}, {"orient": "up"}):
        with pytest.raises(ValueError):
            dicom.read_mammogram(path, **kwargs)


# ---------------------------------------------------------------------------------- header reading
def test_read_header_fields_and_no_raw_ids_in_repr(tmp_path):
    ds = make_ds(breast(), ImageLaterality="R", ViewPosition="MLO", WindowCenter=[2000, 1500],
                 WindowWidth=[1000, 800])
    header = dicom.read_header(save(tmp_path, ds))
    assert (header.laterality, header.view, header.rows, header.columns) == ("R", "MLO", ROWS, COLS)
    assert header.photometric == "MONOCHROME2" and header.bits_stored == 12 and header.window_count == 2
    assert header.patient_id == "RAWPID-0001" and header.sop_instance_uid == ds.SOPInstanceUID
    assert "RAWPID" not in repr(header) and ds.StudyInstanceUID not in repr(header)
    ds2 = make_ds(breast(), Laterality="L")  # series-level Laterality used when ImageLaterality absent
    assert dicom.read_header(save(tmp_path, ds2, "l.dcm")).laterality == "L"


def test_bytes_and_file_object_sources(tmp_path):
    path = save(tmp_path, make_ds(breast()))
    ref = read(path).image
    data = open(path, "rb").read()
    np.testing.assert_array_equal(read(data).image, ref)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(read(fh).image, ref)


# ----------------------------------------------------------------------------------------- pixels
def test_minmax_when_no_voi_and_range(tmp_path):
    img = read(save(tmp_path, make_ds(breast()))).image
    assert img.dtype == np.float32 and img.shape == (ROWS, COLS)
    assert img.min() == 0.0 and img.max() == 1.0
    assert img[BLOB].mean() == 1.0


def test_monochrome1_is_inverted(tmp_path):
    m2 = read(save(tmp_path, make_ds(breast(), WindowCenter=2048, WindowWidth=4096), "m2.dcm"))
    m1 = read(save(tmp_path, make_ds(breast(), photometric="MONOCHROME1", WindowCenter=2048,
                                     WindowWidth=4096), "m1.dcm"))
    np.testing.assert_allclose(m1.image, 1.0 - m2.image, atol=1e-6)
    # In MONOCHROME1 a high stored value means dark: the same numbers give the opposite image.
    assert m2.image[BLOB].mean() > 0.9 and m1.image[BLOB].mean() < 0.1


def test_linear_window(tmp_path):
    pix = np.full((ROWS, COLS), 2000, np.uint16)
    pix[0, :4] = [1000, 1600, 2499, 3000]
    res = read(save(tmp_path, make_ds(pix, WindowCenter=2000, WindowWidth=1000)))
    assert res.voi_rule == "window[0]:LINEAR"
    img = res.image
    assert img[0, 0] == 0.0 and img[0, 3] == 1.0
    # DICOM LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]
    np.testing.assert_allclose(img[1, 1], (2000 - 1999.5) / 999 + 0.5, atol=1e-4)
    np.testing.assert_allclose(img[0, 1], (1600 - 1999.5) / 999 + 0.5, atol=1e-4)


def test_sigmoid_window_differs_from_linear(tmp_path):
    pix = np.full((ROWS, COLS), 2000, np.uint16)
    pix[0, :3] = [1500, 1800, 2600]
    lin = read(save(tmp_path, make_ds(pix, WindowCenter=2000, WindowWidth=1000), "lin.dcm"))
    sig = read(save(tmp_path, make_ds(pix, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID"),
                    "sig.dcm"))
    assert sig.voi_rule == "window[0]:SIGMOID"
    expected = 1.0 / (1.0 + np.exp(-4.0 * (np.array([1500, 1800, 2600]) - 2000) / 1000))
    np.testing.assert_allclose(sig.image[0, :3], expected, atol=1e-4)
    np.testing.assert_allclose(sig.image[1, 1], 0.5, atol=1e-4)
    assert lin.image[0, 0] == 0.0 and sig.image[0, 0] > 0.1


def _lut(values: np.ndarray) -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(values), 0, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in values])  # LUT Data
    item.LUTExplanation = "test"
    return Sequence([item])


def test_voi_lut_and_windows_selection(tmp_path):
    pix = np.arange(ROWS * COLS, dtype=np.uint16).reshape(ROWS, COLS) % 4096
    table = (np.arange(4096) ** 2 // 4096).astype(np.int64)  # a quadratic LUT, range 0..4094
    ds = make_ds(pix, VOILUTSequence=_lut(table), WindowCenter=[1000, 3000], WindowWidth=[500, 600],
                 VOILUTFunction="SIGMOID")
    path = save(tmp_path, ds)
    auto = read(path)
    assert auto.voi_rule == "voi_lut[0]"
    np.testing.assert_allclose(auto.image, table[pix] / table.max(), atol=1e-6)
    win = read(path, voi="window")
    assert win.voi_rule == "window[0]:SIGMOID"
    win1 = read(path, voi=1)
    assert win1.voi_rule == "window[1]:SIGMOID"
    np.testing.assert_allclose(win1.image[pix == 3000], 0.5, atol=1e-3)
    assert read(path, voi=5).voi_rule == "voi_lut[0]"  # no 6th window: falls back to the LUT
    none = read(path, voi="none")
    assert none.voi_rule == "minmax"
    np.testing.assert_allclose(none.image, pix / pix.max(), atol=1e-6)
    with pytest.raises(ValueError):
        read(path, voi="sideways")


def test_modality_lut_rescale_is_applied_before_window(tmp_path):
    pix = np.full((ROWS, COLS), 500, np.uint16)
    pix[0, 0] = 1000  # -> 2 * 1000 - 100 = 1900 = window centre
    ds = make_ds(pix, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=1900, WindowWidth=401)
    img = read(save(tmp_path, ds)).image
    np.testing.assert_allclose(img[0, 0], 0.5 + 0.5 / 400, atol=1e-3)
    assert img[1, 1] == 0.0  # 900 is far below the window


def test_pixel_padding_is_background_and_out_of_minmax(tmp_path):
    pix = breast()
    pix[:, 40:] = 4095  # padded border (a MONOCHROME2 file padded with the maximum value)
    res = read(save(tmp_path, make_ds(pix, PixelPaddingValue=4095)))
    assert res.voi_rule == "minmax+padding"
    assert np.all(res.image[:, 40:] == 0.0)  # background, not white
    assert res.image[BLOB].mean() == 1.0  # the range comes from the unpadded pixels (blob = 4000)
    ranged = read(save(tmp_path, make_ds(pix, PixelPaddingValue=4095, PixelPaddingRangeLimit=4000), "r.dcm"))
    assert np.all(ranged.image[BLOB] == 0.0)  # 4000 lies in the padding range [4000, 4095]
    plain = read(save(tmp_path, make_ds(pix), "p.dcm"))
    assert plain.voi_rule == "minmax" and plain.image[:, 40:].min() == 1.0


def test_invalid_window_falls_back_to_minmax(tmp_path):
    res = read(save(tmp_path, make_ds(breast(), WindowCenter=100, WindowWidth=0)))
    assert res.voi_rule == "minmax" and res.image.max() == 1.0


# ------------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("stored,tags,flip,rule", [
    ("left", {"ImageLaterality": "L"}, False, "tags+pixels"),
    ("right", {"ImageLaterality": "R"}, True, "tags+pixels"),
    ("right", {}, True, "pixels"),
    ("left", {}, False, "pixels"),
    ("right", {"ImageLaterality": "L"}, True, "pixels_override_tags"),
    ("right", {"ImageLaterality": "L", "FieldOfViewHorizontalFlip": "YES"}, True, "tags+pixels"),
    ("left", {"Laterality": "L", "PatientOrientation": ["A", "R"]}, False, "tags+pixels"),
    ("right", {"ImageLaterality": "L", "PatientOrientation": ["P", "L"]}, True, "tags+pixels"),
])
def test_orientation_rules(tmp_path, stored, tags, flip, rule):
    res = read(save(tmp_path, make_ds(breast(stored), **tags)), orient="left")
    assert (res.transform.flipped, res.orientation_rule) == (flip, rule)
    third = COLS // 3
    assert res.image[:, :third].mean() > res.image[:, -third:].mean()  # chest wall on the left
    right = read(save(tmp_path, make_ds(breast(stored), **tags), "r.dcm"), orient="right")
    assert right.image[:, :third].mean() < right.image[:, -third:].mean()


def test_orientation_tags_decide_when_pixels_ambiguous(tmp_path):
    flat = np.full((ROWS, COLS), 1000, np.uint16)
    flat[10, 10] = flat[10, COLS - 11] = 1200  # symmetric: no side is brighter
    res = read(save(tmp_path, make_ds(flat, ImageLaterality="R")), orient="left")
    assert (res.transform.flipped, res.orientation_rule) == (True, "tags_pixels_ambiguous")
    res = read(save(tmp_path, make_ds(flat), "n.dcm"), orient="left")
    assert (res.transform.flipped, res.orientation_rule) == (False, "default")


# ------------------------------------------------------------------------------------ compression
def test_compressed_decode_equals_uncompressed(tmp_path):
    ds = make_ds(breast("right"), WindowCenter=2048, WindowWidth=4096, ImageLaterality="R")
    ref = read(save(tmp_path, ds, "raw.dcm"), orient="left")
    syntaxes = [RLELossless]
    if pydicom.pixels.get_encoder(JPEG2000Lossless).is_available:
        syntaxes.append(JPEG2000Lossless)
    for uid in syntaxes:
        comp = make_ds(breast("right"), WindowCenter=2048, WindowWidth=4096, ImageLaterality="R")
        comp.compress(uid)
        path = save(tmp_path, comp, f"{uid}.dcm")
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid
        out = read(path, orient="left")
        np.testing.assert_array_equal(out.image, ref.image)
        assert out.transform == ref.transform


# ----------------------------------------------------------------------------- resize + transform
def test_output_shape_is_deterministic():
    assert dicom.output_shape(3840, 3072, 1536) == (1536, 1229)
    assert dicom.output_shape(3328, 4096, 1536) == (1248, 1536)
    assert dicom.output_shape(64, 48, 32) == (32, 24)
    assert dicom.output_shape(64, 48, None) == (64, 48)
    assert dicom.output_shape(4000, 1, 100) == (100, 1)
    with pytest.raises(ValueError):
        dicom.output_shape(10, 10, 0)


def test_resize_sizes_and_antialiasing(tmp_path):
    path = save(tmp_path, make_ds(breast()))
    small = dicom.read_mammogram(path, long_side=32, orient="none")
    assert small.image.shape == (32, 24) and small.transform.image_shape == (32, 24)
    big = dicom.read_mammogram(path, long_side=128, orient="none")
    assert big.image.shape == (128, 96)
    stripes = np.zeros((64, 48), np.float32)
    stripes[:, ::2] = 1.0
    down = dicom.resize(stripes, (32, 24))
    np.testing.assert_allclose(down, 0.5, atol=1e-6)  # area averaging: no aliasing


@pytest.mark.parametrize("flipped", [False, True])
def test_transform_round_trips(flipped):
    t = dicom.PixelTransform((3840, 3072), (1536, 1229), flipped)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 3000, size=(5, 7, 2))
    np.testing.assert_allclose(t.inverse_points(t.forward_points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.forward_points(t.inverse_points(pts)), pts, atol=1e-9)
    boxes = np.array([[100, 200, 300, 500], [0, 0, 3840, 3072]], np.float64)
    fwd = t.forward_boxes(boxes)
    assert np.all(fwd[:, 2] > fwd[:, 0]) and np.all(fwd[:, 3] > fwd[:, 1])
    np.testing.assert_allclose(fwd[1], [0, 0, 1536, 1229], atol=1e-9)
    np.testing.assert_allclose(t.inverse_boxes(fwd), boxes, atol=1e-9)
    assert t.forward_boxes(np.zeros((0, 4))).shape == (0, 4)
    assert dicom.PixelTransform.from_list(t.to_list()) == t
    assert all(isinstance(v, float) for v in t.to_list())
    with pytest.raises(ValueError):
        dicom.PixelTransform.from_list([1, 2, 3])


def test_box_on_bright_blob_maps_onto_blob(tmp_path):
    # A right breast stored mirrored; the blob at original rows 40-48, cols 32-40 (mirrored).
    pix = breast("right")
    path = save(tmp_path, make_ds(pix, ImageLaterality="R"))
    res = dicom.read_mammogram(path, long_side=32, orient="left")
    assert res.transform.flipped
    box = np.array([[40, COLS - 16, 48, COLS - 8]], np.float64)  # (y0, x0, y1, x1) original
    y0, x0, y1, x1 = np.round(res.transform.forward_boxes(box)[0]).astype(int)
    assert (y0, x0, y1, x1) == (20, 4, 24, 8)
    inside = res.image[y0:y1, x0:x1]
    assert inside.min() > 0.95 and res.image.mean() < 0.7
    # A mark at the blob's centre in the output maps back to the blob's centre in the original.
    back = res.transform.inverse_points(np.array([[22.0, 6.0]]))[0]
    np.testing.assert_allclose(back, [44.0, COLS - 12.0])
