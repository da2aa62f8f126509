"""`hourglass prepare`: annotation table + DICOMs -> sharded TFRecords, manifest, rejects.

Two paths, the same records: this module's local one (``--workers`` decoding processes on this
machine, the default) and an Apache Beam pipeline (``--runner NAME``, see
`keras_hourglass.data.beam_ingest`: DirectRunner locally, Dataflow / Flink / Spark at scale). Both
import the table (`keras_hourglass.data.importers`), plan the images (`keras_hourglass.data.plan`:
salted hashes, patient-level split, stratum), decode with the ONE preprocessing function
(`keras_hourglass.data.ingest`, no TensorFlow) and serialise each Example the same way
(`plan.image_outcome`), so for the same inputs and salt they write the same set of serialized
Examples per split and stratum (manifest ``examples_hash``); only the cut into files differs.

Local layout::

    PREP/<split>/<stratum>-CCCCC.tfrecord   one chunk (see records.py)
    PREP/<split>/<stratum>-CCCCC.done       its completion marker (JSON)
    PREP/prepare-state.json                 salt + settings fingerprint of the run
    PREP/manifest.json, PREP/rejects.csv

Chunks: the images of one (split, stratum) sorted by image hash, ``images_per_file`` per chunk. A
chunk is written to a temporary name and renamed, then its marker is written; a rerun skips every
chunk whose marker matches (same images, same settings) and whose file is intact, so an interrupted
prepare resumes where it stopped and produces the same files. Rerunning into a PREP made with other
settings or another input is refused.

Salt: ``--salt`` or, on a rerun, the salt of the previous run, or a new random one.
"""

from __future__ import annotations

import collections
import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from typing import Iterable

from keras_hourglass import storage
from keras_hourglass.contract import done_marker_name, preprocessing_block, shard_file_name
from keras_hourglass.data import ingest, manifest, phi, plan
from keras_hourglass.data.importers import ImportResult, get_importer, is_inside, real_root
from keras_hourglass.errors import ArgumentError, InputError
from keras_hourglass.version import __version__

logger = logging.getLogger(__name__)

MAX_SIZE = 16384  # --size: 4x the long side of a native full-field mammogram


@dataclasses.dataclass
class PrepareConfig:
    """Arguments of `prepare` (the CLI flags).

    Attributes:
        annotations: annotation table(s).
        images_root: directory the image paths are relative to.
        out: the PREP directory.
        fmt: importer name ("canonical", "vindr", "cbis-ddsm").
        size: training-scale long side (pixels).
        workers: decoding processes (1: in this process).
        decoder: "pydicom" or "tfio".
        runner: Apache Beam runner name (None: the local processes).
        beam_options: Beam pipeline options (``--direct_num_workers 2``, ``--project P``...).
        salt: hashing salt (None: reuse or generate).
        val_fraction, test_fraction: patient shares (see splits.py).
        max_pixels: reject larger images before decoding.
        voi, orient: preprocessing rules of read_mammogram.
        images_per_file: images per chunk file.
        quiet: no progress bar.
        birads_map: VinDr label map override.
    """

    annotations: list[str]
    images_root: str
    out: str
    fmt: str = "canonical"
    size: int = 1536
    workers: int = 1
    decoder: str = "pydicom"
    runner: str | None = None
    beam_options: list[str] = dataclasses.field(default_factory=list)
    salt: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_pixels: int = 40_000_000
    voi: str = "auto"
    orient: str = "left"
    images_per_file: int = 64
    quiet: bool = False
    birads_map: dict | None = None


_Planned = plan.Planned  # the name the worker tests use


@dataclasses.dataclass
class _Chunk:
    split: str
    stratum: str
    number: int
    items: list[_Planned]
    fingerprint: str = ""

    @property
    def relative(self) -> str:
        """The chunk's file path relative to PREP (always with "/", as the manifest lists it)."""
        return f"{self.split}/{shard_file_name(self.stratum, self.number)}"


