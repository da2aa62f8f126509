"""`hourglass prepare`: annotation table + DICOMs -> sharded TFRecords, manifest, rejects.

Steps: import the table (`keras_hourglass.data.importers`), assign
patient-level splits (`keras_hourglass.data.splits`), keep the images of
this machine (``--shard-index I --num-shards N``: salted image hash mod N
== I), plan chunks, decode in ``--workers`` processes
(`keras_hourglass.data.ingest`, no TensorFlow), write each chunk in the
parent, then the machine manifest and, when all machines are done, the
merged manifest.json and rejects.csv (`keras_hourglass.data.manifest`).

Layout::

    PREP/<split>/<stratum>-sIIofNN-CCCCC.tfrecord   one chunk (see records.py)
    PREP/<split>/<stratum>-sIIofNN-CCCCC.done       its completion marker (JSON)
    PREP/shards/sIIofNN.json                        machine manifest (rejects inline)
    PREP/shards/sIIofNN.state.json                  salt + settings fingerprint of the run
    PREP/manifest.json, PREP/rejects.csv            the merge of all machines

Chunks: the images of one (split, stratum, machine) sorted by image hash,
``images_per_file`` per chunk. A chunk is written to a temporary name and
renamed, then its marker is written; a rerun skips every chunk whose
marker matches (same images, same settings) and whose file is intact, so
an interrupted prepare resumes where it stopped and produces the same
files. Rerunning into a PREP made with other settings or another input is
refused.

Salt: ``--salt`` or, on a rerun, the salt of the previous run, or a new
random one; with ``--num-shards > 1`` it is required (machines must agree
on the split of every patient).
"""

from __future__ import annotations

import collections
import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import dataclasses
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from typing import Iterable

from keras_hourglass.data import ingest, manifest, phi, splits
from keras_hourglass.data.importers import ImageRecord, ImportResult, Reject, get_importer, is_inside, real_root
from keras_hourglass.errors import InputError
from keras_hourglass.version import __version__

logger = logging.getLogger(__name__)

LABELS = ("normal", "benign", "high_risk", "malignant")
MAX_SIZE = 16384  # --size: 4x the long side of a native full-field mammogram
ORIENTATION_RULES = {
    "left": "chest wall on the left (right breasts mirrored; tags, then pixels)",
    "right": "chest wall on the right (left breasts mirrored; tags, then pixels)",
    "none": "stored orientation kept",
}


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
        shard_index, num_shards: this machine's part of the work.
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
    shard_index: int = 0
    num_shards: int = 1
    salt: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_pixels: int = 40_000_000
    voi: str = "auto"
    orient: str = "left"
    images_per_file: int = 64
    quiet: bool = False
    birads_map: dict | None = None


@dataclasses.dataclass
class _Planned:
    record: ImageRecord
    image_hash: str
    patient_hash: str
    study_hash: str
    split: str
    stratum: str


@dataclasses.dataclass
class _Chunk:
    split: str
    stratum: str
    number: int
    items: list[_Planned]
    fingerprint: str = ""

    def relative(self, shard_index: int, num_shards: int) -> str:
        from_name = f"{self.stratum}-s{shard_index:02d}of{num_shards:02d}-{self.number:05d}.tfrecord"
        return f"{self.split}/{from_name}"


def _validate(config: PrepareConfig) -> None:
    if config.num_shards < 1 or not 0 <= config.shard_index < config.num_shards:
        raise InputError("--shard-index", f"must be in [0, {config.num_shards}) with --num-shards >= 1")
    if config.num_shards > 99:
        raise InputError("--num-shards", "at most 99 machines")
    if config.num_shards > 1 and not config.salt:
        raise InputError("--salt", "required with --num-shards > 1: every machine must use the same salt")
    if config.size < 16:
        raise InputError("--size", f"{config.size} is too small (at least 16 pixels)")
    if config.size > MAX_SIZE:
        raise InputError("--size", f"{config.size} is too large (at most {MAX_SIZE} pixels)")
    if config.max_pixels < 1:
        raise InputError("--max-pixels", f"must be >= 1, got {config.max_pixels}")
    if config.workers < 1:
        raise InputError("--workers", "must be at least 1")
    if config.images_per_file < 1:
        raise InputError("--images-per-file", "must be at least 1")
    if not os.path.isdir(config.images_root):
        raise InputError(config.images_root, "--images-root is not a directory")
    if is_inside(os.path.realpath(config.out), real_root(config.images_root)):
        raise InputError("--out", "is --images-root or inside it: write PREP elsewhere (its files would mix "
                                  "with the inputs)")
    for table in config.annotations:
        if not os.path.isfile(table):
            raise InputError(table, "annotation table not found")
    if config.decoder == "tfio":
        _check_tfio()
    elif config.decoder != "pydicom":
        raise InputError("--decoder", f"unknown decoder {config.decoder!r} (pydicom or tfio)")


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
        "shards": [config.shard_index, config.num_shards], "birads": sorted((config.birads_map or {}).items()),
    }, sort_keys=True).encode())
    return digest.hexdigest()


