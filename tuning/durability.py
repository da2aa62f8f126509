"""Makes KerasTuner's on-disk search state survive a kill at any instant.

KerasTuner 1.4 keeps a search in `TUNE/<project>/`: `oracle.json`, `tunerN.json`
and `trial_*/trial.json`. Two gaps make an interrupted search fail to resume
or resume wrongly (both seen in our SIGKILL test):

1. The files are written in place (`open(path, "w")`): a kill during the write
   leaves an empty or truncated `oracle.json` and the next run crashes with a
   JSONDecodeError. `install_atomic_state_writes` makes KerasTuner write a
   temporary file and rename it over the old one (`keras_hourglass.storage`: atomic on
   POSIX), so every file is always either the old or the new version.
2. A trial's file and `oracle.json` are two writes. Killed between them, the
   oracle may (a) not know a trial whose file says RUNNING (it would never be
   run again: the search "finishes" with a trial missing), or (b) still list as
   running a trial whose file says COMPLETED (it would be trained again).
   `reconcile` fixes the reloaded oracle from the trial files, which KerasTuner
   itself treats as the record of each trial.

Both are narrow and version-guarded: they touch only `keras_tuner.src.utils.save_json`
and the oracle attributes `trials`, `ongoing_trials`, `_retry_queue` of
keras-tuner 1.x, and do nothing (with a warning) if those are missing.
"""

from __future__ import annotations

import json
import os
import warnings

from keras_hourglass import storage
from keras_hourglass.errors import InputError

_MARK = "_hourglass_atomic"


def _supported() -> bool:
    import keras_tuner

    return str(getattr(keras_tuner, "__version__", "0")).startswith("1.")


def install_atomic_state_writes() -> bool:
    """Makes KerasTuner write its JSON state files atomically (temporary file + rename).

    Returns:
        True if installed (or already installed), False if this keras-tuner version is not
        the one the patch was written for (then nothing is changed).
    """
    try:
        from keras_tuner.src import utils as kt_utils
    except ImportError:
        kt_utils = None
    if kt_utils is None or not _supported() or not callable(getattr(kt_utils, "save_json", None)):
        warnings.warn("keras-tuner layout not recognised: its state files are not written atomically",
                      RuntimeWarning, stacklevel=2)
        return False
    if getattr(kt_utils.save_json, _MARK, False):
        return True

    def save_json(path, obj):
        text = json.dumps(obj)
        storage.write_text(os.fspath(path), text)  # local: temp + os.replace; URL: whole upload + rename
        return text

    setattr(save_json, _MARK, True)
    kt_utils.save_json = save_json
    return True


def check_state_files(project_dir: str | os.PathLike) -> None:
    """Refuses to resume from unreadable state (e.g. written before the atomic writes).

    Args:
        project_dir: `TUNE/<project>`.

    Raises:
        InputError: naming the first state file that is not valid JSON.
    """
    project_dir = os.fspath(project_dir)
    paths = [storage.join(project_dir, "oracle.json"), *storage.glob(storage.join(project_dir, "tuner*.json")),
             *storage.glob(storage.join(project_dir, "trial_*", "trial.json"))]
    for path in paths:
        if not storage.exists(path):
            continue
        try:
            storage.read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(path, "search state file is corrupt (written while the search was killed?); "
                                   "delete this trial directory, or start over with --overwrite") from None


def reconcile(oracle) -> dict[str, list[str]]:
    """Aligns a reloaded oracle with its trial files (see the module docstring, gap 2).

    Args:
        oracle: the oracle of a single-machine or chief tuner, just reloaded.

    Returns:
        {"requeued": trial ids that will run again, "dropped": finished trial ids removed
        from the retry queue}.
    """
    needed = ("trials", "ongoing_trials", "_retry_queue")
    if not _supported() or not all(hasattr(oracle, name) for name in needed):
        return {"requeued": [], "dropped": []}
    finished = {"COMPLETED", "FAILED"}
    # Reload moved the oracle's ongoing trials into the retry queue; drop those that ended.
    dropped = [t for t in oracle._retry_queue if oracle.trials[t].status in finished]
    oracle._retry_queue[:] = [t for t in oracle._retry_queue if t not in dropped]
    ongoing = {trial.trial_id for trial in oracle.ongoing_trials.values()}
    requeued = [
        trial_id
        for trial_id, trial in sorted(oracle.trials.items())
        if trial.status == "RUNNING" and trial_id not in oracle._retry_queue and trial_id not in ongoing
    ]
    oracle._retry_queue.extend(requeued)
    return {"requeued": requeued, "dropped": dropped}
