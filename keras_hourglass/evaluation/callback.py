"""`FrocCallback`: validation FROC in the epoch logs, for checkpoints and the tuner.

At the end of an evaluated epoch the callback runs the model's final heatmap
over the validation images, computes the FROC (`keras_hourglass.evaluation.froc`,
no bootstrap) and writes into `logs`:

- `val_sensitivity`: sensitivity at `target_fpi` (default 4.8),
- `val_mean_sensitivity`: mean over FPI 0.125 ... 8,
- `val_max_sensitivity`: sensitivity with every mark kept,
- `val_sensitivity_at_<fpi>` for each FPI point (`val_sensitivity_at_0.125`
  ... `val_sensitivity_at_8`).

Order matters: Keras calls callbacks in list order with the same `logs`
dict, so `FrocCallback` must come *before* `ModelCheckpoint`,
`EarlyStopping`, `TensorBoard`, `CSVLogger` and the KerasTuner callbacks
that read these keys:

```python
callbacks = [
    FrocCallback(prep_dir, target_fpi=4.8),
    keras.callbacks.ModelCheckpoint("best.keras", monitor="val_sensitivity", mode="max",
                                    save_best_only=True),
]
```

KerasTuner: `objective=keras_tuner.Objective("val_sensitivity", direction="max")`.

When the validation set has no malignant finding the sensitivities are
undefined: the logs get NaN (never a fake 0) and a warning is printed once.
Epochs that are skipped (`every_n_epochs`) get no keys (ModelCheckpoint then
skips them); the last epoch of `fit` is always evaluated.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any, Iterable

import keras

from keras_hourglass.evaluation.froc import FrocResult, froc
from keras_hourglass.evaluation.predict import MarkPredictor


class FrocCallback(keras.callbacks.Callback):
    """Writes the validation FROC sensitivity into the epoch logs.

    Args:
        data: a prepared directory (its `split` is read with
            `keras_hourglass.data.pipeline.evaluation_dataset`) or an
            iterable of evaluation dicts (a `tf.data.Dataset` or a list),
            batch 1, images padded to the model's input multiple.
        target_fpi: FPI at which `val_sensitivity` is read.
        every_n_epochs: evaluate every n-th epoch (and always the last one).
        max_images: evaluate only the first images of the dataset.
        split: split of a prepared directory.
        max_marks: marks per image (see `predict_marks`).
        extra_hits: FROC policy for several marks on one finding.
        prefix: prefix of the log keys (`"val_"`).
        verbose: 1 prints one line per evaluation.
        peak_finder: override of `keras_hourglass.find_peaks` (tests).

    Attributes:
        last_result: the `FrocResult` of the latest evaluation, or None.
        history: `(epoch, FrocResult)` of every evaluation.
    """

    def __init__(
        self,
        data: str | os.PathLike | Iterable[dict],
        target_fpi: float = 4.8,
        every_n_epochs: int = 1,
        max_images: int | None = None,
        *,
        split: str = "val",
        max_marks: int = 100,
        extra_hits: str = "ignore",
        prefix: str = "val_",
        verbose: int = 0,
        peak_finder=None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.data = data
        self.target_fpi = float(target_fpi)
        self.every_n_epochs = int(every_n_epochs)
        self.max_images = max_images
        self.split = split
        self.max_marks = int(max_marks)
        self.extra_hits = extra_hits
        self.prefix = prefix
        self.verbose = verbose
        self.peak_finder = peak_finder
        self.last_result: FrocResult | None = None
        self.history: list[tuple[int, FrocResult]] = []
        self._dataset = None
        self._predictor: MarkPredictor | None = None
        self._warned = False

    def __deepcopy__(self, memo: dict) -> "FrocCallback":
        """A fresh callback with the same settings, sharing `data`.

        KerasTuner deep-copies the callbacks of `search` for every trial; a
        `tf.data.Dataset` or a traced function cannot be deep-copied, and the
        copy must not keep the previous trial's model. Datasets are immutable,
        so sharing `data` is safe.
        """
        clone = copy.copy(self)
        clone._model = None
        clone._predictor = None
        clone._dataset = None
        clone.last_result = None
        clone.history = []
        clone._warned = False
        memo[id(self)] = clone
        return clone

    def set_model(self, model) -> None:
        if model is not getattr(self, "_model", None):
            self._predictor = None  # traced for another model
        super().set_model(model)

    def _evaluation_data(self) -> Iterable[dict]:
        if self._dataset is None:
            if isinstance(self.data, (str, os.PathLike)):
                from keras_hourglass.data.pipeline import evaluation_dataset
                from keras_hourglass.model import model_input_multiple

                self._dataset = evaluation_dataset(
                    os.fspath(self.data), split=self.split, input_multiple=model_input_multiple(self.model)
                )
            else:
                self._dataset = self.data
        return self._dataset

    def _due(self, epoch: int) -> bool:
        last = self.params.get("epochs") if isinstance(self.params, dict) else None
        return (epoch + 1) % self.every_n_epochs == 0 or (last is not None and epoch + 1 == last)

    def evaluate(self) -> FrocResult:
        """Returns: the FROC of the current weights on the validation images."""
        if self._predictor is None:
            self._predictor = MarkPredictor(self.model, max_marks=self.max_marks, peak_finder=self.peak_finder)
        records = self._predictor(self._evaluation_data(), max_images=self.max_images)
        return froc(records, extra_hits=self.extra_hits, n_bootstrap=0)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._due(epoch):
            return
        result = self.evaluate()
        self.last_result = result
        self.history.append((epoch, result))
        values = {
            "sensitivity": result.sensitivity(self.target_fpi),
            "mean_sensitivity": result.mean_sensitivity,
            "max_sensitivity": result.max_sensitivity,
        }
        for key, value in result.sensitivity_at_fpi.items():
            values[f"sensitivity_at_{key}"] = value
        values = {k: math.nan if v is None else float(v) for k, v in values.items()}
        if result.num_malignant_findings == 0 and not self._warned:
            warnings.warn(f"FrocCallback: {result.warning}; logging NaN", RuntimeWarning, stacklevel=2)
            self._warned = True
        if logs is not None:
            for key, value in values.items():
                logs[self.prefix + key] = value
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: FROC on {result.num_images} images "
                f"({result.num_malignant_findings} malignant findings): "
                f"sensitivity@{self.target_fpi:g} FPI {values['sensitivity']:.4f}, "
                f"mean {values['mean_sensitivity']:.4f}, max {values['max_sensitivity']:.4f}"
            )

