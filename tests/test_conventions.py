"""Shared conventions live in `keras_hourglass.contract` and every consumer uses those very objects."""

import importlib
import subprocess

import pytest

from keras_hourglass import contract

# (consumer module, names it must take from the contract module)
CONSUMERS = [
    ("keras_hourglass.data.example_codec", ["LABELS", "stratum_of"]),
    ("keras_hourglass.data.plan", ["LABELS", "SPLITS", "stratum_of"]),
    ("keras_hourglass.data.records", ["LABELS"]),
    ("keras_hourglass.data.pipeline", ["LABELS", "TRAINING_POSITIVE_LABELS"]),
    ("keras_hourglass.data.importers.canonical", ["LABELS", "SPLITS", "FINDING_TYPES"]),
    ("keras_hourglass.data.importers.vindr", ["FINDING_LABELS"]),
    ("keras_hourglass.data.synthetic.dataset", ["LABELS"]),
    ("keras_hourglass.data.synthetic.findings", ["FINDING_LABELS", "FINDING_TYPES"]),
    ("keras_hourglass.evaluation.froc", ["EVALUATION_POSITIVE_LABELS"]),
    ("keras_hourglass.evaluation.predict", ["EVALUATION_POSITIVE_LABELS"]),
    ("keras_hourglass.evaluation.report", ["EVALUATION_POSITIVE_LABELS"]),
    ("keras_hourglass.evaluation.plots", ["EVALUATION_POSITIVE_LABELS"]),
    ("keras_hourglass.examplegen", ["LABELS"]),
]


@pytest.mark.parametrize("module_name, names", CONSUMERS, ids=[c[0] for c in CONSUMERS])
def test_consumers_use_the_contract_objects(module_name, names):
    module = importlib.import_module(module_name)
    for name in names:
        assert getattr(module, name) is getattr(contract, name), f"{module_name}.{name} is a copy"


def test_the_two_positive_sets_are_distinct_and_no_module_has_an_ambiguous_name():
    assert contract.TRAINING_POSITIVE_LABELS == ("high_risk", "malignant")
    assert contract.EVALUATION_POSITIVE_LABELS == ("malignant",)
    for module_name, _names in CONSUMERS:
        assert not hasattr(importlib.import_module(module_name), "POSITIVE_LABELS"), module_name


def test_labels_and_strata():
    assert contract.LABELS == ("normal", "benign", "high_risk", "malignant")
    assert contract.FINDING_LABELS == contract.LABELS[1:]
    assert set(contract.TRAINING_POSITIVE_LABELS) | set(contract.EVALUATION_POSITIVE_LABELS) <= set(
        contract.FINDING_LABELS)
    assert contract.stratum_of(["benign", "malignant", "high_risk"]) == "malignant"
    assert contract.stratum_of([]) == "normal"
    with pytest.raises(ValueError, match="unknown label"):
        contract.stratum_of(["cancer"])


def test_importing_the_contract_does_not_import_tensorflow(imports_tensorflow):
    assert not imports_tensorflow("keras_hourglass.contract")


def test_the_manifest_preprocessing_block():
    block = contract.preprocessing_block(long_side=1536, windowing="auto", orientation="left",
                                         max_pixels=40_000_000, decoder="pydicom")
    assert tuple(block) == contract.PREPROCESSING_KEYS
    assert block["long_side"] == block["size"] == 1536 and block["png_bits"] == 16
    assert contract.long_side_of({"preprocessing": block}) == 1536
    with pytest.raises(KeyError):
        contract.long_side_of({})


# (literal, the one file that defines it, files of work in progress elsewhere that may still hold a copy)
SINGLE_DEFINITIONS = [
    ('("normal", "benign", "high_risk", "malignant")', "keras_hourglass/contract.py", ()),
    ('("high_risk", "malignant")', "keras_hourglass/contract.py", ()),
    ('("malignant",)', "keras_hourglass/contract.py", ()),
    ('("train", "val", "test")', "keras_hourglass/contract.py", ()),
    ('("mass", "calcification", "distortion", "asymmetry", "other")', "keras_hourglass/contract.py", ()),
    (':05d}.tfrecord', None, ()),  # the chunk name is built from RECORD_SUFFIX in the contract only
    (':05d}{RECORD_SUFFIX}', "keras_hourglass/contract.py", ()),
    ('-SSSSS-of-NNNNN"', "keras_hourglass/contract.py", ()),
    ("os.replace(", "keras_hourglass/atomic.py", ()),
    ("os.fsync(", "keras_hourglass/atomic.py", ()),
    ('pool_size, 1, "SAME")', "keras_hourglass/nms.py", ()),
    # bench_serving is not ours to edit; verify.py's copy is inside the script it runs in a fresh interpreter
    ('"serving_default"', "serving/contract.py", ("benchmarks/bench_serving.py", "export/verify.py")),
    ('"detect_png"', "serving/contract.py", ()),
    ('"keras_hourglass.json"', "serving/contract.py", ()),
    ("def encode_png16(", "keras_hourglass/data/png16.py", ()),
    ("def list_versions(", "serving/contract.py", ()),
    ("def read_export_metadata(", "serving/contract.py", ()),
    ('"stage_one_score"', "serving/contract.py", ()),
    # the two-stage combination and the patch crop: one rule each, evaluated by numpy and by TensorFlow
    ("1e-6) ** (1 - w)", "keras_hourglass/two_stage/combine.py", ()),
    ("tf.image.crop_and_resize(", "keras_hourglass/two_stage/patches.py", ()),
    ("def pad_to_multiple(", "keras_hourglass/model_input.py", ()),
    ("def _pad_to_multiple(", None, ()),
]