def validate(config: PrepareConfig) -> None:
    """Checks the arguments and inputs of a prepare (either path). Raises: InputError naming the problem."""
    if config.size < 16:
        raise ArgumentError("size", f"{config.size} is too small (at least 16 pixels)")
    if config.size > MAX_SIZE:
        raise ArgumentError("size", f"{config.size} is too large (at most {MAX_SIZE} pixels)")
    if config.max_pixels < 1:
        raise ArgumentError("max_pixels", f"must be >= 1, got {config.max_pixels}")
    if config.workers < 1:
        raise ArgumentError("workers", "must be at least 1")
    if config.images_per_file < 1:
        raise ArgumentError("images_per_file", "must be at least 1")
    if not os.path.isdir(config.images_root):
        raise InputError(config.images_root, "images_root= is not a directory")
    if not storage.is_url(config.out) and is_inside(os.path.realpath(config.out), real_root(config.images_root)):
        raise ArgumentError("out", "is images_root= or inside it: write PREP elsewhere (its files would mix "
                                   "with the inputs)")
    for table in config.annotations:
        if not os.path.isfile(table):
            raise InputError(table, "annotation table not found")
    if config.decoder == "tfio":
        _check_tfio()
    elif config.decoder != "pydicom":
        raise ArgumentError("decoder", f"unknown decoder {config.decoder!r} (pydicom or tfio)")


def _check_tfio() -> None:
    """Raises the tfio decoder's own clear error (naming the TF version it needs) where it cannot run."""
    from keras_hourglass.data import tfio_decoder

    tfio_decoder.require_tfio()


def _settings_fingerprint(config: PrepareConfig, settings: ingest.IngestSettings, salt: str) -> str:
    digest = hashlib.sha256()
    for table in config.annotations:
        digest.update(manifest.file_sha256(table).encode())
    digest.update(json.dumps({
        "format": config.fmt, "settings": dataclasses.asdict(settings), "salt": salt,
        "val": config.val_fraction, "test": config.test_fraction, "per_file": config.images_per_file,
        "birads": sorted((config.birads_map or {}).items()),
    }, sort_keys=True).encode())
    return digest.hexdigest()


def _state_path(out: str) -> str:
    return storage.join(out, "prepare-state.json")


def _resolve_salt(config: PrepareConfig) -> str:
    state_path = _state_path(config.out)
    if storage.exists(state_path):
        previous = manifest.read_json(state_path)["salt"]
        if config.salt and config.salt != previous:
            raise InputError(config.out, "was prepared with another salt=; use a fresh out=")
        return previous
    return config.salt or phi.new_salt()


def _chunks(items: list[plan.Planned], images_per_file: int, fingerprint: str) -> list[_Chunk]:
    """Cuts the planned images (sorted by split, stratum, image hash) into chunks of `images_per_file`."""
    groups: dict[tuple[str, str], list[plan.Planned]] = collections.defaultdict(list)
    for item in items:
        groups[(item.split, item.stratum)].append(item)
    chunks = []
    for (split, stratum), members in sorted(groups.items()):
        for number, start in enumerate(range(0, len(members), images_per_file)):
            chunk = _Chunk(split, stratum, number, members[start:start + images_per_file])
            digest = hashlib.sha256(fingerprint.encode())
            for item in chunk.items:
                digest.update(f"{item.image_hash}:{len(item.record.rows)}\n".encode())
            chunk.fingerprint = digest.hexdigest()
            chunks.append(chunk)
    return chunks


def _marker_path(out: str, relative: str) -> str:
    return storage.join(out, done_marker_name(relative))


def _chunk_done(out: str, chunk: _Chunk) -> dict | None:
    marker_path = _marker_path(out, chunk.relative)
    if not storage.exists(marker_path):
        return None
    marker = manifest.read_json(marker_path)
    if marker.get("fingerprint") != chunk.fingerprint:
        raise InputError(marker_path, "belongs to a run with other settings or input; use a fresh out=")
    path = storage.join(out, chunk.relative)
    if marker["written"] and (not storage.exists(path) or storage.getsize(path) != marker["size"]):
        return None  # file lost or truncated: redo the chunk
    return marker


