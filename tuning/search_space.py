"""The search space of `hourglass tune`: which loss settings are tuned, and over what.

The space has six named hyper-parameters. Their names are the contract with
`hourglass train --hparams` (which reads the `"values"` of
`best_hyperparameters.json`):

| name            | meaning                                   | default domain (`--loss hypersensitive`) |
|-----------------|-------------------------------------------|--------------------------------------|
| `omega`         | weight of L_BG in L_DET + omega * L_BG    | float, log sampling, 1e-3 .. 1       |
| `top_k`         | top-k masking of the background term      | int, 0 .. 8 (0 switches masking off) |
| `sigmas`        | Gaussian sigma bank, a comma list string  | choice "6,9,12,18" / "12" / "4,8,16,32" |
| `learning_rate` | Adam (peak) learning rate                 | float, log sampling, 1e-4 .. 3e-3    |
| `patch_size`    | the loss's patch size                     | not tuned (the training default)     |
| `target_sigma`  | sigma of the L2 / focal Gaussian target   | not a setting of this loss           |

Each loss has its own settings (`LOSS_PARAMS`) and default space (`default_space`): the
hypersensitive loss the first five, the L2 baseline and the focal loss `target_sigma` (float,
log sampling, 6 .. 24) and `learning_rate`, so each loss is tuned over its own settings with
the same trial budget ("tuned against tuned"). A setting of another loss is refused.

`sigmas`, `patch_size` and `target_sigma` are in reference pixels
(`keras_hourglass.training.geometry`), resolved against PREP's long side exactly as
`hourglass train` resolves them.

A space file (`hourglass tune --space FILE`) is a JSON object whose keys are
some of these names; a key left out keeps its default. Each value is one of

```json
{"min": 0.001, "max": 1.0, "sampling": "log"}     // range (float/int parameters)
{"min": 0, "max": 8, "step": 2}                    // int range with a step
{"values": ["6,9,12,18", "12"]}                    // a choice
{"fixed": 0.01}                                    // not tuned, always this value
null                                               // not tuned, the loss default
```

This module imports neither TensorFlow nor KerasTuner (the CLI validates a
space before it imports them); `SearchSpace.declare(hp)` only calls methods of
the `keras_tuner.HyperParameters` object it is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence, Union

from keras_hourglass.errors import InputError

#: Hyper-parameter names, in the order used for CSV columns and declaration.
PARAM_NAMES = ("omega", "top_k", "sigmas", "learning_rate", "patch_size", "target_sigma")
#: The settings each loss (`hourglass train --loss`) has; the others do not apply to it.
LOSS_PARAMS = {
    "hypersensitive": ("omega", "top_k", "sigmas", "learning_rate", "patch_size"),
    "l2": ("learning_rate", "target_sigma"),
    "focal": ("learning_rate", "target_sigma"),
}


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric range. `sampling` is "log" or "linear"; `step` only for ints."""

    min: float
    max: float
    sampling: str = "linear"
    step: int | None = None


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a few values."""

    values: tuple


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Not searched: the value is always `value` (recorded in the trial)."""

    value: Any


Domain = Union[Range, Choice, Fixed, None]

# Per parameter: value type and validity rule.
_KIND = {
    "omega": "float",
    "top_k": "int",
    "sigmas": "sigmas",
    "learning_rate": "float",
    "patch_size": "int",
    "target_sigma": "float",
}
_DEFAULT_SAMPLING = {"omega": "log", "learning_rate": "log", "target_sigma": "log"}


