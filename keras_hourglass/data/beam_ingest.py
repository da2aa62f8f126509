"""The Apache Beam path of `hourglass prepare` (``--runner NAME [-- BEAM OPTIONS]``; the ``beam`` extra).

The pipeline (the same import, plan, preprocessing and serialisation as the local path, see
`keras_hourglass.data.prepare`)::

    Create(partition ids) -> Reshuffle
      -> ParDo(IngestPartition): the worker imports the table (path checks included, memoised per
         worker), takes the images and import rejects whose salted hash falls in the partition,
         decodes + preprocesses each image (`ingest.process_image`) and serialises its Example
         (`plan.image_outcome`)
         main output: ((split, stratum), serialized Example)  -> Partition -> one WriteToTFRecord per
                      (split, stratum): PREP/<split>/<stratum>-SSSSS-of-NNNNN.tfrecord
         "outcome":   (counts, rejects) per image or import reject -> CombineGlobally(Accounting)
      -> Map(write manifest.json + rejects.csv), with the sinks' file names as a side input.

PHI stays inside `IngestPartition`: its input is a partition number, its outputs carry only salted
hashes, redacted reasons and encoded pixels; the raw records never enter a PCollection. Counters are
named by fixed reject codes. A bad file is a reject (``ingest.process_image`` maps every decoder error
to a code; anything else raised for one image is caught here as ``unexpected_error``), never a failed
bundle. Retries are the runner's: a retried bundle writes the same bytes, and WriteToTFRecord writes
temporary files that are finalised (renamed) only when the write succeeds. A native crash of a codec
(segfault) takes the worker process down; the runner retries the bundle (the local path isolates such
files in throw-away processes instead, see `prepare._isolated`).

Shard boundaries are the runner's: the same Examples as the local path, per split and stratum, in
other files and order (compare manifest ``examples_hash``, not ``content_hash``, which is null here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from keras_hourglass import storage
from keras_hourglass.contract import BEAM_SHARD_TEMPLATE, LABELS, RECORD_SUFFIX, SPLITS
from keras_hourglass.data import ingest, manifest, phi, plan, prepare
from keras_hourglass.errors import ArgumentError, InputError

IMAGES_PER_PARTITION = 16
"""Images per unit of work (a partition is decoded by one DoFn call)."""
MIN_PARTITIONS = 64
"""At least this many partitions (or one per image), so that every worker gets work."""
COUNTER_NAMESPACE = "hourglass.prepare"


def partition_count(images: int) -> int:
    """Returns: how many partitions the images are hashed into."""
    return max(1, min(images, max(MIN_PARTITIONS, math.ceil(images / IMAGES_PER_PARTITION))))


def _join(root: str, *parts: str) -> str:
    return FileSystems.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def _write(path: str, data: bytes) -> None:
    """Writes a small file: atomically on a local disk, through Beam's FileSystems elsewhere (gs://, s3://)."""
    if "://" not in path:
        storage.write_bytes(path, data)
        return
    with FileSystems.create(path) as handle:
        handle.write(data)


