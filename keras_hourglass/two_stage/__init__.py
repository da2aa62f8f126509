"""Two-stage detection: stage-one proposals, a patch classifier, combined scores.

The hypersensitive detector (stage one) proposes marks; a small Keras CNN (stage
two) classifies a fixed-size patch around each mark; a documented combination
of both scores ranks the marks of the two-stage system.

- `patches` (numpy; a TensorFlow twin for graphs): the patch geometry (reference pixels ->
  image pixels) and the one crop rule shared by proposals and evaluation.
- `proposals`: `hourglass proposals`: stage one over every split of PREP, one
  labelled patch per mark, sharded TFRecords + manifest.
- `records`: the proposal record schema and its tf.data readers.
- `classifier`: the registered functional classifier (and a loader with
  one-line errors).
- `train`: class-balanced training of the classifier (`hourglass train --stage 2`),
  resumable, with the combination chosen on the val proposals.
- `combine` (numpy; a TensorFlow twin for graphs): the combinations of the two scores.
- `evaluate`: stage one + stage two over a prepared split, for `hourglass
  evaluate --classifier`.
- `system`: a stage-two run as it recorded itself (classifier, combination, proposal
  threshold, patch geometry), loaded the same way by evaluate and `hourglass export --classifier`.
"""
