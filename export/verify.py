"""Checks that a SavedModel can be served by a stock TensorFlow Serving.

TF Serving runs only ops registered in its TensorFlow core build
("Op type not registered" otherwise), cannot run Python (PyFunc), does not
load tensorflow-io, and disables XLA unless started with a flag. So
`verify_saved_model`:

1. lists every op type in the SavedModel's GraphDef, including its function
   library, and rejects ops that are not registered in plain TensorFlow, the
   deny-list (`DENIED_OPS`, tensorflow-io's `IO>` namespace, `Xla*` ops) and
   any node or function with `_XlaMustCompile` / `_XlaCompile` set true;
2. runs `saved_model_cli show --all` and `saved_model_cli run` (serving_default,
   zero image) in subprocesses that do not import keras_hourglass, and checks the
   signatures and output shapes;
3. replays the warmup records (every signature) in a plain-TensorFlow
   subprocess, as TF Serving does on load, failing if keras_hourglass (or
   export/serving) had to be imported (TF itself may import Keras lazily),
   and checks that the `metadata` signature returns exactly
   `assets.extra/keras_hourglass.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from keras_hourglass import storage
from serving.contract import SERVING_DEFAULT, SIGNATURE_NAMES, metadata_path

# Ops TF Serving cannot run (Python callbacks) or must not meet (XLA launch).
DENIED_OPS = frozenset(
    {
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "XlaLaunch",
        "XlaLaunchV2",
        "_XlaCompile",
        "_XlaRun",
        "_XlaMerge",
    }
)
DENIED_PREFIXES = ("IO>", "Xla", "_Xla")  # tensorflow-io ops; XLA-only ops
XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile")


class VerificationError(Exception):
    """The SavedModel would not serve on a stock TF Serving.

    Args:
        path: the SavedModel directory.
        problems: one line per problem.
    """

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.path = os.fspath(path)
        self.problems = list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


@dataclasses.dataclass
class VerificationReport:
    """What `verify_saved_model` checked.

    Attributes:
        op_counts: op type -> number of nodes (graph + function library).
        signatures: `saved_model_cli show --all` parsed: signature ->
            {"inputs": {name: (dtype, shape)}, "outputs": {...}}; empty if
            the CLI was not run.
        cli_output_shapes: output key -> shape from `saved_model_cli run`.
        warmup_records: number of warmup records replayed (0 if not replayed).
    """

    op_counts: dict[str, int]
    signatures: dict[str, dict] = dataclasses.field(default_factory=dict)
    cli_output_shapes: dict[str, tuple] = dataclasses.field(default_factory=dict)
    warmup_records: int = 0

    def to_json(self) -> dict:
        return {
            "num_op_types": len(self.op_counts),
            "num_nodes": sum(self.op_counts.values()),
            "signatures": {
                name: {io: {k: list(v) for k, v in sig[io].items()} for io in ("inputs", "outputs")}
                for name, sig in sorted(self.signatures.items())
                if not name.startswith("__")
            },
            "cli_output_shapes": {k: list(v) for k, v in self.cli_output_shapes.items()},
            "warmup_records_replayed": self.warmup_records,
        }


def _load_saved_model_proto(path: str | os.PathLike):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = storage.join(os.fspath(path), "saved_model.pb")
    if not storage.isfile(pb):
        raise VerificationError(path, ["no saved_model.pb"])
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(storage.read_bytes(pb))
    return proto


def _attr_true(attrs, names=XLA_ATTRS) -> str | None:
    for name in names:
        if name in attrs and attrs[name].b:
            return name
    return None


def list_ops(path: str | os.PathLike) -> tuple[Counter, list[str]]:
    """Lists the op types of a SavedModel.

    Args:
        path: SavedModel directory.

    Returns:
        `(op_counts, xla_problems)`: a Counter of op type -> node count over
        every meta graph and its function library, and one line per node or
        function marked for XLA compilation.
    """
    proto = _load_saved_model_proto(path)
    counts: Counter = Counter()
    xla: list[str] = []
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for node in graph.node:
            counts[node.op] += 1
            if attr := _attr_true(node.attr):
                xla.append(f"node {node.name} ({node.op}) has {attr}=true")
        for function in graph.library.function:
            if attr := _attr_true(function.attr):
                xla.append(f"function {function.signature.name} has {attr}=true")
            for node in function.node_def:
                counts[node.op] += 1
                if attr := _attr_true(node.attr):
                    xla.append(f"node {node.name} ({node.op}) in {function.signature.name} has {attr}=true")
    return counts, xla


def check_ops(path: str | os.PathLike) -> tuple[Counter, list[str]]:
    """Returns `(op_counts, problems)`; `problems` is empty when every op is servable."""
    from tensorflow.python.framework import op_def_registry

    counts, problems = list_ops(path)
    proto = _load_saved_model_proto(path)
    # Function-library names are called as ops (e.g. by name); they are not registry ops.
    functions = {f.signature.name for mg in proto.meta_graphs for f in mg.graph_def.library.function}
    for op in sorted(counts):
        if op in DENIED_OPS or op.startswith(DENIED_PREFIXES):
            problems.append(f"op {op} cannot run in TF Serving ({counts[op]} nodes)")
        elif op in functions:
            continue
        elif op_def_registry.get(op) is None:
            problems.append(f"op {op} is not a registered TensorFlow core op")
    return counts, problems


def _saved_model_cli() -> list[str]:
    script = Path(sys.executable).with_name("saved_model_cli")
    if script.is_file():
        return [str(script)]
    found = shutil.which("saved_model_cli")
    if found:
        return [found]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    return env


def parse_show_all(text: str) -> dict[str, dict]:
    """Parses `saved_model_cli show --all` into signature -> {inputs, outputs}.

    Each tensor is `(dtype, shape)` as printed, e.g. `("DT_FLOAT", "(-1, -1, -1, 1)")`.
    """
    signatures: dict[str, dict] = {}
    current = section = name = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("signature_def['"):
            current = line.split("'")[1]
            signatures[current] = {"inputs": {}, "outputs": {}, "method": ""}
            section = None
        elif current is None:
            continue
        elif "contains the following input(s)" in line:
            section = "inputs"
        elif "contains the following output(s)" in line:
            section = "outputs"
        elif line.startswith(("inputs['", "outputs['")) and section:
            name = line.split("'")[1]
            signatures[current][section][name] = ["", ""]
        elif line.startswith("dtype:") and section and name:
            signatures[current][section][name][0] = line.split(":", 1)[1].strip()
        elif line.startswith("shape:") and section and name:
            signatures[current][section][name][1] = line.split(":", 1)[1].strip()
        elif line.startswith("Method name is:"):
            signatures[current]["method"] = line.split(":", 1)[1].strip()
    for sig in signatures.values():
        for section in ("inputs", "outputs"):
            sig[section] = {k: tuple(v) for k, v in sig[section].items()}
    return signatures


# Run in a clean subprocess (plain TensorFlow + tensorflow-serving-api protos): replays the warmup
# records on the SavedModel the way TF Serving does on load, prints the output shapes as JSON, and
# fails if anything of ours had to be imported.
_REPLAY_SCRIPT = r"""
import json, os, sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
path = sys.argv[1]
model = tf.saved_model.load(path)
records = []
warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
for raw in tf.data.TFRecordDataset(warmup):
    request = prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log.request
    name = request.model_spec.signature_name or "serving_default"
    outputs = model.signatures[name](**{k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    records.append({"signature": name, "outputs": {k: list(v.shape) for k, v in outputs.items()}})
contract = None
if "metadata" in model.signatures:
    contract = model.signatures["metadata"](request=tf.constant([0]))["metadata"].numpy()[0].decode("utf-8")
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("keras_hourglass", "export", "serving"))
if ours:
    sys.exit("the SavedModel needed Python modules beyond TensorFlow: " + ", ".join(ours[:5]))
print(json.dumps({"records": records, "metadata": contract}))
"""


def run_saved_model_cli(
    path: str | os.PathLike,
    *,
    image_hw: tuple[int, int] = (64, 48),
    replay: bool = True,
    timeout: float = 600.0,
) -> tuple[dict[str, dict], dict[str, tuple], list[dict]]:
    """Checks a SavedModel in subprocesses that import TensorFlow only.

    Runs, concurrently, from a scratch directory with PYTHONPATH cleared:
    `saved_model_cli show --all`; `saved_model_cli run --signature_def
    serving_default` on a zero image `[1, H, W, 1]`; and (if `replay`) a
    plain-TensorFlow script that replays the warmup records as TF Serving
    does on load and fails if a keras_hourglass/export/serving module
    got imported. Nothing of ours is needed to run the SavedModel.

    Returns:
        `(signatures, output_shapes, replayed)`: the parsed `show --all`;
        output key -> shape of `run`; `{"records": [per warmup record, its
        signature and output shapes], "metadata": the `metadata` signature's
        JSON text (None without that signature)}`.

    Raises:
        RuntimeError: a subprocess failed (its last stderr line included).
    """
    import numpy as np

    path = storage.abspath(path)
    cli = _saved_model_cli()
    h, w = image_hw
    with tempfile.TemporaryDirectory(prefix="hourglass-verify-") as scratch:
        # TF >= 2.15's saved_model_cli evaluates --input_exprs with ast.literal_eval (no
        # np.zeros(...)), so the input goes through an .npy file (--inputs).
        image = os.path.join(scratch, "image.npy")
        np.save(image, np.zeros((1, h, w, 1), np.float32))
        outdir = os.path.join(scratch, "out")
        commands = {
            "saved_model_cli show": [*cli, "show", "--all", "--dir", path],
            "saved_model_cli run": [
                *cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", SERVING_DEFAULT,
                "--inputs", f"image={image}", "--outdir", outdir, "--overwrite",
            ],
        }
        if replay:
            commands["warmup replay"] = [sys.executable, "-c", _REPLAY_SCRIPT, path]
        procs = {
            key: subprocess.Popen(cmd, cwd=scratch, env=_clean_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
            for key, cmd in commands.items()
        }
        outputs = {}
        try:
            for key, proc in procs.items():
                stdout, stderr = proc.communicate(timeout=timeout)
                if proc.returncode != 0:
                    tail = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
                    raise RuntimeError(f"{key} exited {proc.returncode}: {tail}")
                outputs[key] = stdout
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        shapes = {
            f[: -len(".npy")]: tuple(np.load(os.path.join(outdir, f)).shape)
            for f in sorted(os.listdir(outdir))
            if f.endswith(".npy")
        }
    replayed = json.loads(outputs["warmup replay"].strip().splitlines()[-1]) if replay else {"records": []}
    return parse_show_all(outputs["saved_model_cli show"]), shapes, replayed


def verify_saved_model(
    path: str | os.PathLike,
    *,
    stride: int | None = None,
    max_marks: int | None = None,
    image_hw: tuple[int, int] = (64, 48),
    run_cli: bool = True,
    warmup: bool = True,
) -> VerificationReport:
    """Verifies that a SavedModel is servable by a stock TF Serving.

    Args:
        path: SavedModel directory.
        stride: if given, the expected heatmap stride (checks the CLI output shape).
        max_marks: if given, the expected number of mark rows.
        image_hw: image size for the `saved_model_cli run` check.
        run_cli: run `saved_model_cli show --all` and `run` in subprocesses.
        warmup: with `run_cli`, also replay the warmup records in a clean
            plain-TensorFlow subprocess.

    Returns:
        A `VerificationReport`.

    Raises:
        VerificationError: one or more problems (all listed).
    """
    counts, problems = check_ops(path)
    if problems:
        raise VerificationError(path, problems)
    report = VerificationReport(op_counts=dict(counts))
    if run_cli:
        try:
            report.signatures, report.cli_output_shapes, replayed = run_saved_model_cli(
                path, image_hw=image_hw, replay=warmup
            )
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            raise VerificationError(path, [f"saved_model_cli/replay failed: {err}"]) from None
        report.warmup_records = len(replayed["records"])
        problems += _check_cli(report, stride, max_marks, image_hw)
        if warmup:  # the metadata signature's text comes from the replay subprocess
            problems += _check_metadata(path, replayed["metadata"])
        for i, record in enumerate(replayed["records"]):
            if record["signature"] == "metadata":
                continue
            marks = record["outputs"].get("marks")
            if max_marks and (not marks or marks[1:] != [max_marks, 3]):
                problems.append(f"warmup record {i} ({record['signature']}): marks shape {marks}")
    if problems:
        raise VerificationError(path, problems)
    return report


def _check_metadata(path: str | os.PathLike, text: str | None) -> list[str]:
    """The `metadata` signature must return exactly `assets.extra/keras_hourglass.json`."""
    try:
        written = storage.read_text(metadata_path(path))
    except OSError:
        written = None
    if text is None:
        return ["signature metadata missing or empty"]
    if written is not None and text != written:
        return ["the metadata signature differs from assets.extra/keras_hourglass.json"]
    return []


def _check_cli(report: VerificationReport, stride, max_marks, image_hw) -> list[str]:

    problems = [f"signature {s} missing" for s in SIGNATURE_NAMES if s not in report.signatures]
    shapes = report.cli_output_shapes
    h, w = image_hw
    expected = {"num_marks": (1,), "long_side": (1,)}
    if max_marks:
        expected["marks"] = (1, max_marks, 3)
    if stride:
        expected["heatmap"] = (1, -(-h // stride), -(-w // stride), 1)
    for key, shape in expected.items():
        if shapes.get(key) != shape:
            problems.append(f"saved_model_cli run: output {key} has shape {shapes.get(key)}, expected {shape}")
    return problems
