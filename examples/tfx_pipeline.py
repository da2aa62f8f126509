"""A TFX pipeline for keras-hourglass: ImportExampleGen -> Tuner -> Trainer -> Pusher.

Needs `pip install "keras-hourglass[tfx]"` (tfx 1.21, TensorFlow 2.21; its native dependencies
need glibc >= 2.39). Runs locally with LocalDagRunner; the same `create_pipeline` runs on Kubeflow
or Vertex AI Pipelines with their runners.

    python examples/tfx_pipeline.py --data PREP --root tfx_root --serving-base serving/hourglass
    hourglass predict --saved-model serving/hourglass mammogram.dcm

PREP is a directory written by `hourglass prepare`: ImportExampleGen reads PREP/train/*.tfrecord as
the train split and PREP/val/*.tfrecord as the eval split. Those splits were made by patient
(salted patient hash), so the patient-level split is kept; never let ExampleGen re-split the data
by hash buckets (`output_config` with `hash_buckets`), which would put images of one patient in
both splits. tests/test_tfx_pipeline.py runs this pipeline (`make test-tfx`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping

#: ImportExampleGen's split patterns over a prepared directory (relative to PREP).
SPLIT_PATTERNS = {"train": "train/*.tfrecord", "eval": "val/*.tfrecord"}


def create_pipeline(
    prep_dir: str,
    pipeline_root: str,
    serving_base: str,
    *,
    metadata_path: str | None = None,
    custom_config: Mapping[str, Any] | None = None,
    train_steps: int = 100,
    pipeline_name: str = "keras-hourglass",
):
    """Builds the pipeline.

    Args:
        prep_dir: PREP (`hourglass prepare --out`).
        pipeline_root: where TFX keeps the artifacts.
        serving_base: TF Serving base path; Pusher writes `<serving_base>/<version>/`.
        metadata_path: the ML Metadata SQLite file (default: `pipeline_root/metadata.db`).
        custom_config: `keras_hourglass.tfx_module` settings ("tune", "train", "export", ...).
        train_steps: TrainArgs.num_steps (spread over the epochs unless steps_per_epoch is set).
        pipeline_name: the pipeline's name.

    Returns:
        A `tfx.v1.dsl.Pipeline`.
    """
    from tfx import v1 as tfx

    split_config = tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=name, pattern=pattern) for name, pattern in SPLIT_PATTERNS.items()])
    example_gen = tfx.components.ImportExampleGen(input_base=os.path.abspath(prep_dir), input_config=split_config)
    config = dict(custom_config or {})
    tuner = tfx.components.Tuner(
        tuner_fn="keras_hourglass.tfx_module.tuner_fn",
        examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=1),
        custom_config=config,
    )
    trainer = tfx.components.Trainer(
        run_fn="keras_hourglass.tfx_module.run_fn",
        examples=example_gen.outputs["examples"],
        hyperparameters=tuner.outputs["best_hyperparameters"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=1),
        custom_config=config,
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.abspath(serving_base))),
    )
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path or os.path.join(pipeline_root, "metadata.db"))
    return tfx.dsl.Pipeline(pipeline_name=pipeline_name, pipeline_root=pipeline_root,
                            components=[example_gen, tuner, trainer, pusher],
                            metadata_connection_config=metadata)


def main(argv: list[str] | None = None) -> int:
    """Runs the pipeline with LocalDagRunner. Returns: 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="PREP", help="directory written by `hourglass prepare`")
    parser.add_argument("--root", required=True, help="pipeline root (TFX artifacts, metadata)")
    parser.add_argument("--serving-base", required=True, help="TF Serving base path Pusher publishes to")
    parser.add_argument("--custom-config", default="{}", metavar="JSON",
                        help='tfx_module settings, e.g. \'{"tune": {"max_trials": 20}, "train": {"patch_epochs": 5}}\'')
    parser.add_argument("--train-steps", type=int, default=100)
    args = parser.parse_args(argv)
    from tfx import v1 as tfx

    pipeline = create_pipeline(args.data, args.root, args.serving_base,
                               custom_config=json.loads(args.custom_config), train_steps=args.train_steps)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