def _resolve_salt(config: PrepareConfig) -> str:
    state_path = os.path.join(config.out, "shards",
                              f"s{config.shard_index:02d}of{config.num_shards:02d}.state.json")
    if os.path.exists(state_path):
        previous = manifest.read_json(state_path)["salt"]
        if config.salt and config.salt != previous:
            raise InputError(config.out, "was prepared with another --salt; use a fresh --out")
        return previous
    return config.salt or phi.new_salt()


def _machine_of(key: str, salt: str, num_shards: int) -> int:
    return int(phi.salted_hash(key, salt, "machine"), 16) % num_shards


def _reject_dict(reject: Reject, salt: str) -> dict:
    """A reject as written to rejects.csv and the manifests: the row (table name + row number), the salted
    hash of the image path (the TFRecords' ``image_hash``), never the path itself (it may name the patient)."""
    return {"row": reject.row, "image_hash": phi.salted_hash(reject.image_path, salt, "image") if reject.image_path
            else "", "code": reject.code, "reason": phi.redact(reject.reason, reject.secrets, salt)}


def _stratum_of(labels: Iterable[str]) -> str:
    """`records.stratum_of` (the most severe label; "normal" without findings) without importing
    TensorFlow: planning happens before the decoding processes start, TensorFlow is imported after."""
    best = 0
    for label in labels:
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
        best = max(best, LABELS.index(label))
    return LABELS[best]


def _plan(result: ImportResult, config: PrepareConfig, salt: str, fingerprint: str):
    """Returns: (chunks of this machine, split stats, this machine's import rejects, images seen)."""
    split_of, split_stats = splits.assign_splits(result.images, salt, val_fraction=config.val_fraction,
                                                 test_fraction=config.test_fraction)
    mine = lambda key: _machine_of(key, salt, config.num_shards) == config.shard_index  # noqa: E731
    groups: dict[tuple[str, str], list[_Planned]] = collections.defaultdict(list)
    for record in result.images:
        if not mine(record.key):
            continue
        stratum = _stratum_of(f.label for f in record.findings)
        groups[(split_of[record.key], stratum)].append(_Planned(
            record=record, image_hash=phi.salted_hash(record.key, salt, "image"),
            patient_hash=phi.salted_hash(record.patient_id, salt, "patient"),
            study_hash=phi.salted_hash(record.study_id, salt, "study"),
            split=split_of[record.key], stratum=stratum))
    chunks = []
    for (split, stratum), items in sorted(groups.items()):
        items.sort(key=lambda p: p.image_hash)
        for number, start in enumerate(range(0, len(items), config.images_per_file)):
            chunk = _Chunk(split, stratum, number, items[start:start + config.images_per_file])
            digest = hashlib.sha256(fingerprint.encode())
            for item in chunk.items:
                digest.update(f"{item.image_hash}:{len(item.record.rows)}\n".encode())
            chunk.fingerprint = digest.hexdigest()
            chunks.append(chunk)
    rejects = [r for r in result.rejects if mine(r.image_path or r.row)]
    seen = {r.key for r in result.images} | {r.image_path for r in result.rejects if r.image_path}
    seen_mine = sum(1 for key in seen if mine(key))
    return chunks, split_stats, rejects, seen_mine


def _marker_path(out: str, relative: str) -> str:
    return os.path.join(out, relative[: -len(".tfrecord")] + ".done")


def _chunk_done(out: str, chunk: _Chunk, relative: str) -> dict | None:
    marker_path = _marker_path(out, relative)
    if not os.path.exists(marker_path):
        return None
    marker = manifest.read_json(marker_path)
    if marker.get("fingerprint") != chunk.fingerprint:
        raise InputError(marker_path, "belongs to a run with other settings or input; use a fresh --out")
    path = os.path.join(out, relative)
    if marker["written"] and (not os.path.exists(path) or os.path.getsize(path) != marker["size"]):
        return None  # file lost or truncated: redo the chunk
    return marker


