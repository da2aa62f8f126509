"""Tests of export/: signatures, equality with Keras + find_peaks, verification, atomic versions, warmup."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from export import saved_model as sm  # noqa: E402
from keras_hourglass.model import model_input_multiple  # noqa: E402
from export.signatures import HourglassDetector, decode_png_image  # noqa: E402
from export.verify import VerificationError, check_ops, verify_saved_model  # noqa: E402
from export.warmup import read_warmup_requests  # noqa: E402
from keras_hourglass.errors import InputError  # noqa: E402
from keras_hourglass.cli.main import main  # noqa: E402
from keras_hourglass.peaks import find_peaks  # noqa: E402
from serving_doubles import conv_model, random_image, shared_export, tiny_hourglass  # noqa: E402

# tiny_hourglass: 1 stack, depth 2, output stride 4 -> input multiple 16.
STRIDE, MULTIPLE, MAX_MARKS, THRESHOLD, LONG_SIDE = 4, 16, 6, -1e9, 64


def make_detector(peak_fn=None, seed=0) -> HourglassDetector:
    return HourglassDetector(
        tiny_hourglass(seed=seed),
        stride=STRIDE,
        input_multiple=MULTIPLE,
        max_marks=MAX_MARKS,
        threshold=THRESHOLD,
        long_side=LONG_SIDE,
        peak_fn=peak_fn,
    )


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1].path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One fully verified export (op check + saved_model_cli show/run + warmup replay)."""
    detector, result = shared_export(tmp_path_factory)
    assert (detector.stride, detector.input_multiple, detector.max_marks) == (STRIDE, MULTIPLE, MAX_MARKS)
    assert detector.input_multiple == model_input_multiple(detector.model)
    return detector, result


def test_export_writes_version_1_with_metadata(exported):
    _, result = exported
    assert result.version == 1 and result.path.endswith(os.sep + "1")
    assert sorted(os.listdir(os.path.dirname(result.path))) == ["1"]  # no temp dir left behind
    meta = sm.read_export_metadata(result.path)
    assert meta["stride"] == STRIDE and meta["input_multiple"] == MULTIPLE
    assert meta["max_marks"] == MAX_MARKS and meta["long_side"] == LONG_SIDE
    assert meta["signatures"] == ["serving_default", "detect_png", "metadata"]
    assert meta["format"] == "keras-hourglass-export/2" and meta["operating_points"] is None
    assert meta["preprocessing"]["long_side"] == LONG_SIDE and meta["preprocessing"]["windowing"] == "auto"
    assert meta["lineage"]["tensorflow_version"] == tf.__version__


def test_signatures_as_saved_model_cli_shows_them(exported):
    _, result = exported
    sigs = result.verification["signatures"]  # parsed from `saved_model_cli show --all`
    assert set(sigs) == {"serving_default", "detect_png", "metadata"}
    assert sigs["metadata"]["inputs"] == {"request": ["DT_INT32", "(-1)"]}
    assert sigs["metadata"]["outputs"] == {"metadata": ["DT_STRING", "(-1)"], "metadata_sha256": ["DT_STRING", "(-1)"]}
    sd, png = sigs["serving_default"], sigs["detect_png"]
    assert sd["inputs"] == {"image": ["DT_FLOAT", "(-1, -1, -1, 1)"]}
    assert sd["outputs"] == {
        "heatmap": ["DT_FLOAT", "(-1, -1, -1, 1)"],
        "marks": ["DT_FLOAT", f"(-1, {MAX_MARKS}, 3)"],
        "num_marks": ["DT_INT32", "(-1)"],
        "long_side": ["DT_INT32", "(-1)"],
    }
    assert png["inputs"] == {"image_bytes": ["DT_STRING", "(-1)"], "threshold": ["DT_FLOAT", "(-1)"]}
    assert png["outputs"] == {
        "marks": ["DT_FLOAT", f"(-1, {MAX_MARKS}, 3)"],
        "num_marks": ["DT_INT32", "(-1)"],
        "long_side": ["DT_INT32", "(-1)"],
    }
    # saved_model_cli run (subprocess, plain TF) on a 30 x 21 image: heatmap cropped to ceil(/4).
    shapes = result.verification["cli_output_shapes"]
    assert shapes == {"heatmap": [1, 8, 6, 1], "marks": [1, MAX_MARKS, 3], "num_marks": [1], "long_side": [1]}
    # The warmup records (every signature) were replayed in a plain-TensorFlow subprocess:
    # metadata, then per batch size (1): serving_default portrait + landscape, detect_png x 2.
    assert result.verification["warmup_records_replayed"] == 5


