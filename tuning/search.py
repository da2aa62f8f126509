"""Builds the KerasTuner tuner and runs a search (one machine, or a chief/worker role).

- Resumable: the tuner always uses `directory=TUNE`, `project_name=PROJECT_NAME`
  and `overwrite=False`, so rerunning the same command after an interruption
  reloads the oracle; completed trials are kept and never run again, and the
  trial that was running when the process died is run again from the start.
  `tuning.durability` makes this hold for a kill at any instant (atomic state
  writes; the reloaded oracle reconciled with the trial files).
- Distributed: KerasTuner's own mechanism. With `KERASTUNER_ORACLE_IP`,
  `KERASTUNER_ORACLE_PORT` and `KERASTUNER_TUNER_ID` set, the process whose id
  contains "chief" serves the oracle over gRPC (it runs no trials and returns
  when every trial has ended) and the others (`tuner0`, `tuner1`, ...) ask it
  for trials and report their results. Only the chief (or a non-distributed
  search) writes the outputs, and the TensorBoard HParams data of every finished trial
  (`tuning.hparams`, `TUNE/logs`), whichever worker ran it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import keras_tuner

from keras_hourglass import storage
from tuning import durability
from tuning import hparams
from tuning import objective as objective_lib
from tuning import outputs
from tuning.outputs import PROJECT_NAME
TUNERS = ("random", "bayesian", "hyperband")


def role() -> str:
    """Returns: "chief", "worker" or "single" from the KerasTuner environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def tuner_id() -> str:
    """Returns: this process's KerasTuner id (KerasTuner's default "tuner0" when unset)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")


def _log(message: str) -> None:
    print(f"hourglass tune [{tuner_id()}]: {message}", file=sys.stderr, flush=True)


def _recording(base: type) -> type:
    """Returns: `base` (a KerasTuner tuner class) that logs trials, remembers which it ran, and
    numbers the executions of a trial (so each execution gets its own seed)."""

    class HourglassTuner(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # reloads an existing search
            self.trials_run: list[dict[str, Any]] = []
            self._execution = 0
            if role() != "worker":
                fixed = durability.reconcile(self.oracle)
                if fixed["requeued"] or fixed["dropped"]:
                    _log(f"resume: trials to run again {fixed['requeued']}, finished trials not rerun "
                         f"{fixed['dropped']}")
                    self.oracle.save()
            if role() == "chief":
                self._refresh_outputs_when_trials_end()

        def _refresh_outputs_when_trials_end(self):
            """The chief runs no trials: refresh the outputs whenever a worker ends one."""
            oracle, end_trial = self.oracle, self.oracle.end_trial

            def end_trial_and_report(trial):
                end_trial(trial)
                self._write_outputs()

            oracle.end_trial = end_trial_and_report

        def _write_outputs(self):
            try:
                outputs.write_outputs(self.project_dir, self.directory)
                hparams.sync(self.project_dir, hparams.logs_dir(self.directory))
            except Exception as err:  # never lose a search over a report
                _log(f"could not refresh the outputs: {err.__class__.__name__}: {err}")

        def run_trial(self, trial, *args, **kwargs):
            self._execution = 0
            return super().run_trial(trial, *args, **kwargs)

        def _build_and_fit_model(self, trial, *args, **kwargs):
            # One call per execution (`executions_per_trial`): give each its own seed.
            if hasattr(self.hypermodel, "execution"):
                self.hypermodel.execution = self._execution
            self._execution += 1
            return super()._build_and_fit_model(trial, *args, **kwargs)

        def on_trial_begin(self, trial):
            _log(f"trial {trial.trial_id} started: {trial.hyperparameters.values}")
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # the oracle scores the trial (a NaN objective -> not COMPLETED)
            try:
                ended = self.oracle.get_trial(trial.trial_id)
            except Exception:  # pragma: no cover - the chief went away; report what we know
                ended = trial
            self.trials_run.append({"trial_id": trial.trial_id, "status": ended.status})
            message = f"trial {trial.trial_id} ended: {ended.status}"
            if ended.status != "COMPLETED":
                if trial.message:
                    message += f": {trial.message.strip().splitlines()[-1]}"
                elif ended.score is None or ended.score != ended.score:
                    message += ": the objective is NaN (no malignant finding among the validation images?)"
            else:
                message += f", {objective_lib.OBJECTIVE_NAME}={ended.score:.4f}"
            _log(message)
            if role() == "single":  # keep the outputs current: a long search can be watched
                self._write_outputs()

    HourglassTuner.__name__ = HourglassTuner.__qualname__ = f"Hourglass{base.__name__}"
    return HourglassTuner


def make_tuner(
    hypermodel: keras_tuner.HyperModel,
    directory: str | os.PathLike,
    *,
    kind: str = "random",
    max_trials: int = 10,
    max_epochs: int = 1,
    executions_per_trial: int = 1,
    seed: int | None = None,
    distribution_strategy=None,
    overwrite: bool = False,
    max_consecutive_failed_trials: int = 3,
) -> keras_tuner.Tuner:
    """Builds a tuner on `TUNE/PROJECT_NAME`, reloading an existing search there.

    Args:
        hypermodel: an `HourglassHyperModel`.
        directory: the output directory `TUNE`.
        kind: "random", "bayesian" or "hyperband".
        max_trials: number of trials (random, bayesian).
        max_epochs: Hyperband's maximum epochs per model (the others train `hypermodel.epochs`).
        executions_per_trial: trainings per trial (metrics averaged).
        seed: the oracle's seed.
        distribution_strategy: a single-worker `tf.distribute.Strategy` each trial runs under.
        overwrite: start over instead of resuming.
        max_consecutive_failed_trials: KerasTuner's stop rule.

    Returns:
        A KerasTuner tuner whose objective is `val_sensitivity` (max).
    """
    if kind not in TUNERS:
        raise ValueError(f"unknown tuner {kind!r}; choose one of {TUNERS}")
    durability.install_atomic_state_writes()
    if not overwrite and role() != "worker":
        durability.check_state_files(project_dir(directory))
    if overwrite and role() != "worker":
        hparams.clear(hparams.logs_dir(directory))
    common = dict(
        hypermodel=hypermodel,
        objective=objective_lib.objective(),
        seed=seed,
        executions_per_trial=executions_per_trial,
        directory=os.fspath(directory),
        project_name=PROJECT_NAME,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    if kind == "random":
        return _recording(keras_tuner.RandomSearch)(max_trials=max_trials, **common)
    if kind == "bayesian":
        return _recording(keras_tuner.BayesianOptimization)(max_trials=max_trials, **common)
    return _recording(keras_tuner.Hyperband)(max_epochs=max_epochs, factor=3, **common)


def project_dir(directory: str | os.PathLike) -> str:
    """Returns: the KerasTuner project directory inside `TUNE`."""
    return storage.join(os.fspath(directory), PROJECT_NAME)


def run_search(tuner: keras_tuner.Tuner, directory: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes, or serves) the search and writes the outputs where this role should.

    Args:
        tuner: from `make_tuner`.
        directory: `TUNE`.

    Returns:
        A JSON-able summary: role, tuner id, the trials this process ran, and (chief or
        single machine) the outputs of `tuning.outputs.write_outputs`.
    """
    this_role = role()
    if this_role == "worker":  # the oracle is the chief's; a worker only asks it for trials
        _log(f"worker: searching (oracle {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ.get('KERASTUNER_ORACLE_PORT')})")
    else:
        remaining = tuner.remaining_trials
        _log(f"{this_role}: searching ({'?' if remaining is None else remaining} trials left)")
    tuner.search()
    if this_role == "chief":
        # KerasTuner saves the oracle in `end_trial` *before* it drops the trial from its ongoing
        # trials, and a chief saves nothing after the last one: save again, or a restarted chief
        # would take the last trials for interrupted ones and run them again.
        tuner.oracle.save()
    summary: dict[str, Any] = {
        "role": this_role,
        "tuner_id": tuner_id(),
        "trials_run": [t["trial_id"] for t in getattr(tuner, "trials_run", [])],
    }
    if this_role != "worker":
        summary.update(outputs.write_outputs(project_dir(directory), directory))
        summary["hparams_logs"] = hparams.logs_dir(directory)
        try:
            hparams.sync(project_dir(directory), summary["hparams_logs"])
        except Exception as err:  # the search itself is done and recorded
            _log(f"could not write the HParams data: {err.__class__.__name__}: {err}")
    return summary
