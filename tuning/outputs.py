"""The outputs of a search: trials.csv, best_hyperparameters.json and objective.png.

Everything is read back from the KerasTuner project directory
(`TUNE/<project>/trial_*/trial.json`), which the (chief) oracle writes as
trials end, so the outputs can be rebuilt at any time from a finished,
interrupted or distributed search, on the machine that ran the chief.

- `best_hyperparameters.json`: the TFX convention, the JSON of
  `keras_tuner.HyperParameters.get_config()` of the best trial (the values
  are under `"values"`); `hourglass train --hparams FILE` reads it. KerasTuner's
  bookkeeping entries (`tuner/epochs`, ... of Hyperband) are left out.
- `trials.csv`: one row per trial: id, status, hyper-parameters, objective,
  sensitivity at 1, 2 and 4.8 FPI, mean and max sensitivity, best flag.
- `objective.png`: the objective against omega (log x) and against top_k (the L2 / focal losses:
  against target_sigma and the learning rate).

The best trial is chosen by `tuning.objective.rank_key` (objective, then the
documented tie-breakers), not by the oracle's objective-only order.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Sequence

from keras_hourglass import storage
from tuning import objective as objective_lib
from tuning.search_space import PARAM_NAMES

#: KerasTuner's project name inside TUNE (fixed, so a rerun finds and resumes the search).
PROJECT_NAME = "hourglass_tune"
BEST_HPARAMS_FILE = "best_hyperparameters.json"
TRIALS_CSV_FILE = "trials.csv"
PLOT_FILE = "objective.png"

_METRIC_COLUMNS = (
    ("objective", objective_lib.OBJECTIVE_NAME),
    *((f"sensitivity_at_{fpi:g}", objective_lib.fpi_metric_name(fpi)) for fpi in objective_lib.REPORTED_FPI),
    ("mean_sensitivity", objective_lib.MEAN_NAME),
    ("max_sensitivity", objective_lib.MAX_NAME),
)


@dataclasses.dataclass
class TrialRecord:
    """One trial as stored by KerasTuner.

    Attributes:
        trial_id: KerasTuner's id ("0", "01", ...).
        status: RUNNING, COMPLETED, INVALID, FAILED, ...
        hp_config: `HyperParameters.get_config()` of the trial.
        metrics: {metric name: last reported value}.
    """

    trial_id: str
    status: str
    hp_config: dict
    metrics: dict[str, float]

    @property
    def values(self) -> dict[str, Any]:
        """Returns: the trial's hyper-parameter values (KerasTuner entries `tuner/*` excluded)."""
        return {k: v for k, v in self.hp_config.get("values", {}).items() if not k.startswith("tuner/")}

    @property
    def completed(self) -> bool:
        """Returns: whether the trial completed with a finite objective."""
        value = self.metrics.get(objective_lib.OBJECTIVE_NAME)
        return self.status == "COMPLETED" and value is not None and math.isfinite(value)

    def rank_key(self) -> tuple:
        """Returns: the sort key (smaller is better) of `tuning.objective.rank_key`."""
        return objective_lib.rank_key(self.metrics, omega=self.values.get("omega"), order=self.trial_id)


def _last_values(metrics_config: dict) -> dict[str, float]:
    out = {}
    for name, history in metrics_config.get("metrics", {}).items():
        observations = history.get("observations") or []
        if observations:
            value = observations[-1].get("value")
            if isinstance(value, list):
                value = value[-1] if value else None
            if value is not None:
                out[name] = float(value)
    return out


def load_trials(project_dir: str | os.PathLike) -> list[TrialRecord]:
    """Reads every `trial_*/trial.json` of a KerasTuner project.

    Args:
        project_dir: `TUNE/<project_name>`.

    Returns:
        The trials sorted by id (unreadable or half-written files are skipped).
    """
    records = []
    for fname in storage.glob(storage.join(os.fspath(project_dir), "trial_*", "trial.json")):
        try:
            state = storage.read_json(fname)
        except (OSError, json.JSONDecodeError):
            continue
        records.append(
            TrialRecord(
                trial_id=str(state["trial_id"]),
                status=str(state.get("status")),
                hp_config=state.get("hyperparameters") or {"space": [], "values": {}},
                metrics=_last_values(state.get("metrics") or {}),
            )
        )
    return sorted(records, key=lambda r: objective_lib._order_key(r.trial_id))