def parse_sigmas(text: str) -> tuple[float, ...]:
    """Parses a sigma-bank string such as "6,9,12,18" (reference heatmap pixels).

    Args:
        text: comma-separated positive numbers.

    Returns:
        The sigmas as a tuple of floats, in the given order.

    Raises:
        ValueError: empty, not a number, or not positive.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"sigma bank {text!r} is not a comma list of numbers")
    sigmas = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"sigma bank {text!r}: {part!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"sigma bank {text!r}: sigmas must be positive")
        sigmas.append(value)
    return tuple(sigmas)


def _check_value(name: str, value: Any) -> Any:
    """Returns: `value` normalised to the parameter's type; ValueError if invalid."""
    kind = _KIND[name]
    if kind == "sigmas":
        if not isinstance(value, str):
            raise ValueError(f"{name}: {value!r} must be a string such as \"6,9,12,18\"")
        parse_sigmas(value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: {value!r} is not a number")
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"{name}: {value!r} is not an integer")
        value = int(value)
        if value < 0 or (name == "patch_size" and value <= 0):
            raise ValueError(f"{name}: {value} must be {'positive' if name == 'patch_size' else '>= 0'}")
        return value
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a positive number")
    return value


def _parse_domain(name: str, spec: Any) -> Domain:
    """Returns: the domain described by `spec` (one space-file entry); ValueError if invalid."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{name}: expected an object with min/max, values or fixed, got {spec!r}")
    keys = set(spec)
    if keys == {"fixed"}:
        return Fixed(_check_value(name, spec["fixed"]))
    if keys == {"values"}:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{name}: 'values' must be a non-empty list")
        checked = tuple(_check_value(name, v) for v in values)
        if len(set(checked)) != len(checked):
            raise ValueError(f"{name}: 'values' has duplicates")
        return Choice(checked)
    if {"min", "max"} <= keys and keys <= {"min", "max", "sampling", "step"}:
        if _KIND[name] == "sigmas":
            raise ValueError(f"{name}: a sigma bank takes 'values' or 'fixed', not a range")
        low, high = _check_value(name, spec["min"]), _check_value(name, spec["max"])
        if not low < high:
            raise ValueError(f"{name}: min ({low}) must be smaller than max ({high})")
        sampling = spec.get("sampling", _DEFAULT_SAMPLING.get(name, "linear"))
        if sampling not in ("log", "linear"):
            raise ValueError(f"{name}: sampling must be 'log' or 'linear', got {sampling!r}")
        if sampling == "log" and low <= 0:
            raise ValueError(f"{name}: log sampling needs min > 0")
        step = spec.get("step")
        if step is not None:
            if _KIND[name] != "int" or isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise ValueError(f"{name}: 'step' must be a positive integer (int parameters only)")
        return Range(low, high, sampling, step)
    raise ValueError(
        f"{name}: unknown form {sorted(keys)}; use {{min, max[, sampling][, step]}}, {{values}} or {{fixed}}"
    )


def declare_domain(hp, name: str, domain: "Domain", *, integer: bool, ordered: bool = True):
    """Declares one parameter's domain on a `keras_tuner.HyperParameters`.

    Args:
        hp: the space being built (or a trial's values).
        name: the parameter.
        domain: `Fixed`, `Choice` or `Range`.
        integer: a `Range` is an `hp.Int` (step `domain.step`, default 1), else an `hp.Float`.
        ordered: whether a `Choice`'s values are ordered.

    Returns:
        The value of the parameter in `hp`.
    """
    if isinstance(domain, Fixed):
        return hp.Fixed(name, domain.value)
    if isinstance(domain, Choice):
        return hp.Choice(name, list(domain.values), ordered=ordered)
    if integer:
        return hp.Int(name, int(domain.min), int(domain.max), step=domain.step or 1, sampling=domain.sampling)
    return hp.Float(name, float(domain.min), float(domain.max), sampling=domain.sampling)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The tuned loss settings. Each field is a `Range`, `Choice`, `Fixed` or None (loss default)."""

    omega: Domain = Range(1e-3, 1.0, "log")
    top_k: Domain = Range(0, 8, "linear")
    sigmas: Domain = Choice(("6,9,12,18", "12", "4,8,16,32"))
    learning_rate: Domain = Range(1e-4, 3e-3, "log")
    patch_size: Domain = None
    target_sigma: Domain = None

    def declare(self, hp) -> dict[str, Any]:
        """Declares the space on a `keras_tuner.HyperParameters` and reads the values.

        Args:
            hp: a `keras_tuner.HyperParameters` (space being built, or a trial's values).

        Returns:
            {name: value} for every parameter that is not None; `sigmas` stays a string.
        """
        values: dict[str, Any] = {}
        for name in PARAM_NAMES:
            domain = getattr(self, name)
            if domain is not None:
                values[name] = declare_domain(hp, name, domain, integer=_KIND[name] == "int",
                                              ordered=_KIND[name] != "sigmas")
        return values

    def tuned_names(self) -> list[str]:
        """Returns: the names of the parameters that are searched (not fixed, not default)."""
        return [n for n in PARAM_NAMES if isinstance(getattr(self, n), (Range, Choice))]

    def to_json(self) -> dict[str, Any]:
        """Returns: the space in the space-file format (so it can be saved and reloaded)."""
        out: dict[str, Any] = {}
        for name in PARAM_NAMES:
            domain = getattr(self, name)
            if domain is None:
                out[name] = None
            elif isinstance(domain, Fixed):
                out[name] = {"fixed": domain.value}
            elif isinstance(domain, Choice):
                out[name] = {"values": list(domain.values)}
            else:
                entry = {"min": domain.min, "max": domain.max, "sampling": domain.sampling}
                if domain.step is not None:
                    entry["step"] = domain.step
                out[name] = entry
        return out


def default_space(loss: str = "hypersensitive") -> SearchSpace:
    """The default space of a loss: its own settings (`LOSS_PARAMS`), the others not tuned.

    Args:
        loss: "hypersensitive", "l2" or "focal".

    Returns:
        A `SearchSpace`.

    Raises:
        ValueError: an unknown loss.
    """
    if loss not in LOSS_PARAMS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_PARAMS)}, got {loss!r}")
    if loss == "hypersensitive":
        return SearchSpace()
    return SearchSpace(omega=None, top_k=None, sigmas=None, patch_size=None,
                       target_sigma=Range(6.0, 24.0, "log"))


