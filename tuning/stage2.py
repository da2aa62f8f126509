"""`hourglass tune --stage 2`: KerasTuner search over the stage-two classifier's settings.

A trial trains exactly as `hourglass train --stage 2` does with the same values
(`keras_hourglass.two_stage.train.compile_classifier` and `fit_classifier`: the
same build, seed, Adam, balanced stream and validation), then is scored on the
val proposals.

Objective (`val_sensitivity`, max): the **two-stage system's validation
sensitivity at `target_fpi` (default 2 false marks per image)**, read from the
FROC of PROPOSALS/val rescored by the trial's classifier with the combination
`hourglass train --stage 2` would record (`two_stage.evaluate.select_combination`:
best mean sensitivity on the val proposals). Why this and not the classifier's
val AUC or val loss: the proposals of PROPOSALS/val are stage one's marks on
PREP/val and `images.jsonl` lists every val image, so this FROC is the one
`hourglass evaluate --classifier` computes on PREP/val (same hit rule,
malignant positives), at the cost of scoring the val patches once, which the
trainer does anyway to choose the combination; stage one is not rerun. The AUC
weighs every mark alike, while the system is judged by how its top marks per
image rank, and the issue's target is stage one's 4.8-FPI sensitivity reached
at <= 2 FPI. When the val split has no malignant finding, `select_combination`
falls back to high_risk + malignant positives (as the trainer does).
Ties: higher mean sensitivity, then higher max sensitivity, then the earlier
trial (`tuning.objective.rank_key`; there is no omega).

The space (`STAGE2_PARAM_NAMES`): learning rate (log, 1e-4 .. 3e-3), dropout
(0 .. 0.5), the hidden dense units (32 | 64 | 128), the small CNN's stage
widths ("8,16,32" | "16,32,64" | "32,64,128") and the class balance
(sampling | weights). The batch size is fixed (`hp.Fixed`), so
`best_hyperparameters.json` retrains with `hourglass train --stage 2 --hparams`.
Resume, outputs (`best_hyperparameters.json`, `trials.csv`, HParams logs) and
the distributed roles are those of stage-one tuning (`tuning.search`,
`tuning.outputs`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras_tuner

from tuning.search_space import Choice, Domain, Fixed, Range, declare_domain

#: Stage-two hyper-parameter names (= `Stage2Config` fields, read by `train --stage 2 --hparams`).
STAGE2_PARAM_NAMES = ("learning_rate", "dropout", "dense", "filters", "balance")
_EXECUTION_SEED_STEP = 1009


@dataclasses.dataclass(frozen=True)
class Stage2Space:
    """The searched stage-two settings; each a `Range`, `Choice`, `Fixed` or None (training default)."""

    learning_rate: Domain = Range(1e-4, 3e-3, "log")
    dropout: Domain = Range(0.0, 0.5, "linear")
    dense: Domain = Choice((32, 64, 128))
    filters: Domain = Choice(("8,16,32", "16,32,64", "32,64,128"))
    balance: Domain = Choice(("sampling", "weights"))

    def declare(self, hp) -> dict[str, Any]:
        """Declares the space on a `keras_tuner.HyperParameters`. Returns: {name: value} (filters a string)."""
        values: dict[str, Any] = {}
        for name in STAGE2_PARAM_NAMES:
            domain = getattr(self, name)
            if domain is not None:
                integer = (isinstance(domain, Range) and isinstance(domain.min, int) and isinstance(domain.max, int)
                           and bool(domain.step))
                values[name] = declare_domain(hp, name, domain, integer=integer, ordered=name == "dense")
        return values

    def to_json(self) -> dict[str, Any]:
        """Returns: the space as JSON (recorded in search.json)."""
        out: dict[str, Any] = {}
        for name in STAGE2_PARAM_NAMES:
            domain = getattr(self, name)
            out[name] = None if domain is None else {"fixed": domain.value} if isinstance(domain, Fixed) else \
                {"values": list(domain.values)} if isinstance(domain, Choice) else \
                {"min": domain.min, "max": domain.max, "sampling": domain.sampling}
        return out


def stage2_metrics(classifier, proposals_dir: str, target_fpi: float) -> dict[str, float]:
    """The trial's metrics on the val proposals: the two-stage FROC with the combination the trainer would choose.

    Args:
        classifier: the trained stage-two model.
        proposals_dir: PROPOSALS.
        target_fpi: FPI of the objective (one of `evaluation.froc.FPI_POINTS`).

    Returns:
        {`val_sensitivity`, `val_sensitivity_at_F` (F in `objective.REPORTED_FPI` and 0.5),
        `val_mean_sensitivity`, `val_max_sensitivity`, `val_stage_one_sensitivity` (stage one
        alone at `target_fpi`), `val_stage_two_weight` (w of the chosen combination)}; NaN
        objective when the val split cannot be scored.
    """
    from keras_hourglass.evaluation.froc import fpi_key
    from keras_hourglass.two_stage.combine import STAGE_ONE, stage_two_weight
    from keras_hourglass.two_stage.evaluate import select_combination
    from tuning import objective as objective_lib

    chosen = select_combination(classifier, proposals_dir, "val")
    candidates = chosen["candidates"]
    nan = float("nan")
    if not candidates:
        return {objective_lib.OBJECTIVE_NAME: nan}
    best, alone = candidates[chosen["name"]], candidates[STAGE_ONE]

    def at(entry: dict, fpi: float) -> float:
        value = entry["sensitivity_at_fpi"].get(fpi_key(fpi))
        return nan if value is None else float(value)

    metrics = {objective_lib.OBJECTIVE_NAME: at(best, target_fpi),
               objective_lib.MEAN_NAME: float(best["mean_sensitivity"]),
               objective_lib.MAX_NAME: float(best["max_sensitivity"]),
               "val_stage_one_sensitivity": at(alone, target_fpi),
               "val_stage_two_weight": float(stage_two_weight(chosen["name"]))}
    for fpi in (0.5, *objective_lib.REPORTED_FPI):
        metrics[objective_lib.fpi_metric_name(fpi)] = at(best, fpi)
    return metrics


class Stage2HyperModel(keras_tuner.HyperModel):
    """Builds and trains one stage-two classifier per trial, as `hourglass train --stage 2` would.

    Args:
        proposals_dir: PROPOSALS (`hourglass proposals`).
        space: the search space (default `Stage2Space()`).
        epochs: epochs per execution (Hyperband passes its own).
        steps_per_epoch: batches per epoch (None: the training default).
        batch_size: global batch size (fixed in every trial).
        target_fpi: FPI of the objective.
        seed: seeds the weights and the data order as `train --stage 2 --seed` (None: 0; execution
            i of a trial uses seed + 1009 * i).
        run_eagerly: no graph tracing (most of a trial of a few steps on CPU): smoke searches, tests.
        verbose: Keras fit verbosity.
    """

    def __init__(self, proposals_dir: str | os.PathLike, *, space: Stage2Space | None = None, epochs: int = 3,
                 steps_per_epoch: int | None = None, batch_size: int = 64, target_fpi: float = 2.0,
                 seed: int | None = None, run_eagerly: bool = False, verbose: int = 0):
        super().__init__(name="stage2", tunable=True)
        from keras_hourglass.two_stage.proposals import read_manifest
        from keras_hourglass.two_stage.train import Stage2Config

        self.proposals_dir = os.fspath(proposals_dir)
        self.manifest = read_manifest(self.proposals_dir)
        self.patch_size = int(self.manifest["patch"]["resolved"])
        self.space = space or Stage2Space()
        self.target_fpi = float(target_fpi)
        self.run_eagerly = bool(run_eagerly)
        self.verbose = verbose
        #: Index of the current execution of a trial, set by the tuner (`tuning.search`).
        self.execution = 0
        fixed: dict[str, Any] = {"epochs": int(epochs), "batch_size": int(batch_size),
                                 "seed": 0 if seed is None else int(seed)}
        if steps_per_epoch is not None:
            fixed["steps_per_epoch"] = int(steps_per_epoch)
        #: The settings that are not tuned, as `hourglass train --stage 2` holds them.
        self.base_config = Stage2Config(**fixed).validate()

    def _declare(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        values = self.space.declare(hp)
        values["batch_size"] = hp.Fixed("batch_size", int(self.base_config.batch_size))
        return values

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the search space and the fixed batch size on `hp`."""
        self._declare(hp)

    def train_config(self, hp: keras_tuner.HyperParameters, epochs: int | None = None):
        """Returns: the trial's `Stage2Config` (fixed settings, the trial's values, the execution's seed)."""
        from keras_hourglass.two_stage.train import apply_hparams

        if epochs is None:
            epochs = hp.values.get("tuner/epochs", self.base_config.epochs)
        config = apply_hparams(self.base_config, self._declare(hp), source="hyperparameters")
        seed = int(self.base_config.seed) + _EXECUTION_SEED_STEP * int(self.execution)
        return dataclasses.replace(config, seed=seed, epochs=int(epochs)).validate()

    def build(self, hp: keras_tuner.HyperParameters):
        """Returns: the compiled classifier for the trial's values (under the tuner's strategy scope)."""
        from keras_hourglass.two_stage.train import compile_classifier

        return compile_classifier(self.train_config(hp), self.patch_size, run_eagerly=self.run_eagerly)

    def fit(self, hp: keras_tuner.HyperParameters, model, *args, **kwargs) -> dict[str, float]:
        """Fits as `train --stage 2` does, then scores the val proposals (`stage2_metrics`).

        Args:
            hp: the trial's hyper-parameters.
            model: from `build`.
            *args: ignored (the data is PROPOSALS).
            **kwargs: `callbacks` (KerasTuner's), `epochs` / `initial_epoch` (Hyperband).

        Returns:
            The metrics of the trained classifier, with `val_auc` of its last epoch.
        """
        from keras_hourglass.two_stage.train import fit_classifier

        epochs = kwargs.pop("epochs", None)
        config = self.train_config(hp, epochs=None if epochs is None else int(epochs))
        history = fit_classifier(model, config, self.proposals_dir, self.manifest,
                                 initial_epoch=int(kwargs.pop("initial_epoch", 0)),
                                 callbacks=list(kwargs.pop("callbacks", None) or []), verbose=self.verbose)
        metrics = stage2_metrics(model, self.proposals_dir, self.target_fpi)
        auc = (history.history.get("val_auc") or [None])[-1]
        if auc is not None:
            metrics["val_auc"] = float(auc)
        return metrics