def _git_grep_files(literal: str) -> set[str] | None:
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except OSError:
        return None
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
        return None
    found = subprocess.run(["git", "-C", root, "grep", "-lF", "-e", literal, "--", "*.py", ":!tests"],
                           capture_output=True, text=True)
    if found.returncode not in (0, 1):
        return None
    return set(found.stdout.split())


@pytest.mark.parametrize("literal, home, in_progress", SINGLE_DEFINITIONS, ids=[d[0] for d in SINGLE_DEFINITIONS])
def test_each_convention_is_defined_once(literal, home, in_progress):
    files = _git_grep_files(literal)
    if files is None:
        pytest.skip("not a git checkout")
    assert files - set(in_progress) == ({home} if home else set()), f"{literal} is written in {sorted(files)}"


# The export/serving half of the contract: `serving.contract` (TF-free, what clients import) and the one PNG16 codec.
SERVING_CONSUMERS = [
    ("export.signatures", ["SERVING_DEFAULT", "DETECT_PNG", "METADATA_SIGNATURE", "SIGNATURE_NAMES"]),
    ("export.saved_model", ["METADATA_FILE", "list_versions", "metadata_path", "read_export_metadata"]),
    ("export.verify", ["SERVING_DEFAULT", "SIGNATURE_NAMES", "metadata_path"]),
    ("export.two_stage", ["PROBABILITY_OUTPUT", "STAGE_ONE_SCORE_OUTPUT", "inclusive_threshold"]),
    ("export.verify_two_stage", ["DETECT_PNG", "SERVING_DEFAULT", "PROBABILITY_OUTPUT", "STAGE_ONE_SCORE_OUTPUT"]),
    ("serving.client", ["DETECT_PNG", "IMAGE_SIGNATURES", "SERVING_DEFAULT", "list_versions", "read_export_metadata"]),
    ("serving.cli", ["DETECT_PNG", "IMAGE_SIGNATURES", "SERVING_DEFAULT"]),
]


@pytest.mark.parametrize("module_name, names", SERVING_CONSUMERS, ids=[c[0] for c in SERVING_CONSUMERS])
def test_export_and_serving_use_the_serving_contract_objects(module_name, names):
    pytest.importorskip("tensorflow")
    from serving import contract as serving_contract

    module = importlib.import_module(module_name)
    for name in names:
        assert getattr(module, name) is getattr(serving_contract, name), f"{module_name}.{name} is a copy"


def test_one_pad_to_multiple():
    pytest.importorskip("tensorflow")
    from export import signatures
    from keras_hourglass import model_input
    from keras_hourglass.data import pipeline

    assert pipeline.pad_to_multiple is signatures.pad_to_multiple is model_input.pad_to_multiple
    import numpy as np

    image = np.arange(1, 36, dtype=np.float32).reshape(5, 7, 1)
    for batch in (image, image[None]):  # the pipeline pads one image, the signatures a batch
        padded = model_input.pad_to_multiple(batch, 4).numpy()
        assert padded.shape[-3:] == (8, 8, 1) and padded.ndim == batch.ndim
        assert (padded[..., :5, :7, :] == batch).all() and padded.sum() == batch.sum()


def test_one_png16_encoder():
    from keras_hourglass.data import png16
    from serving import client

    assert client.encode_png16 is png16.encode_png16
    assert importlib.import_module("export.warmup")._flat_png16  # encodes through png16 (imported lazily)


def test_the_serving_contract_does_not_import_tensorflow(imports_tensorflow):
    assert not imports_tensorflow("serving.contract", "serving.client")