def _write_chunk(out: str, chunk: _Chunk, results: Iterable[dict], on_image=lambda: None) -> dict:
    """Streams one chunk's results into its TFRecord (temporary name, renamed when complete), then the marker.

    Args:
        out: PREP directory.
        chunk: the planned chunk.
        results: ingest results in the order of `chunk.items`.
        on_image: called after each image (progress bar).

    Returns:
        The marker (also written to disk): the chunk's counts and rejects.
    """
    from keras_hourglass.data import records

    rejects: list[dict] = []
    counts: dict = {}

    def examples():
        for item, result in zip(chunk.items, results):
            on_image()
            outcome = plan.image_outcome(item, result)
            rejects.extend(outcome.rejects)
            plan.add_counts(counts, outcome.counts)
            if outcome.example is not None:
                yield outcome.example

    path = storage.join(out, chunk.relative)
    import tensorflow as tf

    try:
        records.write_records_atomic(path, examples())
    except (OSError, tf.errors.OpError) as err:  # disk full, permissions: one line naming the file
        message = getattr(err, "strerror", None) or getattr(err, "message", None) or str(err)
        raise InputError(path, f"cannot write: {' '.join(str(message).split())[:200]}") from None
    size = storage.getsize(path)
    written = counts.get("images_written_total", 0)
    if written == 0:
        storage.remove(path)  # every image rejected: no empty file, the marker says so
        size = 0
    marker = {"fingerprint": chunk.fingerprint, "split": chunk.split, "stratum": chunk.stratum,
              "images": [i.image_hash for i in chunk.items], "written": written, "size": size,
              "counts": counts, "rejects": rejects}
    storage.write_json(_marker_path(out, chunk.relative), marker, sort_keys=True)
    return marker


def _isolated(work: list, fn, context) -> list[dict]:
    """Runs `fn(work)` in a fresh one-process pool; when that process dies, splits the work down to
    single images and rejects the one(s) that kill their process (code ``decoder_crash``)."""
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(fn, work).result()
    except BrokenProcessPool:
        if len(work) > 1:
            return [result for item in work for result in _isolated([item], fn, context)]
        record, _settings, salt = work[0]
        logger.warning("a decoding process died on one image; it is rejected (decoder_crash)")
        return [ingest.rejected_result(record, "decoder_crash", "the decoding process died on this file "
                                       "(a codec crash on a corrupt stream, or out of memory)", salt)]


# What every decoding process imports: the fork server imports it once and each worker inherits it.
# TensorFlow is never among them: the ingest side is TF-free, and the fork server is a fresh
# interpreter, never a fork of this process, which may have loaded TensorFlow. "__main__" (the
# multiprocessing default) is left out on purpose: a script that imports TensorFlow at the top would
# put TensorFlow into the server and every worker would be a fork of it (measured: twice the CPU per
# image); each worker re-runs the main module's imports itself instead, exactly as under spawn.
WORKER_PRELOAD = ("numpy", "PIL.Image", "pydicom", "pydicom.pixels", "keras_hourglass.data.dicom",
                  "keras_hourglass.data.ingest")


