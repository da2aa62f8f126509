"""TF Serving's models.config (text proto `tensorflow.serving.ModelServerConfig`): version labels.

`set_version_label(path, model_name, label, version)` points a label ("stable", "canary") at a version
and makes the model's version policy `specific { versions: ... }` = exactly the labelled versions, so
both stay loaded whatever is exported next (with `latest`, a new export could unload the version
"stable" names). The file is rewritten atomically (temp file + rename in the same directory): TF Serving
re-reads it every `--model_config_file_poll_wait_seconds` and never sees half a file. Run
`tensorflow_model_server` with `--allow_version_labels_for_unavailable_models=true`, so a label may name
a version that is still loading (the export publishes, then labels it).

Also a command: `python -m serving.model_config --config models.config --label stable --version 3`
(promote a canary without exporting).
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_hourglass import storage
from keras_hourglass.errors import ArgumentError, InputError, with_flags

LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def read_model_config(path: str | os.PathLike):
    """Parses a models.config. Returns: a `ModelServerConfig`.

    Raises:
        InputError: unreadable or not a ModelServerConfig text proto.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        text = storage.read_text(path)
    except OSError as err:
        raise InputError(path, f"cannot read models.config ({err.strerror or type(err).__name__})") from None
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise InputError(path, f"not a TF Serving models.config: {str(err).splitlines()[0][:200]}") from None


def _header(path: str) -> str:
    """The leading comment block of the existing file (kept on rewrite)."""
    try:
        lines = storage.read_text(path).splitlines()
    except OSError:
        return ""
    kept = []
    for line in lines:
        if not line.startswith("#"):
            break
        kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def check_label(path: str | os.PathLike, model_name: str, label: str) -> None:
    """Checks, before anything is published, that `set_version_label` will succeed on this config.

    Raises:
        InputError: a bad label, an unreadable config, or no such model in it.
    """
    if not label or not set(label) <= LABEL_CHARS or label[0].isdigit():
        raise ArgumentError("label", f"{label!r} is not a version label (letters, digits, _ and -, not starting "
                                    "with a digit)")
    if storage.exists(path):
        config = read_model_config(path)
        if not any(m.name == model_name for m in config.model_config_list.config):
            names = ", ".join(m.name for m in config.model_config_list.config) or "none"
            raise InputError(path, f"has no model {model_name!r} (it has {names})")


def set_version_label(path: str | os.PathLike, model_name: str, label: str, version: int, *,
                      base_path: str | None = None) -> dict:
    """Points `label` of `model_name` at `version` and keeps exactly the labelled versions loaded.

    Args:
        path: the models.config (created with one model entry if absent; then `base_path` is required).
        model_name: the model's name in the config.
        label: the version label (letters, digits, "_" and "-").
        version: the version it names.
        base_path: base path for a model entry this call creates.

    Returns:
        `{"config": path, "labels": {label: version}, "versions": [...]}`.

    Raises:
        InputError: a bad label, an unreadable config, or no such model in it.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from keras_hourglass.storage import write_bytes as write_bytes_atomic

    path = os.fspath(path)
    check_label(path, model_name, label)
    if storage.exists(path):
        config = read_model_config(path)
    else:
        if not base_path:
            raise InputError(path, "no such models.config")
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name=model_name, base_path=base_path, model_platform="tensorflow")
    entry = next(m for m in config.model_config_list.config if m.name == model_name)
    entry.version_labels[label] = int(version)
    versions = sorted(set(entry.version_labels.values()))
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(versions)
    header = _header(path) or ("# TF Serving model config (tensorflow.serving.ModelServerConfig), rewritten by\n"
                               "# hourglass export --label: the labelled versions stay loaded.\n")
    write_bytes_atomic(path, (header + text_format.MessageToString(config)).encode("utf-8"))
    return {"config": path, "labels": dict(sorted(entry.version_labels.items())), "versions": versions}


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.model_config`: set a version label. Returns: the exit code."""
    import json

    parser = argparse.ArgumentParser(prog="python -m serving.model_config",
                                     description="Point a TF Serving version label at a version (atomically).")
    parser.add_argument("--config", required=True, help="models.config to update")
    parser.add_argument("--model-name", default="hourglass")
    parser.add_argument("--label", required=True, help="e.g. stable or canary")
    parser.add_argument("--version", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(set_version_label(args.config, args.model_name, args.label, args.version)))
    except InputError as err:
        err = with_flags(err, {"label": "--label", "model_name": "--model-name", "version": "--version"})
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
