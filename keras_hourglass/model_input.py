"""The model's input geometry in TensorFlow: the ONE padding rule of images fed to the model.

H and W fed to the Hourglass must be multiples of its input multiple
(`keras_hourglass.model.hourglass.input_multiple`: `output_stride * 2**depth`). Images of any size are
zero-padded at the bottom and right up to the next multiple, so pixel coordinates are unchanged and
the heatmap's first `ceil(H / stride) x ceil(W / stride)` pixels cover the image. The data pipeline
(full-image batches, evaluation) and the export's serving signatures both pad with `pad_to_multiple`,
so training, evaluation and serving feed the model the same pixels.

May import: TensorFlow only (the pipeline uses it without the model code, the export without the data package).
"""

from __future__ import annotations

import tensorflow as tf


def pad_to_multiple(image: tf.Tensor, multiple: int) -> tf.Tensor:
    """Zero-pads an image or a batch at the bottom and right to multiples of `multiple`.

    Args:
        image: `[H, W, C]` or `[B, H, W, C]` (rank known statically).
        multiple: H and W of the result are multiples of it.

    Returns:
        The padded tensor: `[..., ceil(H / multiple) * multiple, ceil(W / multiple) * multiple, C]`.
    """
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"image must be [H, W, C] or [B, H, W, C], got rank {rank}")
    shape = tf.shape(image)
    pad_h = (-shape[-3]) % multiple
    pad_w = (-shape[-2]) % multiple
    return tf.pad(image, [[0, 0]] * (rank - 3) + [[0, pad_h], [0, pad_w], [0, 0]])