def _reference(detector, images: np.ndarray, threshold: float):
    """Keras model on zero-padded images + find_peaks on the cropped heatmap, marks clipped to the image."""
    _, h, w, _ = images.shape
    ph, pw = -h % MULTIPLE, -w % MULTIPLE
    padded = np.pad(images, [(0, 0), (0, ph), (0, pw), (0, 0)])
    heatmap = np.asarray(detector.model(padded, training=False))[:, : -(-h // STRIDE), : -(-w // STRIDE)]
    marks, num = find_peaks(heatmap, max_marks=MAX_MARKS, threshold=threshold, stride=STRIDE)
    marks, num = np.array(marks), np.asarray(num)
    valid = np.arange(MAX_MARKS)[None, :] < num[:, None]
    marks[..., 0] = np.where(valid, np.minimum(marks[..., 0], h), marks[..., 0])
    marks[..., 1] = np.where(valid, np.minimum(marks[..., 1], w), marks[..., 1])
    return heatmap, marks, num


@pytest.mark.parametrize("hw", [(32, 48), (30, 41)])
def test_serving_default_equals_keras_plus_find_peaks(exported, loaded, hw):
    detector, _ = exported
    images = np.stack([random_image(*hw, seed=1), random_image(*hw, seed=2)])[..., None]
    out = loaded.signatures["serving_default"](image=tf.constant(images))
    heatmap, marks, num = _reference(detector, images, THRESHOLD)
    assert out["heatmap"].shape == heatmap.shape
    np.testing.assert_allclose(out["heatmap"].numpy(), heatmap, atol=1e-5)
    np.testing.assert_array_equal(out["num_marks"].numpy(), num)
    assert num.min() > 0  # threshold -1e9: every local maximum is a mark
    np.testing.assert_allclose(out["marks"].numpy(), marks, atol=1e-4)
    np.testing.assert_array_equal(out["long_side"].numpy(), [LONG_SIDE, LONG_SIDE])


def test_heatmap_of_a_size_off_the_stride_is_ceil_and_verify_expects_it(exported, loaded):
    """29 x 22 is a multiple of neither the stride (4) nor the input multiple (16): the model sees 32 x 32
    (heatmap 8 x 8); the export crops to ceil(29 / 4) x ceil(22 / 4) = 8 x 6, which verify expects."""
    _, result = exported
    out = loaded.signatures["serving_default"](image=tf.zeros([1, 29, 22, 1]))
    assert out["heatmap"].shape == (1, 8, 6, 1)
    report = verify_saved_model(result.path, stride=STRIDE, max_marks=MAX_MARKS, image_hw=(29, 22), warmup=False)
    assert report.cli_output_shapes["heatmap"] == (1, 8, 6, 1)  # not the padded input's 32 / 4 = 8 x 8


def _png(image: np.ndarray, bits: int) -> bytes:
    scale, dtype = (65535, tf.uint16) if bits == 16 else (255, tf.uint8)
    return tf.io.encode_png(tf.cast(np.round(image * scale), dtype)[..., None]).numpy()


def test_png_decoding_normalises_8_and_16_bit_to_unit_range():
    values8 = np.array([[0, 1, 128, 255]], np.uint8)
    values16 = np.array([[0, 1, 40000, 65535]], np.uint16)
    d8 = decode_png_image(tf.io.encode_png(values8[..., None])).numpy()[..., 0]
    d16 = decode_png_image(tf.io.encode_png(values16[..., None])).numpy()[..., 0]
    np.testing.assert_allclose(d8, values8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(d16, values16 / 65535.0, atol=1e-7)


def test_detect_png_mixed_sizes_and_bit_depths_equal_reference(exported, loaded):
    detector, _ = exported
    a, b = random_image(30, 41, seed=3), random_image(24, 16, seed=4)
    # Per-image thresholds: NaN = the export default; the second one is so high that no mark survives.
    out = loaded.signatures["detect_png"](
        image_bytes=tf.constant([_png(a, 16), _png(b, 8)]), threshold=tf.constant([np.nan, 1e9], tf.float32)
    )
    qa = np.round(a * 65535) / 65535
    _, marks_a, num_a = _reference(detector, qa[None, ..., None].astype(np.float32), THRESHOLD)
    np.testing.assert_allclose(out["marks"].numpy()[0], marks_a[0], atol=1e-4)
    assert out["num_marks"].numpy().tolist() == [num_a[0], 0]
    np.testing.assert_array_equal(out["marks"].numpy()[1], np.tile([-1.0, -1.0, 0.0], (MAX_MARKS, 1)))


def test_warmup_records_are_prediction_logs_at_the_served_shapes(exported):
    _, result = exported
    logs = read_warmup_requests(result.path)
    assert 1 <= len(logs) <= 1000
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == [
        "metadata", "serving_default", "serving_default", "detect_png", "detect_png"]
    assert all(r.model_spec.name == "hourglass" for r in requests)
    shapes = [tf.make_ndarray(r.inputs["image"]).shape for r in requests[1:3]]
    assert shapes == [(1, LONG_SIDE, round(0.8 * LONG_SIDE), 1), (1, round(0.8 * LONG_SIDE), LONG_SIDE, 1)]
    assert requests[1].inputs["image"].ByteSize() < 100  # one value, broadcast (TensorProto compact form)
    for request, first in zip(requests[3:], ((LONG_SIDE, 51), (51, LONG_SIDE))):
        (png,) = tf.make_ndarray(request.inputs["image_bytes"])
        assert tuple(decode_png_image(png).shape[:2]) == first
        assert np.isnan(tf.make_ndarray(request.inputs["threshold"])).all()


def small_detector(peak_fn=None) -> HourglassDetector:
    return HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=MAX_MARKS, peak_fn=peak_fn)


def test_export_with_pyfunc_fails_verification_and_publishes_nothing(tmp_path):
    def py_peaks(heatmap, **kwargs):
        heatmap = tf.numpy_function(lambda h: h, [heatmap], tf.float32, stateful=False)
        heatmap.set_shape([None, None, None, 1])
        return find_peaks(heatmap, **kwargs)

    base = tmp_path / "hourglass"
    with pytest.raises(VerificationError, match="PyFunc"):
        sm.export_detector(small_detector(peak_fn=py_peaks), base, verify="ops")
    assert os.listdir(base) == []  # neither a version nor the temp dir


def test_jit_compiled_function_fails_the_op_check(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: tf.nn.relu(x) * 2.0, jit_compile=True,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f.get_concrete_function()})
    _, problems = check_ops(tmp_path)
    assert any("_XlaMustCompile=true" in p for p in problems)


def test_check_ops_accepts_the_real_export(exported):
    counts, problems = check_ops(exported[1].path)
    assert problems == [] and counts["DecodePng"] >= 1 and "PyFunc" not in counts
    assert "Assert" in counts  # the model's InputSizeCheck survives: the signature pads before it


def test_refuses_to_overwrite_an_existing_version(tmp_path):
    base = tmp_path / "hourglass"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"an older export")
    with pytest.raises(InputError, match="already exists"):
        sm.export_detector(small_detector(), base, version=1, verify="none")
    assert (base / "1" / "saved_model.pb").read_bytes() == b"an older export"
    assert sm.next_version(base) == 2 and sorted(os.listdir(base)) == ["1"]


