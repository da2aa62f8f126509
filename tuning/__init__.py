"""KerasTuner search over the hypersensitive loss settings (`hourglass tune`).

Modules (this package imports none of them, so `hourglass --help` stays TensorFlow-free):

- `tuning.search_space`: `SearchSpace`, `load_space(path)`, `apply_flags(...)` (no TensorFlow).
- `tuning.objective`: objective `val_sensitivity` (max) and the tie-breaker `rank_key` (no TensorFlow).
- `tuning.hypermodel`: `HourglassHyperModel` (a `keras_tuner.HyperModel`).
- `tuning.search`: `make_tuner(...)`, `run_search(tuner, out)`, `role()` (single / chief / worker).
- `tuning.outputs`: `write_outputs(project_dir, out)` -> trials.csv, best_hyperparameters.json,
  objective.png (no TensorFlow).
- `tuning.hparams`: `sync(project_dir, logs_dir)` -> TensorBoard HParams data per finished trial in TUNE/logs.
- `tuning.cli`: the `hourglass tune` subcommand.
"""