def check_space_for_loss(space: SearchSpace, loss: str, source: str | os.PathLike | None = None) -> SearchSpace:
    """Refuses a space that sets another loss's parameters.

    Args:
        space: the space.
        loss: the loss it is meant for.
        source: named in the error (a file or a flag).

    Returns:
        `space`.

    Raises:
        InputError: naming `source` and the first parameter the loss does not have.
    """
    for name in PARAM_NAMES:
        if getattr(space, name) is not None and name not in LOSS_PARAMS[loss]:
            raise InputError(source, f"{name} is not a setting of the {loss} loss (its settings: "
                                     f"{', '.join(LOSS_PARAMS[loss])})")
    return space


def space_from_dict(config: Mapping[str, Any], source: str | os.PathLike | None = None,
                    base: SearchSpace | None = None) -> SearchSpace:
    """Builds a space from the space-file format, over the defaults.

    Args:
        config: {name: entry} (see the module docstring).
        source: where `config` came from, named in errors.
        base: the space the entries override (default `SearchSpace()`, the hypersensitive loss's).

    Returns:
        A `SearchSpace`.

    Raises:
        InputError: naming `source` and the first problem found.
    """
    if not isinstance(config, Mapping):
        raise InputError(source, "search space must be a JSON object of {name: domain}")
    unknown = sorted(set(config) - set(PARAM_NAMES))
    if unknown:
        raise InputError(source, f"unknown hyper-parameter {unknown[0]!r} (known: {', '.join(PARAM_NAMES)})")
    changes = {}
    for name, spec in config.items():
        try:
            changes[name] = _parse_domain(name, spec)
        except ValueError as err:
            raise InputError(source, str(err)) from None
    return dataclasses.replace(base or SearchSpace(), **changes)