def _write_chunk(out: str, relative: str, chunk: _Chunk, results: Iterable[dict], salt: str,
                 on_image=lambda: None) -> dict:
    """Streams one chunk's results into its TFRecord (temporary name, renamed when complete), then the marker.

    Args:
        out: PREP directory.
        relative: the chunk file path relative to PREP.
        chunk: the planned chunk.
        results: ingest results in the order of `chunk.items`.
        salt: dataset salt (for redaction).
        on_image: called after each image (progress bar).

    Returns:
        The marker (also written to disk).
    """
    from keras_hourglass.data import records

    rejects: list[dict] = []
    findings: collections.Counter = collections.Counter()
    rules: dict[str, collections.Counter] = {"voi": collections.Counter(), "orientation": collections.Counter()}
    stats = {"clipped": 0, "rows": 0, "written": 0, "duplicates": 0}

    def examples():
        for item, result in zip(chunk.items, results):
            on_image()
            if result["key"] != item.record.key:
                raise RuntimeError("ingest results out of order")  # a bug, never bad input
            if result["status"] != "ok":
                for row, code, reason in result["rejects"]:
                    rejects.append({"row": row, "image_hash": item.image_hash, "code": code, "reason": reason})
                continue
            findings.update(result["box_labels"])
            rules["voi"][result["voi_rule"]] += 1
            rules["orientation"][result["orientation_rule"]] += 1
            stats["clipped"] += result["clipped"]
            stats["rows"] += len(item.record.rows)
            stats["duplicates"] += item.record.duplicate_rows
            stats["written"] += 1
            yield records.make_example(
                result["png"], height=result["height"], width=result["width"], boxes=result["boxes"],
                box_labels=result["box_labels"], finding_types=result["finding_types"], label=item.stratum,
                patient_hash=item.patient_hash, study_hash=item.study_hash, image_hash=item.image_hash,
                laterality=result["laterality"], view=result["view"], transform=result["transform"],
            ).SerializeToString(deterministic=True)

    path = os.path.join(out, relative)
    import tensorflow as tf

    try:
        records.write_records_atomic(path, examples())
    except (OSError, tf.errors.OpError) as err:  # disk full, permissions: one line naming the file
        message = getattr(err, "strerror", None) or getattr(err, "message", None) or str(err)
        raise InputError(path, f"cannot write: {' '.join(str(message).split())[:200]}") from None
    size = os.path.getsize(path)
    if stats["written"] == 0:
        os.remove(path)  # every image rejected: no empty file, the marker says so
        size = 0
    marker = {"fingerprint": chunk.fingerprint, "split": chunk.split, "stratum": chunk.stratum,
              "images": [i.image_hash for i in chunk.items], "written": stats["written"], "size": size,
              "findings": dict(findings), "clipped": stats["clipped"], "rows_ingested": stats["rows"],
              "duplicate_rows_merged": stats["duplicates"],
              "rules": {key: dict(counter) for key, counter in rules.items()}, "rejects": rejects}
    manifest.write_json_atomic(_marker_path(out, relative), marker)
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


