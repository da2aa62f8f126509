"""Training hyper-parameters: defaults, profiles, `--hparams` JSON, and command-line flags.

Precedence (lowest to highest): the defaults of `TrainConfig` < the `--profile`
(`PROFILES`) < the `--hparams` JSON < flags given explicitly on the command line.

Geometry (`patch_size`, `mask_size`, `sigmas`, `target_sigma`, `crop_size`) is in
*reference pixels* (pixels at the paper's 1536-px training scale; see
`keras_hourglass.training.geometry`) and is resolved against PREP's long side
when training starts.

`--hparams` accepts either the JSON of `keras_tuner.HyperParameters.get_config()`
(as written by `hourglass tune` to TUNE/best_hyperparameters.json and by TFX:
`{"space": [...], "values": {"omega": 0.01, ...}}`) or a plain `{"name": value}`
object. Known names are the fields of `TrainConfig` (e.g. `omega`, `top_k`,
`learning_rate`, `sigmas`, `patch_size`, `batch_size`) and the model options of
`keras_hourglass.model.hourglass.resolve_config` (e.g. `num_features`, `depth`),
which go to `TrainConfig.model`. `sigmas` may be a list or a comma-separated
string; `l2_sigma` (the name before 0.2) is read as `target_sigma`. KerasTuner's
bookkeeping names (`tuner/...`) are ignored; any other unknown name is an error
(it would otherwise be silently not tuned).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError

LOSSES = ("hypersensitive", "l2", "focal")
LR_SCHEDULES = ("cosine", "constant")
RENAMED = {"l2_sigma": "target_sigma"}
INT_FIELDS = ("top_k", "patch_size", "patch_epochs", "full_epochs", "steps_per_epoch", "images_per_epoch",
              "batch_size", "crop_size", "max_boxes", "seed", "val_images", "mask_size", "warmup_steps")
OPTIONAL_FIELDS = ("steps_per_epoch", "val_images", "mask_size", "warmup_steps")
PHASES = ("patch", "full", "both")
#: `--mixed-precision` choices: the compute dtype of the model (the heatmap heads and the losses stay float32).
PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """Everything `hourglass train` needs besides data, output and strategy.

    Args:
        loss: "hypersensitive" (the paper), "l2" (Gaussian L2, Newell et al.) or
            "focal" (CenterNet's penalty-reduced focal loss on the same targets).
        omega: background weight of the hypersensitive loss.
        top_k: predicted blobs excused from the background loss.
        patch_size: detector patch of the loss, reference heatmap pixels.
        mask_size: window masked around each top-k blob, reference heatmap
            pixels (None: half the patch_size, enough for a predicted blob of
            the largest sigma, so that the patch and three masks leave about
            3/4 of a default crop to L_BG at any scale).
        sigmas: reference blob sigmas of the loss, reference heatmap pixels.
        recenter: recentre the reference blob on the predicted blob (principle (a)).
            Off by default, on in the paper profile: on the quality benchmark's loose
            boxes re-centring let the reference follow the model's own responses out of
            the box and cost 0.10 validation sensitivity at 4.8 FPI (README).
        recenter_region: "patch" (centre of mass over the detector patch) or
            "box" (over the patch pixels inside the box).
        target_sigma: Gaussian target sigma of the L2 and focal losses,
            reference heatmap pixels.
        phase: "patch", "full" or "both" (patches first, then whole images).
        patch_epochs: epochs of phase 1 (patches).
        full_epochs: epochs of phase 2 (whole images).
        steps_per_epoch: steps per epoch; None = images_per_epoch // batch_size.
        images_per_epoch: images per epoch when steps_per_epoch is None.
        batch_size: the *global* batch (split over replicas).
        learning_rate: Adam (peak) learning rate.
        lr_schedule: "cosine" (linear warmup, then cosine decay to
            `min_lr_fraction * learning_rate` over all steps of all phases) or
            "constant".
        warmup_steps: warmup steps of the cosine schedule (None: 5% of all
            steps, at most 1000).
        min_lr_fraction: final learning rate of the cosine schedule, as a
            fraction of `learning_rate`.
        full_learning_rate: constant schedule only: learning rate of phase 2
            (None: learning_rate).
        crop_size: side of the training patches of phase 1, reference image
            pixels (clamped to the images' long side).
        max_boxes: box slots per image in the training targets.
        augment: random flips etc. in the input pipeline.
        zoom: with `augment`, patch-phase crops are scaled by a log-uniform
            factor in [1/zoom, zoom] (1 = off).
        rotate: with `augment`, also random 90-degree turns of the phase-1
            patches (whole images keep the orientation inference sees).
        preset: model preset ("tiny" or "paper").
        model: model option overrides (see `resolve_config`).
        seed: seed of weights initialisation and input pipeline.
        jit_compile: XLA for the train step (None: Keras' "auto").
        mixed_precision: compute dtype of the model, "float32", "bfloat16" or
            "float16" (Keras' "mixed_bfloat16" / "mixed_float16" dtype policy:
            float32 variables, heatmap heads and losses; loss scaling for float16).
        val_images: validation images for the FROC callback (None: all, 0: none).
        target_fpi: false positives per image at which `val_sensitivity` is read.
    """

    loss: str = "hypersensitive"
    omega: float = 0.01
    top_k: int = 3
    patch_size: int = 72
    mask_size: int | None = None
    sigmas: tuple = (6.0, 9.0, 12.0, 18.0)
    recenter: bool = False
    recenter_region: str = "patch"
    target_sigma: float = 12.0
    phase: str = "both"
    patch_epochs: int = 5
    full_epochs: int = 5
    steps_per_epoch: int | None = None
    images_per_epoch: int = 8000
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None
    min_lr_fraction: float = 0.05
    full_learning_rate: float | None = None
    crop_size: int = 768
    max_boxes: int = 16
    augment: bool = True
    zoom: float = 1.0
    rotate: bool = False
    preset: str = "tiny"
    model: dict = field(default_factory=dict)
    seed: int = 0
    jit_compile: bool | None = None
    mixed_precision: str = "float32"
    val_images: int | None = 64
    target_fpi: float = 4.8

    def validate(self) -> "TrainConfig":
        """Checks values.

        Returns:
            `self`, integers and numbers normalised.

        Raises:
            ArgumentError: naming the field (`hourglass train` maps it to its flag).
        """
        def bad(name: str, reason: str):
            raise ArgumentError(name, reason)

        for name in INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                bad(name, f"must be an integer, got {value!r}")
            setattr(self, name, int(value))
        for name in ("omega", "learning_rate", "target_sigma", "target_fpi", "min_lr_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(name, f"must be a number, got {value!r}")
            setattr(self, name, float(value))

        if self.loss not in LOSSES:
            bad("loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.recenter_region not in ("patch", "box"):
            bad("recenter_region", f"must be 'patch' or 'box', got {self.recenter_region!r}")
        if self.phase not in PHASES:
            bad("phase", f"must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if self.mixed_precision not in PRECISIONS:
            bad("mixed_precision", f"must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule != "constant" and self.full_learning_rate is not None:
            bad("full_learning_rate", "needs lr_schedule=constant (the cosine schedule spans both phases)")
        if isinstance(self.zoom, bool) or not isinstance(self.zoom, (int, float)) or not 1 <= self.zoom <= 4:
            bad("zoom", f"must be a number in [1, 4], got {self.zoom!r}")
        self.zoom = float(self.zoom)
        if not 0 <= self.min_lr_fraction <= 1:
            bad("min_lr_fraction", f"must be in [0, 1], got {self.min_lr_fraction!r}")
        for name in ("omega", "learning_rate", "target_sigma", "target_fpi"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(name, f"must be a finite number >= 0, got {value!r}")
        if self.learning_rate <= 0:
            bad("learning_rate", "must be > 0")
        for name in ("patch_size", "batch_size", "crop_size", "max_boxes", "images_per_epoch"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)!r}")
        for name in ("top_k", "patch_epochs", "full_epochs"):
            if int(getattr(self, name)) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.mask_size is not None and self.mask_size < 1:
            bad("mask_size", f"must be >= 1, got {self.mask_size!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", f"must be >= 0, got {self.warmup_steps!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch!r}")
        if not self.sigmas or any(float(s) <= 0 for s in self.sigmas):
            bad("sigmas", f"must be numbers > 0, got {self.sigmas!r}")
        if self.epochs_of("patch") + self.epochs_of("full") < 1:
            bad("epochs", "no epoch to train")
        return self

    def epochs_of(self, phase: str) -> int:
        """Epochs the given phase runs under the configured `phase` choice."""
        if phase == "patch":
            return int(self.patch_epochs) if self.phase in ("patch", "both") else 0
        return int(self.full_epochs) if self.phase in ("full", "both") else 0

    def phases(self) -> list[tuple[str, int]]:
        """`[(phase, epochs), ...]` in training order, phases with 0 epochs left out."""
        return [(p, self.epochs_of(p)) for p in ("patch", "full") if self.epochs_of(p) > 0]

    def steps_per_epoch_or_default(self) -> int:
        """Steps of one epoch: `steps_per_epoch`, else `images_per_epoch // batch_size` (at least 1)."""
        if self.steps_per_epoch:
            return int(self.steps_per_epoch)
        return max(1, int(self.images_per_epoch) // int(self.batch_size))

    def total_steps(self) -> int:
        """Optimizer steps of the whole run, all phases."""
        return self.steps_per_epoch_or_default() * sum(epochs for _, epochs in self.phases())

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["sigmas"] = list(self.sigmas)
        return out


def split_epochs(phase: str, epochs: int | None, patch_epochs: int | None = None,
                 full_epochs: int | None = None) -> tuple[int | None, int | None]:
    """Splits a total number of epochs between the phases, as `hourglass train --epochs` does.

    With `phase="both"` the total is split in half (the patch phase gets the odd
    epoch) unless one of the phases is given.

    Args:
        phase: "patch", "full" or "both".
        epochs: the total epochs (None: only the given per-phase epochs count).
        patch_epochs: epochs of the patch phase, if given.
        full_epochs: epochs of the full-image phase, if given.

    Returns:
        `(patch_epochs, full_epochs)`; None for a phase neither given nor implied.

    Raises:
        ArgumentError: (`epochs`) the total disagrees with the per-phase epochs.
    """
    total, patch, full = epochs, patch_epochs, full_epochs
    if total is None:
        return patch, full
    if phase == "patch":
        patch = total if patch is None else patch
    elif phase == "full":
        full = total if full is None else full
    elif patch is None and full is None:
        patch, full = total - total // 2, total // 2
    elif patch is None:
        patch = total - full
    elif full is None:
        full = total - patch
    if phase == "both" and (patch < 0 or full < 0 or patch + full != total):
        raise ArgumentError("epochs", f"{total} != patch_epochs={patch} + full_epochs={full}")
    if phase == "patch" and patch != total or phase == "full" and full != total:
        raise ArgumentError("epochs", f"{total} disagrees with the epochs given for phase={phase}")
    return patch, full


def parse_sigmas(value) -> tuple:
    """`"1.5,3,6"`, `[1.5, 3, 6]` or `3` -> `(1.5, 3.0, 6.0)`. Raises ValueError."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    sigmas = tuple(float(p) for p in parts)
    if not sigmas:
        raise ValueError("empty list of sigmas")
    return sigmas


def load_hparams(path: str) -> dict:
    """Reads `--hparams`: KerasTuner `HyperParameters.get_config()` JSON or a flat dict.

    Returns:
        `{name: value}`.

    Raises:
        InputError: unreadable file, not JSON, or not an object.
    """
    try:
        payload = json.loads(storage.read_text(path))
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(payload, dict):
        raise InputError(path, "expected a JSON object")
    if "values" in payload and isinstance(payload.get("space", []), list):
        values = payload["values"]
        if not isinstance(values, dict):
            raise InputError(path, "'values' must be an object")
        return dict(values)
    return dict(payload)


def apply_hparams(config: TrainConfig, hparams: dict, source: str = "hparams") -> TrainConfig:
    """Returns a copy of `config` with the hyper-parameters applied.

    Raises:
        InputError: an unknown name or a value of the wrong type (naming `source`).
    """
    from keras_hourglass.model.hourglass import PRESETS

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    model_keys = set().union(*(set(p) for p in PRESETS.values()))
    updates, model = {}, dict(config.model)
    for key, value in hparams.items():
        if key.startswith("tuner/"):
            continue
        try:
            key = RENAMED.get(key, key)
            if key == "sigmas":
                updates[key] = parse_sigmas(value)
            elif key in names:
                updates[key] = value
            elif key in model_keys:
                model[key] = value
            else:
                raise ValueError(f"unknown hyper-parameter {key!r}")
        except (TypeError, ValueError) as err:
            raise InputError(source, str(err)) from None
    return dataclasses.replace(config, model=model, **updates)


PROFILES: dict[str, dict] = {
    "default": {},
    # The paper's recipe (section 2.5): Adam 1e-4 without a schedule, 80 epochs of 8,000 images
    # (split between the phases as --epochs does), the paper-size model.
    "paper": {"learning_rate": 1e-4, "lr_schedule": "constant", "images_per_epoch": 8000,
              "patch_epochs": 40, "full_epochs": 40, "preset": "paper", "steps_per_epoch": None,
              "recenter": True},
}
"""Named bundles of defaults (`--profile`): applied over `TrainConfig()`, under `--hparams` and flags."""


def apply_profile(config: TrainConfig, profile: str) -> TrainConfig:
    """Returns: `config` with the values of the profile named `profile`. Raises: ArgumentError (`profile`)."""
    if profile not in PROFILES:
        raise ArgumentError("profile", f"must be one of {', '.join(PROFILES)}, got {profile!r}")
    return dataclasses.replace(config, **PROFILES[profile])


def manifest_hash(prep_dir: str) -> str | None:
    """sha256 of PREP/manifest.json (None when there is none)."""
    import hashlib

    path = storage.join(prep_dir, "manifest.json")
    if not storage.exists(path):
        return None
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()