def _complete(version_dir: str) -> bool:
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        sigs = proto.meta_graphs[0].signature_def
        return (
            {"serving_default", "detect_png"} <= set(sigs)
            and os.path.getsize(os.path.join(version_dir, "variables", "variables.index")) > 0
            and os.path.isfile(os.path.join(version_dir, "variables", "variables.data-00000-of-00001"))
            and os.path.getsize(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")) > 0
            and bool(sm.read_export_metadata(version_dir))
        )
    except (OSError, IndexError, ValueError, Exception):  # noqa: BLE001 - any failure = partial
        return False


class Poller(threading.Thread):
    """Looks at every numeric directory under `base` every millisecond, like TF Serving (slower) does."""

    def __init__(self, base):
        super().__init__(daemon=True)
        self.base, self.stop, self.seen, self.partial = str(base), threading.Event(), set(), set()

    def run(self):
        while not self.stop.is_set():
            for name in sm.list_versions(self.base) if os.path.isdir(self.base) else []:
                if name not in self.seen and name not in self.partial:
                    (self.seen if _complete(os.path.join(self.base, str(name))) else self.partial).add(name)
            time.sleep(0.001)


def test_atomic_versions_under_a_polling_watcher(tmp_path):
    base = tmp_path / "hourglass"
    poller = Poller(base)
    poller.start()
    try:
        detector = small_detector()
        versions = [sm.export_detector(detector, base, verify="none").version for _ in range(3)]
        # Control: the unsafe way (write straight into BASE/<n>) IS caught by the same poller.
        sm.export_detector(detector, base, verify="none", _atomic=False)
        time.sleep(0.05)
    finally:
        poller.stop.set()
        poller.join()
    assert versions == [1, 2, 3]
    assert {1, 2, 3} <= poller.seen and not ({1, 2, 3} & poller.partial)
    assert 4 in poller.partial  # the non-atomic export was seen half-written
    assert sorted(os.listdir(base)) == ["1", "2", "3", "4"]


def test_verify_rejects_a_directory_without_a_saved_model(tmp_path):
    with pytest.raises(VerificationError, match="no saved_model.pb"):
        verify_saved_model(tmp_path, run_cli=False, warmup=False)


def test_cli_export_writes_versions_and_refuses_overwrite(tmp_path, capsys):
    import json

    model_path = tmp_path / "run" / "model.keras"
    model_path.parent.mkdir()
    tiny_hourglass(seed=5).save(model_path)
    prep = tmp_path / "prepared"
    prep.mkdir()
    (prep / "manifest.json").write_text(json.dumps({"preprocessing": {"long_side": 96, "windowing": "auto",
                                                                        "orientation": "left"}}))
    (model_path.parent / "config.json").write_text(json.dumps({"data": {"prep_dir": str(prep)}}))
    base = tmp_path / "serving" / "hourglass"
    argv = ["export", "--model", str(model_path), "--base-path", str(base), "--verify", "ops", "--max-marks", "4"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 1 and out["metadata"]["input_multiple"] == MULTIPLE
    assert out["metadata"]["long_side"] == 96 and out["metadata"]["max_marks"] == 4
    pre = out["metadata"]["preprocessing"]
    assert {k: pre[k] for k in ("long_side", "windowing", "orientation")} == {
        "long_side": 96, "windowing": "auto", "orientation": "left"}
    assert out["metadata"]["tensorflow_version"] == tf.__version__
    assert main([*argv, "--version", "1"]) == 2
    assert "1: version already exists" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nope.keras"), "--base-path", str(base)]) == 2
    assert "nope.keras: no such model file" in capsys.readouterr().err
    assert sm.list_versions(base) == [1]


def test_warmup_covers_every_allowed_batch_size_of_the_batching_config(tmp_path, capsys):
    from pathlib import Path

    from serving.batching import allowed_batch_sizes

    config = Path(__file__).resolve().parents[1] / "serving" / "batching_parameters.txt"
    sizes = allowed_batch_sizes(config)
    assert sizes == (1, 2, 4)
    detector = HourglassDetector(conv_model(stride=2), stride=2, input_multiple=4, max_marks=3, long_side=40)
    result = sm.export_detector(detector, tmp_path / "hourglass", verify="none", batch_sizes=sizes)
    requests = [log.predict_log.request for log in read_warmup_requests(result.path)]
    seen = {}
    for request in requests:
        name = request.model_spec.signature_name
        key = "image" if name == "serving_default" else "image_bytes" if name == "detect_png" else "request"
        shape = tuple(d.size for d in request.inputs[key].tensor_shape.dim)
        seen.setdefault(name, set()).add(shape)
    assert {s[0] for s in seen["serving_default"]} == set(sizes) == {s[0] for s in seen["detect_png"]}
    assert {s[1:3] for s in seen["serving_default"]} == {(40, 32), (32, 40)}  # portrait and landscape
    assert result.metadata["warmup"] == {"long_side": 40, "shapes": [[40, 32], [32, 40]], "batch_sizes": [1, 2, 4]}
    assert len(requests) == 1 + 4 * len(sizes)
    loaded = tf.saved_model.load(result.path)  # every record runs (in-process: the subprocess replay is slow)
    for request in requests:
        outputs = loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        batch = next(iter(request.inputs.values())).tensor_shape.dim[0].size
        assert all(v.shape[0] == batch for v in outputs.values())
    # A batching file against TF Serving's rules: one line, exit 2, before any export.
    bad = tmp_path / "bad.txt"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n")
    model = tmp_path / "m.keras"
    conv_model(stride=2).save(model)
    assert main(["export", "--model", str(model), "--base-path", str(tmp_path / "b"), "--batching-parameters",
                 str(bad)]) == 2
    assert "must equal max_batch_size" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