def best_trial(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """Returns: the best completed trial by objective then tie-breakers, or None."""
    completed = [r for r in records if r.completed]
    return min(completed, key=TrialRecord.rank_key) if completed else None


def best_hyperparameters_config(record: TrialRecord) -> dict:
    """Returns: the trial's `HyperParameters.get_config()` without KerasTuner's `tuner/*` entries."""
    config = json.loads(json.dumps(record.hp_config))
    config["space"] = [
        entry for entry in config.get("space", []) if not str(entry.get("config", {}).get("name", "")).startswith("tuner/")
    ]
    config["values"] = record.values
    return config


def write_best_hyperparameters(record: TrialRecord, path: str | os.PathLike) -> None:
    """Writes the TFX-convention JSON of the trial's hyper-parameters (atomically)."""
    storage.write_text(path, json.dumps(best_hyperparameters_config(record), indent=2) + "\n")


def _param_columns(records: Sequence[TrialRecord]) -> list[str]:
    seen = {name for r in records for name in r.values}
    known = [n for n in PARAM_NAMES if n in seen]
    return known + sorted(seen - set(known))


def write_trials_csv(records: Sequence[TrialRecord], path: str | os.PathLike, best: TrialRecord | None = None) -> None:
    """Writes one row per trial (atomically).

    Args:
        records: the trials (`load_trials`).
        path: the CSV file.
        best: the best trial (marked `is_best=1`), or None.
    """
    import io

    params = _param_columns(records)
    header = ["trial_id", "status", *params, *(c for c, _ in _METRIC_COLUMNS), "is_best"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        values = record.values
        metric_cells = []
        for _, name in _METRIC_COLUMNS:
            value = record.metrics.get(name)
            metric_cells.append("" if value is None else f"{value:.6g}")
        writer.writerow(
            [
                record.trial_id,
                record.status,
                *("" if values.get(p) is None else values[p] for p in params),
                *metric_cells,
                int(best is not None and record.trial_id == best.trial_id),
            ]
        )
    storage.write_text(path, buffer.getvalue())


#: The parameters objective.png plots the objective against, in order of preference: (name, x label, log x).
PLOTTED_PARAMS = (("omega", "omega (weight of L_BG)", True), ("top_k", "top_k (background masking)", False),
                  ("target_sigma", "target_sigma (reference heatmap px)", True),
                  ("learning_rate", "learning rate (peak)", True))


def plot_objective(records: Sequence[TrialRecord], path: str | os.PathLike, best: TrialRecord | None = None) -> None:
    """Plots the objective of completed trials against omega (log x) and against top_k.

    A search without omega or top_k (`--loss l2` / `focal`) gets the next of `PLOTTED_PARAMS` its trials have.

    Args:
        records: the trials.
        path: the PNG file.
        best: the trial to highlight, or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    done = [r for r in records if r.completed]
    present = [p for p in PLOTTED_PARAMS if any(p[0] in r.values for r in records)]
    panels = (present + [p for p in PLOTTED_PARAMS if p not in present])[:2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, label, log_x) in zip(axes, panels):
        points = [(float(r.values[name]), r.metrics[objective_lib.OBJECTIVE_NAME], r) for r in done if name in r.values]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", label="trial")
            best_points = [p for p in points if best is not None and p[2].trial_id == best.trial_id]
            if best_points:
                ax.scatter(
                    [best_points[0][0]], [best_points[0][1]], s=160, facecolors="none",
                    edgecolors="tab:red", linewidths=2, label=f"best (trial {best.trial_id})",
                )
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no completed trials with {name}", ha="center", va="center", transform=ax.transAxes)
        if log_x and points and all(p[0] > 0 for p in points):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("val sensitivity at target FPI")
    fig.suptitle(f"hourglass tune: {len(done)} completed of {len(records)} trials")
    fig.tight_layout()
    try:
        with storage.replacing(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def write_outputs(project_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Writes trials.csv, objective.png and (if a trial completed) best_hyperparameters.json.

    Args:
        project_dir: the KerasTuner project (`TUNE/<project_name>`).
        out_dir: where the outputs go (`TUNE`).

    Returns:
        A JSON-able summary: counts per status, best trial id, values and metrics, file paths.
    """
    out_dir = os.fspath(out_dir)
    storage.makedirs(out_dir)
    records = load_trials(project_dir)
    best = best_trial(records)
    csv_path = storage.join(out_dir, TRIALS_CSV_FILE)
    plot_path = storage.join(out_dir, PLOT_FILE)
    best_path = storage.join(out_dir, BEST_HPARAMS_FILE)
    write_trials_csv(records, csv_path, best)
    plot_objective(records, plot_path, best)
    if best is not None:
        write_best_hyperparameters(best, best_path)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {
        "trials": len(records),
        "status_counts": statuses,
        "best_trial_id": None if best is None else best.trial_id,
        "best_values": None if best is None else best.values,
        "best_metrics": None if best is None else best.metrics,
        "trials_csv": csv_path,
        "plot": plot_path,
        "best_hyperparameters": best_path if best is not None else None,
    }
