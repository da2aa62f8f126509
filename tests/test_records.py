"""records.py: the tf.train.Example schema round trip and the file layout."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_hourglass import contract
from keras_hourglass.data import records


def _example(image, **overrides):
    kwargs = dict(
        boxes=[[1.5, 2.0, 10.25, 12.0], [3.0, 4.0, 5.0, 6.0]],
        box_labels=["malignant", "benign"],
        finding_types=["mass", "calcification"],
        patient_hash="p" * 16, study_hash="s" * 16, image_hash="i" * 16,
        laterality="L", view="MLO", transform=[0.5, 0.0, 0.0, 0.5, 1.0, -2.0],
    )
    kwargs.update(overrides)
    return records.make_example(image, **kwargs)


def test_round_trip_is_exact_for_16_bit_pixels_boxes_and_strings():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(33, 47), dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 65535
    parsed = records.parse_example(tf.constant(_example(pixels).SerializeToString()))
    image = parsed["image"].numpy()
    assert image.shape == (33, 47, 1) and image.dtype == np.float32
    np.testing.assert_array_equal(np.round(image[..., 0] * 65535).astype(np.uint16), pixels)
    np.testing.assert_allclose(parsed["boxes"].numpy(), [[1.5, 2.0, 10.25, 12.0], [3.0, 4.0, 5.0, 6.0]])
    assert [b.decode() for b in parsed["box_labels"].numpy()] == ["malignant", "benign"]
    assert [b.decode() for b in parsed["finding_types"].numpy()] == ["mass", "calcification"]
    assert parsed["label"].numpy() == b"malignant"  # derived: most severe finding
    assert parsed["patient_hash"].numpy() == b"p" * 16
    assert parsed["laterality"].numpy() == b"L" and parsed["view"].numpy() == b"MLO"
    np.testing.assert_allclose(parsed["transform"].numpy(), [0.5, 0, 0, 0.5, 1, -2])
    assert int(parsed["height"]) == 33 and int(parsed["width"]) == 47


def test_png16_is_a_standard_png_for_pil_too():
    from keras_hourglass.data.png16 import decode_png16, encode_png16

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (2, 3), (17, 5)]:
        pixels = rng.integers(0, 65536, size=shape, dtype=np.uint16)
        np.testing.assert_array_equal(decode_png16(encode_png16(pixels)), pixels)
    with pytest.raises(ValueError, match="NaN"):
        encode_png16(np.array([[np.nan]], np.float32))


def test_float_images_quantise_to_1_over_65535_and_normals_have_no_boxes():
    image = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    example = _example(image, boxes=np.zeros((0, 4)), box_labels=[], finding_types=[])
    parsed = records.parse_example(tf.constant(example.SerializeToString()))
    assert np.max(np.abs(parsed["image"].numpy()[..., 0] - image)) <= 0.5 / 65535 + 1e-7
    assert parsed["boxes"].shape == (0, 4)
    assert parsed["label"].numpy() == b"normal"


def test_make_example_validates_lengths_and_labels():
    image = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        _example(image, box_labels=["benign"])
    with pytest.raises(ValueError, match="unknown label"):
        _example(image, box_labels=["cancer", "benign"])
    with pytest.raises(ValueError, match="height and width"):
        _example(b"\x89PNG")
    assert contract.stratum_of(["benign", "high_risk", "benign"]) == "high_risk"
    assert contract.stratum_of([]) == "normal"


def test_layout_names_atomic_writes_and_listing(tmp_path):
    name = contract.shard_file_name("malignant", 3)
    assert name == "malignant-00003.tfrecord"
    example = _example(np.zeros((8, 8), np.float32)).SerializeToString()
    path = tmp_path / "train" / name
    assert records.write_records_atomic(path, [example, example]) == 2
    (tmp_path / "train" / ".benign-00000.tfrecord.99.tmp").write_bytes(b"partial")
    records.write_records_atomic(tmp_path / "train" / "normal-00000-of-00002.tfrecord", [example])  # Beam's name
    assert [os.path.basename(f) for f in records.list_files(tmp_path, "train")] == [
        "malignant-00003.tfrecord", "normal-00000-of-00002.tfrecord"]
    assert records.list_files(tmp_path, "train", "benign") == []
    assert sum(1 for _ in tf.data.TFRecordDataset(str(path))) == 2
    assert not [f for f in os.listdir(tmp_path / "train") if f.endswith(".tmp") and "malignant" in f]


def test_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield b"x"
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        records.write_records_atomic(tmp_path / "train" / "normal-00000.tfrecord", broken())
    assert os.listdir(tmp_path / "train") == []


def test_the_tensorflow_free_builder_writes_tf_train_example_bytes():
    import subprocess
    import sys

    from keras_hourglass.data import example_codec

    cases = [dict(image=np.random.default_rng(0).random((20, 12)).astype(np.float32),
                  boxes=[[1, 2, 3.3, 4.7], [0, 0, 1e-8, -0.0]], box_labels=["benign", "malignant"],
                  finding_types=["mass", "calcification"], patient_hash="abc", study_hash="d", image_hash="e",
                  laterality="L", view="CC", transform=[1.5, -2, 3e30]),
             dict(image=b"\x89PNG...", height=3, width=4, boxes=np.zeros((0, 4)), box_labels=[], finding_types=[],
                  patient_hash="", study_hash="", image_hash="x", label="benign")]
    for kw in cases:
        reference = tf.train.Example()  # built field by field with TensorFlow's own classes
        serialized = example_codec.serialize_example(**kw)
        reference.ParseFromString(serialized)
        assert reference.SerializeToString(deterministic=True) == serialized
        assert records.make_example(**kw).SerializeToString(deterministic=True) == serialized
        feature = reference.features.feature
        assert feature["image/height"].WhichOneof("kind") == "int64_list"
        assert feature["box_labels"].WhichOneof("kind") == "bytes_list"  # set even when empty
        assert feature["transform"].WhichOneof("kind") == "float_list"
    code = "import sys; import keras_hourglass.data.example_codec, keras_hourglass.data.plan; " \
           "print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_prepared_file_names_come_from_the_contract():
    assert contract.shard_pattern("benign") == "benign-*.tfrecord" and contract.shard_pattern() == "*-*.tfrecord"
    assert contract.done_marker_name("train/benign-00002.tfrecord") == "train/benign-00002.done"
    with pytest.raises(ValueError, match="unknown stratum"):
        contract.shard_file_name("cancer", 0)
    with pytest.raises(ValueError, match="unknown stratum"):
        records.list_files("/nonexistent", "train", "cancer")