def prepare(config: PrepareConfig) -> dict:
    """Runs the ingest of this machine's share and merges manifests when all machines are done.

    Args:
        config: the run's configuration.

    Returns:
        A summary dict (the CLI prints it as JSON).

    Raises:
        InputError: bad arguments, unreadable tables, or a PREP from another run.
    """
    from tqdm import tqdm

    _validate(config)
    os.makedirs(config.out, exist_ok=True)
    settings = ingest.IngestSettings(long_side=config.size, voi=config.voi, orient=config.orient,
                                     max_pixels=config.max_pixels, decoder=config.decoder)
    salt = _resolve_salt(config)
    fingerprint = _settings_fingerprint(config, settings, salt)
    tag = f"s{config.shard_index:02d}of{config.num_shards:02d}"
    state_path = os.path.join(config.out, "shards", f"{tag}.state.json")
    previous_counts = {int(os.path.basename(p)[5:7])
                       for p in glob.glob(os.path.join(config.out, "shards", "s[0-9][0-9]of[0-9][0-9].state.json"))}
    previous_counts.discard(config.num_shards)
    if previous_counts:
        raise InputError(config.out, f"holds a run with --num-shards {sorted(previous_counts)}; its files would "
                                     "mix with this one's: use a fresh --out")
    if os.path.exists(state_path) and manifest.read_json(state_path)["fingerprint"] != fingerprint:
        raise InputError(config.out, "was prepared with other settings or another input; use a fresh --out")
    manifest.write_json_atomic(state_path, {"salt": salt, "fingerprint": fingerprint})

    importer = get_importer(config.fmt)
    options = {"birads_map": config.birads_map} if config.birads_map else {}
    result = importer(config.annotations, config.images_root, **options)
    result.check_accounting()
    chunks, split_stats, import_rejects, images_seen = _plan(result, config, salt, fingerprint)

    markers: dict[int, dict] = {}
    todo = []
    for i, chunk in enumerate(chunks):
        marker = _chunk_done(config.out, chunk, chunk.relative(config.shard_index, config.num_shards))
        if marker is not None:
            markers[i] = marker
        else:
            todo.append(i)
    total_images = sum(len(c.items) for c in chunks)
    done_images = sum(len(chunks[i].items) for i in markers)
    bar = tqdm(total=total_images, initial=done_images, unit="img", desc=f"prepare {tag}",
               disable=config.quiet or not sys.stderr.isatty(), file=sys.stderr)
    # Starts the decoding processes now: they work while this process imports TensorFlow (records).
    stream = _results([item for i in todo for item in chunks[i].items], settings, salt, config.workers)
    try:
        for i in todo:
            chunk = chunks[i]
            results = (next(stream) for _ in chunk.items)
            markers[i] = _write_chunk(config.out, chunk.relative(config.shard_index, config.num_shards), chunk,
                                      results, salt, on_image=lambda: bar.update(1))
    finally:
        stream.close()  # shuts the worker pool down, also on an error or Ctrl-C
        bar.close()

    counts = {"rows_ingested": 0, "rows_rejected": 0, "duplicate_rows_merged": 0, "images_seen": images_seen,
              "images_written_total": 0,
              "images_written": {s: {label: 0 for label in LABELS} for s in ("train", "val", "test")},
              "findings": {label: 0 for label in LABELS if label != "normal"}, "boxes_clipped": 0,
              "rules_fired": {"voi": {}, "orientation": {}},
              "split_conflicts": split_stats["conflicts"] if config.shard_index == 0 else 0}
    rejects = [_reject_dict(r, salt) for r in import_rejects]
    files = []
    for i, chunk in enumerate(chunks):
        marker = markers[i]
        counts["rows_ingested"] += marker["rows_ingested"]
        counts["duplicate_rows_merged"] += marker.get("duplicate_rows_merged", 0)
        counts["images_written_total"] += marker["written"]
        counts["images_written"][chunk.split][chunk.stratum] += marker["written"]
        for label, n in marker["findings"].items():
            counts["findings"][label] += n
        counts["boxes_clipped"] += marker["clipped"]
        for kind, fired in marker.get("rules", {}).items():
            for rule, n in fired.items():
                counts["rules_fired"][kind][rule] = counts["rules_fired"][kind].get(rule, 0) + n
        rejects += marker["rejects"]
        if marker["written"]:
            files.append({"path": chunk.relative(config.shard_index, config.num_shards),
                          "records": marker["written"], "split": chunk.split, "stratum": chunk.stratum})
    counts["rows_rejected"] = len(rejects)
    machine = {
        "format": config.fmt,
        "sources": result.sources,
        "code_version": __version__,
        "salt": salt,
        "settings_fingerprint": hashlib.sha256(
            json.dumps([dataclasses.asdict(settings), config.fmt, salt, config.val_fraction,
                        config.test_fraction, [manifest.file_sha256(t) for t in config.annotations]],
                       sort_keys=True).encode()).hexdigest(),
        "shard": {"index": config.shard_index, "count": config.num_shards},
        "preprocessing": {"size": config.size, "long_side": config.size, "windowing": config.voi,
                          "orientation": config.orient, "orientation_rule": ORIENTATION_RULES[config.orient],
                          "max_pixels": config.max_pixels, "decoder": config.decoder, "png_bits": 16,
                          "box_frame": "image (training scale), continuous pixel coordinates"},
        "splits": {key: split_stats[key] for key in ("rule", "patients", "val_fraction", "test_fraction")},
        "inputs_total": {"rows": result.total_rows},
        "counts": counts,
        "rejects": rejects,
        "files": files,
        "chunks": {"total": len(chunks), "skipped": len(chunks) - len(todo), "written": len(todo)},
    }
    manifest.write_json_atomic(manifest.machine_manifest_path(config.out, config.shard_index,
                                                              config.num_shards), machine)
    summary = {"out": config.out, "shard": machine["shard"], "chunks": machine["chunks"],
               "rows": result.total_rows, "rows_ingested_here": counts["rows_ingested"],
               "rows_rejected_here": counts["rows_rejected"], "images_written_here": counts["images_written_total"]}
    try:
        merged = manifest.merge(config.out, config.num_shards)
    except InputError as err:
        if "missing machine manifests" not in err.reason:
            raise
        summary["merged"] = False
        summary["waiting_for"] = err.reason
        return summary
    summary.update({"merged": True, "manifest": os.path.join(config.out, "manifest.json"),
                    "images_written": merged["images_written"], "rejects": merged["rejects"],
                    "inputs": merged["inputs"], "content_hash": merged["content_hash"]})
    return summary
