"""Tests of keras_hourglass.examplegen and keras_hourglass.tfx_module without TFX installed.

The TFX executors call `tuner_fn(fn_args)` then `tuner.search(**fit_kwargs)` and
`get_best_hyperparameters()[0].get_config()`, and `run_fn(fn_args)` with that config: these tests
do the same with a stand-in `FnArgs` and a stand-in `tfx.v1.components.TunerFnResult`. The real
pipeline (ImportExampleGen -> Tuner -> Trainer -> Pusher) is tests/test_tfx_pipeline.py.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import types

import pytest

from keras_hourglass import contract
from keras_hourglass.errors import InputError
from test_tuning import TINY, make_prepared

#: ExampleGen-like files: gzipped, names that say nothing of the stratum, strata mixed in each file.
EXAMPLEGEN_FILE = "data_tfrecord-{:05d}-of-{:05d}.gz"


def write_examplegen_split(prep: str, split: str, out: str, num_files: int = 2) -> dict[str, int]:
    """Re-writes PREP/<split> the way ExampleGen does. Returns: {label: examples}."""
    import tensorflow as tf

    from keras_hourglass.data import records

    serialized = [r.numpy() for f in records.list_files(prep, split) for r in tf.data.TFRecordDataset(f)]
    os.makedirs(out, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for index in range(num_files):
        with tf.io.TFRecordWriter(os.path.join(out, EXAMPLEGEN_FILE.format(index, num_files)), options) as writer:
            for record in serialized[index::num_files]:
                writer.write(record)
    labels = [tf.train.Example.FromString(r).features.feature["label"].bytes_list.value[0].decode()
              for r in serialized]
    return dict(collections.Counter(labels))


@pytest.fixture(scope="module")
def examplegen(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("examplegen"))
    prep = make_prepared(root)
    counts = {split: write_examplegen_split(prep, split, os.path.join(root, "eg", f"Split-{name}"))
              for split, name in (("train", "train"), ("val", "eval"))}
    return {"root": root, "prep": prep, "counts": counts,
            "train": [os.path.join(root, "eg", "Split-train", "*")],
            "eval": [os.path.join(root, "eg", "Split-eval", "*")]}


def test_staged_strata_come_from_each_examples_label(examplegen, tmp_path):
    import tensorflow as tf

    from keras_hourglass.data import records
    from keras_hourglass.examplegen import stage_examples

    out = stage_examples(examplegen["train"], examplegen["eval"], tmp_path / "staged")
    manifest = json.loads((tmp_path / "staged" / "manifest.json").read_text())
    original = json.loads(open(os.path.join(examplegen["prep"], "manifest.json")).read())
    assert manifest["preprocessing"]["long_side"] == original["preprocessing"]["long_side"] == 64
    for split in ("train", "val"):
        expected = examplegen["counts"][split]
        assert {k: v for k, v in manifest["images_written"][split].items() if v} == expected
        for label in contract.LABELS:
            for path in records.list_files(out, split, label):
                for record in tf.data.TFRecordDataset(path):
                    assert records.parse_example(record)["label"].numpy().decode() == label
    # The training pipeline reads the staged directory as any prepared one.
    from keras_hourglass.data import pipeline

    batch = next(iter(pipeline.training_dataset(out, phase="patch", batch_size=2, stride=4, input_multiple=8,
                                                patch_size=32, seed=1)))
    assert tuple(batch[0].shape) == (2, 32, 32, 1)


def test_staging_bad_input_is_one_line_naming_the_file(tmp_path):
    import tensorflow as tf

    from keras_hourglass.examplegen import stage_examples

    with pytest.raises(InputError, match="matches no ExampleGen file"):
        stage_examples([str(tmp_path / "none" / "*")], [str(tmp_path / "none" / "*")], tmp_path / "a")
    alien = tmp_path / "alien.gz"
    example = tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    with tf.io.TFRecordWriter(str(alien), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(InputError) as info:
        stage_examples([str(alien)], [str(alien)], tmp_path / "b")
    assert info.value.path == str(alien) and "\n" not in str(info.value)


def test_unknown_custom_config_key_is_named():
    from keras_hourglass.tfx_module import custom_config

    with pytest.raises(InputError, match="unknown key 'max_trail'"):
        custom_config(types.SimpleNamespace(custom_config={"tune": {"max_trail": 2}}))


def test_module_does_not_import_tfx_or_tensorflow():
    import subprocess

    code = "import sys, keras_hourglass.tfx_module; print(sorted(m for m in ('tfx', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


TUNE = {"tuner": "random", "max_trials": 2, "epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "preset": "tiny",
        "model_options": TINY, "crop_size": 768, "val_images": 6, "seed": 1, "run_eagerly": True,
        "space": {"patch_size": {"fixed": 96}, "sigmas": {"values": ["24,48", "48"]}}}
"""The tiny search of tests/test_tuning.py (TUNE_FLAGS) as custom_config['tune']."""


@pytest.mark.slow
def test_tuner_fn_then_run_fn_write_a_verified_serving_model(examplegen, tmp_path, monkeypatch, capsys):
    from export.verify import verify_saved_model
    from keras_hourglass.cli.main import main
    from keras_hourglass.tfx_module import run_fn, tuner_fn

    # What TFX provides: tfx.v1.components.TunerFnResult and the FnArgs of each executor.
    TunerFnResult = collections.namedtuple("TunerFnResult", ["tuner", "fit_kwargs"])
    for name in ("tfx", "tfx.v1", "tfx.v1.components"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["tfx.v1.components"].TunerFnResult = TunerFnResult
    fn_args = types.SimpleNamespace(working_dir=str(tmp_path / "tuner"), train_files=examplegen["train"],
                                    eval_files=examplegen["eval"], train_steps=None, eval_steps=None,
                                    custom_config={"tune": TUNE, "staging_dir": str(tmp_path / "staging")})
    result = tuner_fn(fn_args)
    assert isinstance(result, TunerFnResult) and result.fit_kwargs == {}
    result.tuner.search(**result.fit_kwargs)
    assert [t.status for t in result.tuner.oracle.trials.values()] == ["COMPLETED", "COMPLETED"]
    assert result.tuner.oracle.objective.name == "val_sensitivity"
    best = json.loads(json.dumps(result.tuner.get_best_hyperparameters()[0].get_config()))  # what TFX stores
    assert glob.glob(str(tmp_path / "tuner" / "logs" / "trial_*"))  # the HParams dashboard of the search

    serving = tmp_path / "trainer" / "Format-Serving"
    run_args = types.SimpleNamespace(
        train_files=examplegen["train"], eval_files=examplegen["eval"], train_steps=None, eval_steps=None,
        hyperparameters=best, model_run_dir=str(tmp_path / "trainer" / "model_run"),
        serving_model_dir=str(serving),
        custom_config={"train": {"patch_epochs": 1, "full_epochs": 0, "steps_per_epoch": 1, "val_images": 2},
                       "export": {"max_marks": 4, "verify": "ops"}})
    out = run_fn(run_args)
    assert out["export"]["path"] == str(serving)
    assert (serving / "saved_model.pb").is_file() and not any(p.name.isdigit() for p in serving.iterdir())
    config = json.loads((tmp_path / "trainer" / "model_run" / "config.json").read_text())
    assert config["hyperparameters"]["omega"] == pytest.approx(best["values"]["omega"])  # the Tuner's best
    assert config["hyperparameters"]["patch_epochs"] == 1  # custom_config['train'] wins
    assert glob.glob(str(tmp_path / "trainer" / "model_run" / "logs" / "**" / "*.tfevents.*"), recursive=True)
    assert not os.listdir(tmp_path / "staging") or all("tune" in n for n in os.listdir(tmp_path / "staging"))
    # Our full verification (ops, saved_model_cli show/run, warmup replay) accepts it; raises otherwise.
    report = verify_saved_model(str(serving), stride=config["model"]["output_stride"], max_marks=4, image_hw=(24, 16))
    assert report.warmup_records > 0
    contract = json.loads((serving / "assets.extra" / "keras_hourglass.json").read_text())
    assert contract["long_side"] == 64
    # Pusher copies it to SERVING_BASE/<version>/: predict reads it there.
    base = tmp_path / "serving" / "hourglass"
    import shutil

    shutil.copytree(serving, base / "1796140000")
    dicom = sorted(glob.glob(os.path.join(examplegen["root"], "synth", "**", "*.dcm"), recursive=True))[0]
    capsys.readouterr()
    assert main(["predict", "--saved-model", str(base), dicom]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["num_marks"] >= 0