def worker_context():
    """The multiprocessing context of the decoding processes.

    "forkserver" where the platform has it: a fresh interpreter (not a fork of this process, which
    may hold TensorFlow's threads) imports `WORKER_PRELOAD` once, then forks each worker from
    itself. The interpreter start and the numpy / pydicom / PIL imports (0.25 s idle, up to ~1 s on
    the loaded 2-core machine) are paid once per prepare process instead of once per worker, and
    every later pool (the one-process pools that isolate a crashing file) starts in milliseconds,
    as the server lives as long as this process. Elsewhere: "spawn".
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(WORKER_PRELOAD))
        return context
    return multiprocessing.get_context("spawn")


class _ResultStream:
    """Iterator over ingest results in order; `close()` shuts the worker pool down (also unstarted)."""

    def __init__(self, generator, pool=None):
        self._generator, self._pool = generator, pool

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._generator)

    def close(self) -> None:
        self._generator.close()
        if self._pool is not None:  # a generator closed before its first step never ran its `with`
            self._pool.shutdown(wait=True, cancel_futures=True)


def _submit_window(pool, in_flight: collections.deque, batches: list, position: int, workers: int, fn) -> int:
    while position < len(batches) and len(in_flight) < 3 * workers:
        in_flight.append((position, pool.submit(fn, batches[position])))
        position += 1
    return position


def _results(items: list[_Planned], settings: ingest.IngestSettings, salt: str, workers: int,
             batch: int | None = None, fn=ingest.process_many) -> Iterable[dict]:
    """Returns an iterator over the ingest results in the order of `items` (with a `close()`).

    With workers > 1, batches of `batch` images (default: 4, fewer when there are few images, so
    that every worker gets work and the last batches balance) go to a process pool (see
    `worker_context`) with a bounded window (memory stays flat); the pool starts and the first
    batches are submitted HERE, before the caller imports TensorFlow or writes anything, so worker
    start-up overlaps the parent's own start. Workers return encoded PNG bytes, never pixel arrays.
    If a worker process dies (a codec segfault on a corrupt file), the batches in flight are re-run
    in isolation, the culprit image is rejected, and a new pool continues: one bad file never stops
    an ingest, and a rerun would not trip on it again.
    """
    if workers <= 1:
        return _ResultStream(fn([(item.record, settings, salt)])[0] for item in items)
    if batch is None:
        batch = max(1, min(4, len(items) // (4 * workers)))
    batches = [[(p.record, settings, salt) for p in items[i:i + batch]] for i in range(0, len(items), batch)]
    context = worker_context()
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    in_flight: collections.deque = collections.deque()
    try:
        position = _submit_window(pool, in_flight, batches, 0, workers, fn)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return _ResultStream(_drain(pool, in_flight, position, batches, workers, fn, context), pool)


def _drain(pool, in_flight: collections.deque, position: int, batches: list, workers: int, fn,
           context) -> Iterable[dict]:
    while True:
        broken = False
        with pool:
            while position < len(batches) or in_flight:
                position = _submit_window(pool, in_flight, batches, position, workers, fn)
                try:
                    results = in_flight[0][1].result()
                except BrokenProcessPool:
                    broken = True
                    break
                in_flight.popleft()
                yield from results
        if broken:
            for index, _future in in_flight:
                yield from _isolated(batches[index], fn, context)
            in_flight.clear()
        if position >= len(batches):
            return
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def import_table(config: PrepareConfig) -> ImportResult:
    """Runs the importer of `config.fmt` over the annotation table(s) (path checks included).

    Returns: the import, its accounting checked.
    """
    importer = get_importer(config.fmt)
    options = {"birads_map": config.birads_map} if config.birads_map else {}
    result = importer(config.annotations, config.images_root, **options)
    result.check_accounting()
    return result


def ingest_settings(config: PrepareConfig) -> ingest.IngestSettings:
    """Returns: the preprocessing settings of a prepare."""
    return ingest.IngestSettings(long_side=config.size, voi=config.voi, orient=config.orient,
                                 max_pixels=config.max_pixels, decoder=config.decoder)


def manifest_header(config: PrepareConfig, result: ImportResult, salt: str, split_stats: dict,
                    runner: str) -> dict:
    """Returns: the manifest entries that describe the run (not its counts); the same on both paths."""
    settings = ingest_settings(config)
    return {
        "format": config.fmt,
        "sources": result.sources,
        "code_version": __version__,
        "salt": salt,
        "runner": runner,
        "settings_fingerprint": hashlib.sha256(
            json.dumps([dataclasses.asdict(settings), config.fmt, salt, config.val_fraction,
                        config.test_fraction, [manifest.file_sha256(t) for t in config.annotations]],
                       sort_keys=True).encode()).hexdigest(),
        "preprocessing": preprocessing_block(long_side=config.size, windowing=config.voi,
                                             orientation=config.orient, max_pixels=config.max_pixels,
                                             decoder=config.decoder),
        "splits": {**{key: split_stats[key] for key in ("rule", "patients", "val_fraction", "test_fraction")},
                   "conflicts": split_stats["conflicts"]},
    }


def summary_of(out: str, result_manifest: dict, **extra) -> dict:
    """Returns: the JSON summary `hourglass prepare` prints (both paths)."""
    return {"out": out, "manifest": storage.join(out, "manifest.json"), "runner": result_manifest["runner"],
            "rows": result_manifest["inputs"]["rows"], "inputs": result_manifest["inputs"],
            "images_written": result_manifest["images_written"], "rejects": result_manifest["rejects"],
            "examples_hash": result_manifest["examples_hash"], "content_hash": result_manifest["content_hash"],
            **extra}


def prepare(config: PrepareConfig) -> dict:
    """Runs the ingest: on this machine's processes, or as a Beam pipeline when `config.runner` is set.

    Args:
        config: the run's configuration.

    Returns:
        A summary dict (the CLI prints it as JSON).

    Raises:
        InputError: bad arguments, unreadable tables, or a PREP from another run.
    """
    if config.runner:
        if config.workers != 1:
            raise ArgumentError("workers", "is for the local path; with runner= the runner decides (e.g. "
                                           "-- --direct_num_workers 2 --direct_running_mode multi_processing)")
        try:
            from keras_hourglass.data import beam_ingest
        except ImportError as err:  # err.name: the module that could not be imported
            if (err.name or "").partition(".")[0] != "apache_beam":
                raise
            raise ArgumentError("runner", "needs Apache Beam: pip install 'keras-hourglass[beam]'") from None
        return beam_ingest.run(config)
    if config.beam_options:
        raise ArgumentError("runner", f"Beam options given ({config.beam_options[0]} ...) but no runner=")
    return _prepare_local(config)


def _prepare_local(config: PrepareConfig) -> dict:
    """The local path: chunks decoded by `config.workers` processes, written here, resumable."""
    from tqdm import tqdm

    validate(config)
    storage.makedirs(config.out)
    settings = ingest_settings(config)
    salt = _resolve_salt(config)
    fingerprint = _settings_fingerprint(config, settings, salt)
    state_path = _state_path(config.out)
    if storage.isdir(storage.join(config.out, "shards")):
        raise InputError(config.out, "holds a PREP of an older version (machine shards, sIIofNN files); use a "
                                     "fresh out=")
    previous = storage.join(config.out, "manifest.json")
    if storage.exists(previous) and manifest.read_json(previous).get("runner", "local") != "local":
        raise InputError(config.out, "holds a PREP written by a Beam runner; use a fresh out=")
    if storage.exists(state_path) and manifest.read_json(state_path)["fingerprint"] != fingerprint:
        raise InputError(config.out, "was prepared with other settings or another input; use a fresh out=")
    storage.write_json(state_path, {"salt": salt, "fingerprint": fingerprint}, sort_keys=True)

    result = import_table(config)
    items, split_stats = plan.plan_images(result, salt, val_fraction=config.val_fraction,
                                          test_fraction=config.test_fraction)
    chunks = _chunks(items, config.images_per_file, fingerprint)

    markers: dict[int, dict] = {}
    todo = []
    for i, chunk in enumerate(chunks):
        marker = _chunk_done(config.out, chunk)
        if marker is not None:
            markers[i] = marker
        else:
            todo.append(i)
    total_images = sum(len(c.items) for c in chunks)
    done_images = sum(len(chunks[i].items) for i in markers)
    bar = tqdm(total=total_images, initial=done_images, unit="img", desc="prepare",
               disable=config.quiet or not sys.stderr.isatty(), file=sys.stderr)
    # Starts the decoding processes now: they work while this process imports TensorFlow (records).
    stream = _results([item for i in todo for item in chunks[i].items], settings, salt, config.workers)
    try:
        for i in todo:
            chunk = chunks[i]
            results = (next(stream) for _ in chunk.items)
            markers[i] = _write_chunk(config.out, chunk, results, on_image=lambda: bar.update(1))
    finally:
        stream.close()  # shuts the worker pool down, also on an error or Ctrl-C
        bar.close()

    counts = plan.empty_counts()
    rejects = [plan.reject_dict(r, salt) for r in result.rejects]
    files = []
    for i, chunk in enumerate(chunks):
        marker = markers[i]
        plan.add_counts(counts, marker["counts"])
        rejects += marker["rejects"]
        if marker["written"]:
            files.append({"path": chunk.relative, "records": marker["written"], "split": chunk.split,
                          "stratum": chunk.stratum})
    header = manifest_header(config, result, salt, split_stats, runner="local")
    written = manifest.finish(config.out, header, counts, rejects, files, rows_total=result.total_rows,
                              images_seen=plan.images_seen(result),
                              content_hash=manifest.content_hash(config.out, [f["path"] for f in files]))
    chunk_stats = {"total": len(chunks), "skipped": len(chunks) - len(todo), "written": len(todo)}
    return summary_of(config.out, written, chunks=chunk_stats)