class IngestPartition(beam.DoFn):
    """Decodes, preprocesses and serialises the images of one partition (the only place raw ids live).

    Args:
        spec: the run as plain values: ``config`` (PrepareConfig fields), ``salt``, ``partitions``,
            ``tables_sha256`` (the launcher's tables: a worker seeing other bytes fails the job).
    """

    OUTCOME = "outcome"

    def __init__(self, spec: dict):
        self._spec = spec
        self._items: dict[int, list] = {}
        self._rejects: dict[int, list[dict]] = {}

    def setup(self) -> None:
        """Imports and plans the table once per worker (the same code and result as on the launcher)."""
        # pydicom logs what it repairs in a corrupt header, values included (a birth date, a name): a
        # worker's log is shipped to the runner's log service, so it stays silent; rejects say what is wrong.
        logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
        config = prepare.PrepareConfig(**self._spec["config"])
        found = [manifest.file_sha256(t) for t in config.annotations]
        if found != self._spec["tables_sha256"]:
            raise RuntimeError("the annotation table on this worker differs from the launcher's (every worker "
                               "must see the same --annotations and --images-root)")
        salt, count = self._spec["salt"], self._spec["partitions"]
        result = prepare.import_table(config)
        items, _ = plan.plan_images(result, salt, val_fraction=config.val_fraction,
                                    test_fraction=config.test_fraction)
        self._settings = prepare.ingest_settings(config)
        for item in items:
            self._items.setdefault(plan.partition_of(item.record.key, salt, count), []).append(item)
        for reject in result.rejects:
            part = plan.partition_of(reject.image_path or reject.row, salt, count)
            self._rejects.setdefault(part, []).append(plan.reject_dict(reject, salt))
        self._written = Metrics.counter(COUNTER_NAMESPACE, "images_written")
        self._rows = Metrics.counter(COUNTER_NAMESPACE, "rows_ingested")

    def process(self, partition: int):
        """Yields ((split, stratum), Example bytes) and, tagged "outcome", (counts, rejects) per image."""
        for reject in self._rejects.get(partition, []):
            Metrics.counter(COUNTER_NAMESPACE, f"rejected_{reject['code']}").inc()
            yield beam.pvalue.TaggedOutput(self.OUTCOME, ({}, [reject]))
        for item in self._items.get(partition, []):
            outcome = self._outcome(item)
            for reject in outcome.rejects:
                Metrics.counter(COUNTER_NAMESPACE, f"rejected_{reject['code']}").inc()
            if outcome.example is not None:
                self._written.inc()
                self._rows.inc(outcome.counts["rows_ingested"])
                yield (item.split, item.stratum), outcome.example
            yield beam.pvalue.TaggedOutput(self.OUTCOME, (outcome.counts, outcome.rejects))

    def _outcome(self, item: plan.Planned) -> plan.Outcome:
        salt = self._spec["salt"]
        try:
            return plan.image_outcome(item, ingest.process_image(item.record, self._settings, salt))
        except Exception as err:  # noqa: BLE001 - one image must never fail the job
            if type(err).__name__ == "TfioUnavailableError":
                raise  # an environment problem, not a bad file
            message = " ".join(str(err).split())[:200]
            result = ingest.rejected_result(item.record, "unexpected_error", f"{type(err).__name__}: {message}",
                                            salt)
            return plan.image_outcome(item, result)


class Accounting(beam.CombineFn):
    """Sums the per-image counts and gathers the rejects: the manifest's figures, from the pipeline itself."""

    def create_accumulator(self):
        return plan.empty_counts(), []

    def add_input(self, accumulator, element):
        counts, rejects = accumulator
        plan.add_counts(counts, element[0])
        rejects.extend(element[1])
        return accumulator

    def merge_accumulators(self, accumulators):
        counts, rejects = plan.empty_counts(), []
        for part_counts, part_rejects in accumulators:
            plan.add_counts(counts, part_counts)
            rejects.extend(part_rejects)
        return counts, rejects

    def extract_output(self, accumulator):
        return accumulator


def _write_manifest(totals, files: list[str], *, out: str, header: dict, rows_total: int,
                    images_seen: int, sinks: dict[str, tuple[str, str]]) -> dict:
    counts, rejects = totals
    entries = []
    prefix = out.rstrip("/") + "/"
    for path in files:
        relative = path[len(prefix):] if path.startswith(prefix) else path
        split, stratum = sinks[relative.split("-", 1)[0]]
        entries.append({"path": relative, "split": split, "stratum": stratum})
    return manifest.finish(out, header, counts, rejects, entries, rows_total=rows_total,
                           images_seen=images_seen, content_hash=None, write=_write)


def pipeline_options(config: prepare.PrepareConfig) -> PipelineOptions:
    """Returns: the Beam options of `config` (runner + the options after ``--``).

    Raises:
        InputError: an option Beam does not know (Beam itself would only log and drop it).
    """
    flags = ["--runner", config.runner, *config.beam_options]
    if not any(f.startswith("--default_sdk_harness_log_level") for f in flags):
        flags.append("--default_sdk_harness_log_level=WARNING")  # workers' INFO lines would flood stderr
    options = PipelineOptions(flags)
    dropped: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record):
            if "unparseable args" in record.getMessage():
                unknown = record.args[0] if record.args else [record.getMessage()]
                dropped.extend(str(arg) for arg in unknown)

    handler = _Catch()
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    beam_logger.addHandler(handler)
    propagate, beam_logger.propagate = beam_logger.propagate, False  # reported below, once
    try:
        options.get_all_options()
    finally:
        beam_logger.removeHandler(handler)
        beam_logger.propagate = propagate
    if dropped:
        raise ArgumentError("beam_options", f"Beam does not know the option(s) {' '.join(dropped)[:200]}")
    return options


