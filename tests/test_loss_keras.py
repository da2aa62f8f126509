"""The heatmap losses inside Keras: any one-channel model, fit, XLA, .keras round trip."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_hourglass.losses import GaussianL2Loss, HypersensitiveLoss

LOSS_KWARGS = dict(omega=0.05, top_k=2, patch_size=8, sigmas=(1.0, 2.0), mask_size=6)


def tiny_net(seed=0):
    """A 2-layer conv net with a one-channel heatmap output (not an Hourglass)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", name="heatmap")(x)
    return keras.Model(inputs, outputs)


def tiny_data(n=4, size=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (n, size, size, 1)).astype("float32")
    boxes = np.full((n, 3, 4), -1.0, "float32")
    boxes[0, 0] = [4, 4, 9, 10]
    boxes[1, :2] = [[12, 3, 16, 8], [0, 18, 3, 24]]  # second one at the border
    boxes[3, 0] = [10, 10, 14, 14]  # image 2 has no boxes
    return images, boxes


@pytest.mark.parametrize("loss", [HypersensitiveLoss(**LOSS_KWARGS), GaussianL2Loss(sigma=1.5)])
def test_any_one_channel_model_fits(loss):
    model = tiny_net()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    images, boxes = tiny_data()
    history = model.fit(images, boxes, batch_size=2, epochs=1, steps_per_epoch=2, verbose=0)
    (value,) = history.history["loss"]
    assert np.isfinite(value) and value > 0
    assert np.isfinite(model.evaluate(images, boxes, batch_size=4, verbose=0))


def test_jit_compiled_training_step_matches_non_jit():
    images, boxes = tiny_data()
    results = []
    for jit in (False, True):
        model = tiny_net(seed=3)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=HypersensitiveLoss(**LOSS_KWARGS),
            jit_compile=jit,
        )
        assert model.jit_compile is jit
        loss_value = model.train_on_batch(images, boxes)
        results.append((loss_value, model.get_weights()))
    (loss_a, weights_a), (loss_b, weights_b) = results
    assert loss_a > 0
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_config_round_trip():
    loss = HypersensitiveLoss(
        omega=0.2, top_k=5, patch_size=16, sigmas=(2.0, 4.0), recenter=False,
        mask_size=10, pool_size=5, jit_compile=False, com_epsilon=1e-4,
    )
    config = loss.get_config()
    clone = HypersensitiveLoss.from_config(config)
    assert clone.get_config() == config
    assert clone.sigmas == (2.0, 4.0) and clone.recenter is False and clone.mask_size == 10
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, HypersensitiveLoss) and revived.get_config() == config
    l2 = keras.losses.deserialize(keras.losses.serialize(GaussianL2Loss(sigma=3.5)))
    assert isinstance(l2, GaussianL2Loss) and l2.sigma == 3.5


@pytest.mark.parametrize(
    "loss", [HypersensitiveLoss(omega=0.3, top_k=1, patch_size=6, sigmas=(1.5,)), GaussianL2Loss(sigma=1.25)]
)
def test_saved_model_reloads_with_its_loss(tmp_path, loss):
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss)
    images, boxes = tiny_data()
    model.train_on_batch(images, boxes)  # builds the optimizer state that is saved too
    before = model.evaluate(images, boxes, batch_size=4, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(images, boxes, batch_size=4, verbose=0), before, rtol=1e-5)


def test_endpoint_layer_adds_the_same_loss(tmp_path):
    from loss_endpoint import HypersensitiveLossEndpoint

    base = tiny_net(seed=5)
    image = keras.Input((None, None, 1), name="image")
    boxes_in = keras.Input((3, 4), name="boxes")
    heatmap = HypersensitiveLossEndpoint(HypersensitiveLoss(**LOSS_KWARGS), name="hs")(base(image), boxes_in)
    model = keras.Model({"image": image, "boxes": boxes_in}, heatmap)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    images, boxes = tiny_data()
    inputs = {"image": images, "boxes": boxes}
    expected = float(HypersensitiveLoss(**LOSS_KWARGS)(boxes, base.predict(images, verbose=0)))
    np.testing.assert_allclose(model.evaluate(inputs, batch_size=4, verbose=0), expected, rtol=1e-5)
    history = model.fit(inputs, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "endpoint.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("hs").loss_fn.get_config() == HypersensitiveLoss(**LOSS_KWARGS).get_config()
