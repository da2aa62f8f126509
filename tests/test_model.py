"""Tests of keras_hourglass.model (blocks, presets, factory, helpers)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_hourglass
from keras_hourglass.model import (
    PRESETS,
    build_hourglass,
    inference_model,
    input_multiple,
    model_input_multiple,
    model_stride,
    resolve_config,
)
from keras_hourglass.model.blocks import HourglassBlock, ResidualBlock

# Small overrides that keep builds and forward passes fast.
SMALL = {"num_features": 8, "stem_features": 4, "depth": 2}


@pytest.fixture(scope="module")
def tiny():
    return build_hourglass("tiny")


@pytest.fixture(scope="module")
def small():
    """Two stacks of depth 2 (input multiple 16)."""
    return build_hourglass("tiny", head_initializer="glorot_uniform", **SMALL)  # outputs that can differ


def residual_params(cin: int, cout: int) -> int:
    """Parameters of a pre-activation bottleneck (BN has 4 per channel)."""
    mid = cout // 2  # the two convolutions that feed a batch norm have no bias
    total = 4 * cin + cin * mid + 4 * mid + 9 * mid * mid + 4 * mid + (mid * cout + cout)
    return total + (cin * cout + cout if cin != cout else 0)


def test_tiny_preset_outputs_and_size(tiny):
    assert tiny.count_params() < 100_000
    assert tiny.input.name == "image" and tiny.input.dtype == "float32"
    assert tuple(tiny.input.shape) == (None, None, None, 1)
    assert tiny.output_names == ["heatmap_stack1", "heatmap"]
    multiple = input_multiple(resolve_config("tiny"))
    assert multiple == 4 * 2**3
    for height, width in [(32, 32), (64, 96)]:
        outputs = tiny(np.random.default_rng(0).random((2, height, width, 1), np.float32))
        assert isinstance(outputs, list) and len(outputs) == 2
        for out in outputs:
            assert tuple(out.shape) == (2, height // 4, width // 4, 1)
            assert out.dtype == "float32"
            assert np.all(np.isfinite(out.numpy()))


def test_public_lazy_names_point_to_model():
    assert keras_hourglass.build_hourglass is build_hourglass
    assert keras_hourglass.inference_model is inference_model


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_output_stride_and_single_stack(stride):
    model = build_hourglass("tiny", num_stacks=1, output_stride=stride, **{**SMALL, "depth": 1})
    assert model.output_names == ["heatmap"]
    multiple = stride * 2
    out = model(np.zeros((1, 2 * multiple, 3 * multiple, 1), np.float32))
    assert not isinstance(out, (list, tuple))
    assert tuple(out.shape) == (1, 2 * multiple // stride, 3 * multiple // stride, 1)
    assert model_stride(model) == stride
    assert model_input_multiple(model) == multiple


def test_stacks_without_intermediate_supervision_single_output():
    options = {**SMALL, "depth": 1, "num_stacks": 3}
    model = build_hourglass("tiny", intermediate_supervision=False, **options)
    assert model.output_names == ["heatmap"]
    stacked = build_hourglass("tiny", **options)
    assert stacked.output_names == ["heatmap_stack1", "heatmap_stack2", "heatmap"]
    # Same weights either way: the intermediate heads are re-injected into the next stack.
    assert model.count_params() == stacked.count_params()


def test_paper_preset_structure_without_forward_pass():
    config = resolve_config("paper")
    assert config["num_features"] == 256 and config["depth"] == 4
    assert input_multiple(config) == 64
    model = build_hourglass("paper")
    # Each hourglass of depth d holds 3 residual modules per level plus one at the bottom.
    hourglass = model.get_layer("hourglass1")
    assert isinstance(hourglass, HourglassBlock)
    assert hourglass.count_params() == (3 * 4 + 1) * residual_params(256, 256)
    assert 6_000_000 < model.count_params() < 7_500_000
    assert model.output_names == ["heatmap_stack1", "heatmap"]
    assert model_stride(model) == 4


def test_residual_block_projection_and_params():
    identity = ResidualBlock(8)
    identity.build((None, None, None, 8))
    assert identity.projection is None and identity.count_params() == residual_params(8, 8)
    projected = ResidualBlock(8)
    projected.build((None, None, None, 3))
    assert projected.projection is not None and projected.count_params() == residual_params(3, 8)
    out = projected(np.ones((1, 4, 4, 3), np.float32))
    assert tuple(out.shape) == (1, 4, 4, 8)


def test_keras_round_trip_identical_outputs(small, tmp_path):
    rng = np.random.default_rng(1)
    # Move the batch-norm statistics away from their initial values first.
    small(rng.random((2, 32, 32, 1), np.float32), training=True)
    path = tmp_path / "model.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    image = rng.random((2, 32, 48, 1), np.float32)
    expected = small(image)
    for before, after in zip(expected, loaded(image)):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert loaded.output_names == small.output_names
    assert model_stride(loaded) == 4
    assert model_input_multiple(loaded) == 16
    final = inference_model(loaded)
    assert final.output_names == ["heatmap"]
    np.testing.assert_array_equal(final(image).numpy(), expected[-1].numpy())
    assert inference_model(final) is final


def test_fixed_input_size_must_be_a_multiple():
    with pytest.raises(ValueError, match=r"height 60 is not a multiple of 32"):
        build_hourglass("tiny", input_size=(60, 64))
    model = build_hourglass("tiny", input_size=(64, 32), num_stacks=1, depth=3, num_features=8, stem_features=4)
    assert tuple(model.output.shape) == (None, 16, 8, 1)
    assert model_stride(model) == 4


def test_wrong_size_at_call_time(small):
    with pytest.raises(ValueError, match=r"width 40 is not a multiple of 16"):
        small(np.zeros((1, 32, 40, 1), np.float32))
    # Dynamic shapes: the check runs in the graph (as in a serving signature).
    model = build_hourglass("tiny", num_stacks=1, **{**SMALL, "depth": 1})
    serve = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    assert tuple(serve(tf.zeros([1, 16, 24, 1])).shape) == (1, 4, 6, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 8"):
        serve(tf.zeros([1, 12, 24, 1]))


def test_every_weight_gets_a_gradient():
    # Glorot heads: with the default zero heads only the heads get a gradient before the first step.
    model = build_hourglass("tiny", head_initializer="glorot_uniform", **SMALL)
    image = np.random.default_rng(2).random((2, 16, 16, 1), np.float32)
    with tf.GradientTape() as tape:
        outputs = model(image, training=True)
        loss = sum(tf.reduce_mean(tf.square(out - 1.0)) for out in outputs)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads) == len(grads)


def test_zero_heads_start_at_zero_and_train():
    model = build_hourglass("tiny", **SMALL)
    image = np.random.default_rng(4).random((2, 32, 32, 1), np.float32)
    for out in model(image, training=True):
        np.testing.assert_array_equal(out.numpy(), 0.0)  # the untrained heatmap is all zero
    optimizer = keras.optimizers.SGD(0.1)

    def step():
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_mean(tf.square(out - 1.0)) for out in model(image, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return grads

    step()  # the heads move off zero ...
    grads = step()  # ... and from then on every weight learns
    assert sum(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads) == len(grads)
    assert float(tf.reduce_max(tf.abs(model(image)[-1]))) > 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_stack": 2}, "'num_stack'"),
        ({"depth": 0}, "'depth'"),
        ({"output_stride": 8}, "'output_stride'"),
        ({"num_features": 2.5}, "'num_features'"),
        ({"num_stacks": "two"}, "'num_stacks'"),
        ({"input_size": (64,)}, "'input_size'"),
        ({"head_initializer": "no_such_initializer"}, "no_such_initializer"),
    ],
)
def test_bad_options_raise_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("tiny", **overrides)


def test_unknown_preset_and_activation():
    with pytest.raises(ValueError, match="'huge'"):
        resolve_config("huge")
    with pytest.raises(ValueError):
        resolve_config("tiny", output_activation="no_such_activation")
    assert set(PRESETS) == {"tiny", "paper"}


def test_sigmoid_output_activation():
    model = build_hourglass("tiny", num_stacks=1, output_activation="sigmoid", **SMALL)
    out = model(np.random.default_rng(3).random((1, 16, 16, 1), np.float32)).numpy()
    assert np.all((out > 0) & (out < 1))