def build(pipeline: beam.Pipeline, config: prepare.PrepareConfig, salt: str, result, items: list,
          split_stats: dict) -> None:
    """Adds the ingest to `pipeline` (see the module docstring).

    Args:
        pipeline: the Beam pipeline.
        config: the run's configuration.
        salt: dataset salt.
        result: the launcher's import of the table (rows, sources; the workers import it again).
        items: the launcher's plan (its per-(split, stratum) sizes set the shard counts).
        split_stats: the launcher's split statistics (for the manifest).
    """
    partitions = partition_count(len(items))
    spec = {"config": dataclasses.asdict(config), "salt": salt, "partitions": partitions,
            "tables_sha256": [manifest.file_sha256(t) for t in config.annotations]}
    sizes: dict[tuple[str, str], int] = {}
    for item in items:
        sizes[(item.split, item.stratum)] = sizes.get((item.split, item.stratum), 0) + 1
    targets = sorted(sizes, key=lambda k: (SPLITS.index(k[0]), LABELS.index(k[1])))
    index = {target: i for i, target in enumerate(targets)}

    decoded = (pipeline
               | "Partitions" >> beam.Create(list(range(partitions)))
               | "Spread" >> beam.Reshuffle()
               | "Ingest" >> beam.ParDo(IngestPartition(spec)).with_outputs(IngestPartition.OUTCOME, main="examples"))
    written = []
    if targets:
        parts = decoded.examples | "BySplitAndStratum" >> beam.Partition(
            lambda element, _n: index[element[0]], len(targets))
        for (split, stratum), part in zip(targets, parts):
            shards = max(1, math.ceil(sizes[(split, stratum)] / config.images_per_file))
            written.append(
                part
                | f"Values_{split}_{stratum}" >> beam.Values()
                | f"Write_{split}_{stratum}" >> beam.io.WriteToTFRecord(
                    _join(config.out, split, stratum), file_name_suffix=RECORD_SUFFIX, num_shards=shards,
                    shard_name_template=BEAM_SHARD_TEMPLATE))
        files = tuple(written) | "AllFiles" >> beam.Flatten()
    else:
        files = pipeline | "NoFiles" >> beam.Create([])
    totals = decoded[IngestPartition.OUTCOME] | "Accounting" >> beam.CombineGlobally(Accounting())
    sinks = {f"{split}/{stratum}": (split, stratum) for split, stratum in targets}
    header = prepare.manifest_header(config, result, salt, split_stats, runner=config.runner)
    _ = totals | "Manifest" >> beam.Map(
        _write_manifest, beam.pvalue.AsList(files), out=config.out, header=header, rows_total=result.total_rows,
        images_seen=plan.images_seen(result), sinks=sinks)


def _check_fresh_out(out: str) -> None:
    """Refuses an --out that already holds files: a Beam run is retried by its runner, not resumed."""
    if "://" in out:
        if FileSystems.match([_join(out, "*")])[0].metadata_list:
            raise InputError(out, "is not empty: a Beam prepare writes a fresh out=")
    elif storage.isdir(out) and storage.listdir(out):
        raise InputError(out, "is not empty: a Beam prepare writes a fresh out= (the local path resumes "
                              "into an existing one)")


def run(config: prepare.PrepareConfig) -> dict:
    """Runs the ingest as a Beam pipeline and waits for it.

    Args:
        config: the run's configuration (`config.runner` set).

    Returns:
        The summary (as the local path's, without chunk counts).

    Raises:
        InputError: bad arguments, inputs or Beam options (checked before the pipeline starts).
    """
    prepare.validate(config)
    _check_fresh_out(config.out)
    options = pipeline_options(config)
    salt = config.salt or phi.new_salt()
    result = prepare.import_table(config)
    items, split_stats = plan.plan_images(result, salt, val_fraction=config.val_fraction,
                                          test_fraction=config.test_fraction)
    if "://" not in config.out:
        storage.makedirs(config.out)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, salt, result, items, split_stats)
    state = pipeline.run().wait_until_finish()
    if str(state).split(".")[-1] != "DONE":
        raise RuntimeError(f"the Beam pipeline ended in state {state}")
    with FileSystems.open(_join(config.out, "manifest.json")) as handle:
        written = json.loads(handle.read().decode("utf-8"))
    return prepare.summary_of(config.out, written)
