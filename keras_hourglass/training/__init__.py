"""Training: two-phase fit, distribution strategies, the multi-worker fix, resumable callbacks.

Submodules (import them directly; none imports TensorFlow at module import
except `callbacks`):

- `config`: `TrainConfig`, `--hparams` loading and precedence.
- `distribution`: `make_strategy`, `resolve_strategy_name`, `configure_cpu_replicas`, `WriteDir`.
- `multiworker_fix`: `multiworker_fit_fix(strategy)`, the version-guarded Keras fix.
- `callbacks`: `EpochBackup`, `restore_from_backup`, `HistoryCSV`, `TensorBoardLogger`, `BestCheckpoint`.
- `train`: `train(config, run_dir, ...)`, what `hourglass train` runs.
"""
