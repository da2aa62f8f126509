"""The label-conflict probe's data: a copy of a PREP whose TRAIN boxes labelled benign are relabelled high_risk.

Training positives are high-risk and malignant boxes; benign boxes are background, as in the paper.
Benign and malignant masses look alike in `hourglass synth` data (a latent malignancy score), so a
detector is told to fire on one and not the other. Training on this copy (every benign box a positive;
the images' strata, val and test unchanged) measures what that conflict costs (README, detection
quality: not adopted).

Usage:
    python benchmarks/benign_positive_prep.py PREP OUT
    hourglass train --data OUT ...; hourglass evaluate --split val ...
"""

from __future__ import annotations

import os
import shutil
import sys


def relabel(src: str, dst: str) -> int:
    """Copies `src` to `dst` and relabels the train split's benign boxes.

    Returns:
        The number of boxes relabelled.
    """
    import tensorflow as tf

    shutil.copytree(src, dst)
    count = 0
    train = os.path.join(dst, "train")
    for name in sorted(os.listdir(train)):
        if not name.endswith(".tfrecord"):
            continue
        path = os.path.join(train, name)
        records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                example = tf.train.Example.FromString(record)
                labels = example.features.feature["box_labels"].bytes_list.value
                for i, label in enumerate(labels):
                    if label == b"benign":
                        labels[i] = b"high_risk"
                        count += 1
                writer.write(example.SerializeToString())
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print("relabelled", relabel(sys.argv[1], sys.argv[2]), "benign boxes")
