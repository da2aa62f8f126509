"""HypersensitiveLoss under MirroredStrategy over 2 logical CPUs == 1 device.

TF's logical devices must be configured before TF initialises, so the check
runs in a fresh interpreter.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np
    from keras_hourglass.losses import HypersensitiveLoss

    def net():
        inputs = keras.Input((None, None, 1))
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 24, 24, 1)).astype("float32")
    boxes = np.full((4, 2, 4), -1.0, "float32")
    boxes[0, 0] = [4, 4, 9, 10]
    boxes[1] = [[12, 3, 16, 8], [0, 18, 3, 24]]
    boxes[3, 0] = [10, 10, 14, 14]
    keras.utils.set_random_seed(1)
    initial = net().get_weights()

    def one_step(strategy):
        with strategy.scope():
            model = net()
            model.set_weights(initial)
            model.compile(
                optimizer=keras.optimizers.SGD(0.05),
                loss=HypersensitiveLoss(omega=0.1, top_k=1, patch_size=8, sigmas=(1.0, 2.0)),
            )
        history = model.fit(images, boxes, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"][0], model.get_weights()

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    loss_1, weights_1 = one_step(tf.distribute.get_strategy())
    loss_2, weights_2 = one_step(mirrored)
    print("losses", loss_1, loss_2)
    assert loss_1 > 0
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    moved = 0.0
    for w0, w1, w2 in zip(initial, weights_1, weights_2):
        np.testing.assert_allclose(w2, w1, rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(w1 - w0).max()))
    assert moved > 1e-4, moved
    print("OK")
    """
)


@pytest.mark.slow
def test_mirrored_two_replicas_equal_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr[-4000:]
