"""The stage-two half of a two-stage system, as its run recorded it (for evaluate and export).

`load_stage_two(RUN2/model.keras)` loads the classifier and reads RUN2/config.json beside it
(`hourglass train --stage 2`): how the scores combine (`two_stage.combination`, chosen on the val
proposals, or the caller's `combination`), and how the proposals were made (`proposals`: stage
one's threshold and marks per image, the long side of the images and the patch side, i.e. the
patch geometry). `hourglass evaluate --classifier` and `hourglass export --classifier` both score
marks this way, so the two agree by construction.

`check_long_side(stage_two, long_side, ...)` refuses a detector or a PREP at another scale than the
proposals': its patches would cover another extent of tissue than the classifier learnt on.
"""

from __future__ import annotations

import dataclasses
import os

from keras_hourglass.errors import ArgumentError, InputError

AUTO = "auto"
"""`combination` value: the combination RUN2/config.json records."""


@dataclasses.dataclass(frozen=True)
class StageTwo:
    """A loaded stage-two run.

    Attributes:
        classifier: the `keras.Model` (`[B, P, P, 1]` -> `[B, 1]`).
        path: the classifier file.
        combination: a key of `combine.COMBINATIONS`.
        combination_source: "RUN2/config.json" or "argument".
        threshold: stage one's proposal threshold (keep marks with `score >= threshold`); None: every mark.
        max_proposals: stage one's marks per image when the proposals were made; None: unknown.
        long_side: the long side (px) of the images the proposals were cut from; None: unknown.
        patch_size: the patch side P in image pixels (the classifier's input).
        config: RUN2/config.json ({} when there is none).
    """

    classifier: object
    path: str
    combination: str
    combination_source: str
    threshold: float | None
    max_proposals: int | None
    long_side: int | None
    patch_size: int
    config: dict

    def geometry(self) -> dict:
        """Returns: the patch geometry as the export contract records it."""
        patch = (self.config.get("proposals") or {}).get("patch") or {}
        return {"patch_size": self.patch_size, "long_side": self.long_side, "unit": "image pixels at long_side",
                "reference_px": patch.get("given"), "crop_rule": patch.get("crop_rule")}


def load_stage_two(path: str | os.PathLike, *, combination: str = AUTO, require_config: bool = False) -> StageTwo:
    """Loads a stage-two classifier and how its run scores.

    Args:
        path: RUN2/model.keras.
        combination: `AUTO` (RUN2/config.json's choice) or a key of `combine.COMBINATIONS`.
        require_config: refuse a classifier without RUN2/config.json (its geometry is then unknown).

    Returns:
        A `StageTwo`.

    Raises:
        InputError: not a loadable patch classifier; no (or no usable) RUN2/config.json where one is
            needed; a config whose patch side is not the classifier's input.
        ArgumentError: (`combination`) an unknown combination name.
    """
    from keras_hourglass.two_stage.classifier import classifier_patch_size, load_classifier
    from keras_hourglass.two_stage.combine import COMBINATIONS
    from keras_hourglass.two_stage.train import read_run_config

    path = os.fspath(path)
    if combination != AUTO and combination not in COMBINATIONS:
        raise ArgumentError("combination", f"unknown combination {combination!r}; expected {AUTO} or one of "
                                           f"{', '.join(COMBINATIONS)}")
    classifier = load_classifier(path)
    config = read_run_config(path) or {}
    if not config and require_config:
        raise InputError(path, "no config.json of a stage-two run beside it: its patch geometry and "
                               "combination are unknown")
    proposals = config.get("proposals") or {}
    source = "argument"
    if combination == AUTO:
        combination = ((config.get("two_stage") or {}).get("combination") or {}).get("name")
        if combination is None:
            raise InputError(path, "no config.json of a stage-two run beside it: give combination=")
        if combination not in COMBINATIONS:
            raise InputError(path, f"its config.json records an unknown combination {str(combination)[:40]!r}")
        source = "RUN2/config.json"
    size = classifier_patch_size(classifier)
    recorded = (proposals.get("patch") or {}).get("resolved")
    if recorded is not None and int(recorded) != size:
        raise InputError(path, f"takes {size}-px patches, but its config.json records {int(recorded)}-px patches")
    long_side = proposals.get("long_side")
    max_proposals = proposals.get("max_marks")
    return StageTwo(classifier=classifier, path=path, combination=combination, combination_source=source,
                    threshold=proposals.get("threshold"),
                    max_proposals=None if max_proposals is None else int(max_proposals),
                    long_side=None if long_side is None else int(long_side), patch_size=size, config=config)


def check_long_side(stage_two: StageTwo, long_side: int, *, where: str, what: str) -> None:
    """Refuses images at another scale than the proposals'.

    Args:
        stage_two: the loaded run.
        long_side: the long side (px) of the images stage two would see.
        where: the file or flag named in the error (the PREP, the detector, the classifier).
        what: what has `long_side` ("its images", "the detector's images").

    Raises:
        InputError: the proposals were cut at another long side.
    """
    if stage_two.long_side is not None and int(long_side) != stage_two.long_side:
        raise InputError(where, f"{what} have long side {int(long_side)} px, the classifier's proposals "
                                f"{stage_two.long_side} px: its {stage_two.patch_size}-px patches would cover "
                                "another extent")