def load_space(path: str | os.PathLike, base: SearchSpace | None = None) -> SearchSpace:
    """Reads and validates a space file.

    Args:
        path: a JSON file in the space-file format.
        base: the space its entries override (default `SearchSpace()`).

    Returns:
        A `SearchSpace` (unlisted parameters keep their defaults).

    Raises:
        InputError: naming `path`: missing, unreadable, not JSON, or an invalid entry.
    """
    from keras_hourglass import storage

    try:
        config = storage.read_json(path)
    except FileNotFoundError:
        raise InputError(path, "search space file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read search space file ({err.__class__.__name__})") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON (line {err.lineno}: {err.msg})") from None
    return space_from_dict(config, path, base)


def _split_numbers(flag: str, text: str, count: int | None = None) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise InputError(flag, f"{text!r} is not a comma list of numbers") from None
    if count is not None and len(numbers) != count:
        raise InputError(flag, f"{text!r}: expected {count} numbers MIN,MAX")
    return numbers


def apply_flags(
    space: SearchSpace,
    *,
    omega_range: str | None = None,
    top_k_range: str | None = None,
    lr_range: str | None = None,
    sigmas: Sequence[str] | None = None,
    patch_sizes: str | None = None,
    target_sigma_range: str | None = None,
    loss: str = "hypersensitive",
) -> SearchSpace:
    """Overrides parts of a space from command-line flags (flags win over the file).

    Args:
        space: the space to start from.
        omega_range: "MIN,MAX" (log sampling) or a single value to fix omega.
        top_k_range: "MIN,MAX" or a single value.
        lr_range: "MIN,MAX" (log sampling) or a single value.
        sigmas: sigma-bank strings to choose from (one string fixes the bank).
        patch_sizes: "P1,P2,..." choice of patch sizes (one value fixes it).
        target_sigma_range: "MIN,MAX" (log sampling) or a single value (L2 / focal target sigma).
        loss: the loss the space is for: a flag of a setting it does not have (`LOSS_PARAMS`) is refused.

    Returns:
        The updated `SearchSpace`.

    Raises:
        InputError: naming the flag and the reason.
    """
    ranges = (("--omega-range", "omega", omega_range), ("--top-k-range", "top_k", top_k_range),
              ("--lr-range", "learning_rate", lr_range), ("--target-sigma-range", "target_sigma", target_sigma_range))
    for flag, name, value in (*ranges, ("--sigmas", "sigmas", sigmas), ("--patch-sizes", "patch_size", patch_sizes)):
        if value is not None and name not in LOSS_PARAMS[loss]:
            raise InputError(flag, f"{name} is not a setting of the {loss} loss (--loss)")
    changes: dict[str, Domain] = {}
    for flag, name, text in ranges:
        if text is None:
            continue
        numbers = _split_numbers(flag, text)
        if len(numbers) == 1:
            spec: dict[str, Any] = {"fixed": numbers[0]}
        elif len(numbers) == 2:
            spec = {"min": numbers[0], "max": numbers[1]}
        else:
            raise InputError(flag, f"{text!r}: expected MIN,MAX or one value")
        try:
            changes[name] = _parse_domain(name, spec)
        except ValueError as err:
            raise InputError(flag, str(err)) from None
    if sigmas:
        spec = {"fixed": sigmas[0]} if len(sigmas) == 1 else {"values": list(sigmas)}
        try:
            changes["sigmas"] = _parse_domain("sigmas", spec)
        except ValueError as err:
            raise InputError("--sigmas", str(err)) from None
    if patch_sizes is not None:
        numbers = _split_numbers("--patch-sizes", patch_sizes)
        spec = {"fixed": numbers[0]} if len(numbers) == 1 else {"values": numbers}
        try:
            changes["patch_size"] = _parse_domain("patch_size", spec)
        except ValueError as err:
            raise InputError("--patch-sizes", str(err)) from None
    return dataclasses.replace(space, **changes)
