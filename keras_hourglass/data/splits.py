"""Patient-level train/val/test assignment (no TensorFlow).

Rules, per patient (raw key; only its salted hash is ever written):

1. No split given by the dataset for any of the patient's images: a
   uniform draw from the salted patient hash, u in [0, 1): test if
   u < test_fraction, val if u < test_fraction + val_fraction, else train.
2. The dataset gives splits (canonical ``split`` column, VinDr
   training/test, CBIS-DDSM Training/Test): the patient goes to the most
   held-out split any of its images names (test > val > train), so a
   patient the source put in two splits never leaks into training;
   such patients are counted as ``conflicts``. Images with an empty split
   follow their patient.
3. If the dataset gives no ``val`` split anywhere, val is carved out of
   its train patients by the salted hash (u < val_fraction).

4. Small datasets: a hashed split (test, val) with a positive fraction
   that drew no patient gets the train patient with the smallest draw,
   as long as train keeps at least one patient (so a 40-image demo still
   has a val and a test split).

The assignment depends only on (the table's patient keys, salt,
fractions), so every machine of a sharded run agrees on it.
"""

from __future__ import annotations

from typing import Iterable

from keras_hourglass.data import phi
from keras_hourglass.data.importers import ImageRecord

_ORDER = {"train": 0, "val": 1, "test": 2}


def assign_splits(images: Iterable[ImageRecord], salt: str, *, val_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> tuple[dict[str, str], dict]:
    """Assigns each image to a split by its patient.

    Args:
        images: the image records.
        salt: dataset salt.
        val_fraction: share of patients for val (hash rule, or carved out of a given train split).
        test_fraction: share of patients for test when the dataset gives no split.

    Returns:
        ({image key: split}, stats) with stats ``{"rule", "conflicts", "patients": {split: n}}``.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    images = list(images)
    given: dict[str, set[str]] = {}
    for image in images:
        given.setdefault(image.patient_id, set())
        if image.split:
            given[image.patient_id].add(image.split)
    any_given = any(given.values())
    any_val = any("val" in s for s in given.values())
    patient_split, conflicts = {}, 0
    for patient, splits in given.items():
        u = phi.unit_interval(patient, salt, "split")
        if splits:
            split = max(splits, key=_ORDER.__getitem__)
            conflicts += len(splits) > 1
            if split == "train" and not any_val and u < val_fraction:
                split = "val"
        elif u < test_fraction:
            split = "test"
        elif u < test_fraction + val_fraction:
            split = "val"
        else:
            split = "train"
        patient_split[patient] = split
    draws = {patient: phi.unit_interval(patient, salt, "split") for patient in given}
    hashed = {"test": test_fraction if not any_given else 0.0, "val": val_fraction if not any_val else 0.0}
    for split, fraction in hashed.items():
        members = [p for p, s in patient_split.items() if s == split]
        train = sorted((p for p, s in patient_split.items() if s == "train"), key=draws.__getitem__)
        if fraction > 0 and not members and len(train) > 1:
            patient_split[train[0]] = split
    counts = {name: 0 for name in _ORDER}
    for split in patient_split.values():
        counts[split] += 1
    rule = "dataset split column" + ("" if any_val else " + val by salted patient hash") if any_given \
        else "salted patient hash"
    return ({image.key: patient_split[image.patient_id] for image in images},
            {"rule": rule, "conflicts": conflicts, "patients": counts,
             "val_fraction": val_fraction, "test_fraction": test_fraction})
