"""The screening job: plan inputs, stream read -> decode -> score -> write, then summarise and verify.

All checks that can fail on configuration or inputs run before Ray starts. The report is read back at
the end and its row count compared with the planned one: a mismatch fails the run (no ``_SUCCESS``).
A run killed part-way resumes when started again with the same output: the rows its earlier attempts
wrote are kept and their inputs are not read or scored again (``rayood.report.target``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray.data
import ray.exceptions
from ray.util.annotations import RayDeprecationWarning

from rayood.bundle import library_versions, read_calibration, read_manifest
from rayood.config import ConfigError, PreprocessSettings, RayoodConfig, ScreenSettings
from rayood.data.decode import DecodeLimits, formats_for
from rayood.data.reader import read_decoded
from rayood.data.sources import InputError, SourcePlan, plan_sources
from rayood.manifest import Manifest
from rayood.pages.report_page import ReportPageRows, write_report_page
from rayood.report.columns import IS_OOD, KEY_COLUMNS, score_col
from rayood.report.row_files import AttemptFilenames
from rayood.report.summary import summarize
from rayood.report.target import STATS, ReportTarget
from rayood.runtime import init_ray
from rayood.scoring.actor import ScoreActor
from rayood.scoring.pool import actor_pool, check_room_for_decoding
from rayood.screen.progress import RowProgress
from rayood.storage import Location, redacted, resolve

log = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """The report does not hold every input row exactly once."""


def _require(value: object, field: str) -> None:
    if not value:
        raise ConfigError(f"{field} is not set (in the config, or by its command-line flag)")


# Settings that shape no report row: an attempt may change them and still resume the report.
NOT_FINGERPRINTED = {
    "output",
    "bundle",
    "overwrite",
    "fit_if_missing",
    "device",
    "batch_size",
    "decode_batch_size",
    "min_actors",
    "max_actors",
    "num_gpus_per_actor",
    "cpus_per_actor",
    "torch_threads",
    "truth",
    "progress_every_s",
    "report_thumbnails",
}
# Row files hold this many batches: a kill loses at most the rows not yet in a file (and those being scored),
# while a large corpus still makes few enough files to list and read back quickly. A small corpus is still
# written in about FILES_AT_LEAST files, so that progress (told from finished files) and kills see it part-way.
BATCHES_PER_FILE = 16
FILES_AT_LEAST = 8
# Restarts of a scoring actor, bounded so that an actor that dies again and again (say, out of memory at every
# start) fails the job instead of restarting for ever (Ray Data's default is unlimited). A batch sent to a dead
# actor is retried without limit (Ray Data's default): an actor whose node was lost is "temporarily
# unavailable" until the head declares the node dead (~30 s by default), and tasks sent to it meanwhile fail at
# once; a bound of 3 retries was used up in under a second and failed the job (tests/test_multinode.py). No input
# can make a batch kill an actor: actors get decoded pixels of a fixed size, decoding runs in tasks.
ACTOR_RESTARTS = 8
# The finished report is read back this many rows at a time for its summary (never whole: see summarize).
SUMMARY_BATCH_ROWS = 65_536


def run_fingerprint(config: RayoodConfig, plans: list[SourcePlan], bundle_id: str) -> str:
    """What a report's rows depend on: the planned inputs (files and row counts), the bundle, the corpus
    layout and the row-shaping screen settings. Attempts with the same fingerprint may share a report."""
    payload = {
        "inputs": [[plan.uri, plan.kind, list(plan.paths), plan.rows] for plan in plans],
        "bundle_id": bundle_id,
        "corpus": config.corpus.model_dump(mode="json"),
        "screen": config.screen.model_dump(mode="json", exclude=NOT_FINGERPRINTED),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _output_apart_from_inputs(output: Location, plans: list[SourcePlan]) -> None:
    """A report inside an input would be read as input by the next run (its row files are Parquet), and an input
    inside a report would go with it on ``--overwrite``: refused before anything is written."""
    for plan in plans:
        if plan.location is None:  # synthetic://N reads no storage
            continue
        if output.overlaps(plan.location):
            raise ConfigError(
                f"screen.output {output.uri} and the input {plan.uri} overlap (one holds the other): write the "
                "report beside the corpus, not inside it"
            )


def rows_per_file(batch_size: int, expected_rows: int) -> int:
    """The fewest rows a row file holds: ``BATCHES_PER_FILE`` batches, fewer for a small corpus, never under one."""
    return max(batch_size, min(batch_size * BATCHES_PER_FILE, expected_rows // FILES_AT_LEAST))


def screening_limits(
    settings: ScreenSettings, preprocess: PreprocessSettings, extensions: tuple[str, ...]
) -> DecodeLimits:
    """What a screening run rejects: ``screen.max_bytes`` / ``max_pixels`` where set, else the bundle's limits
    (the ones it was fitted under; a config's ``model.preprocess`` does not apply at screen time)."""
    return DecodeLimits(
        settings.max_bytes or preprocess.max_bytes,
        settings.max_pixels or preprocess.max_pixels,
        formats_for(extensions),
    )


def screen(config: RayoodConfig) -> tuple[dict, str]:
    """Run one screening; returns the summary and the report URI."""
    settings = config.screen
    _require(settings.inputs, "screen.inputs")
    _require(settings.output, "screen.output")
    _require(settings.bundle, "screen.bundle")
    manifest = read_manifest(settings.bundle, config.s3)
    calibration = read_calibration(settings.bundle, config.s3, manifest)
    preprocess = manifest.model.preprocess
    scores = manifest.report_scores
    if settings.decision.score not in scores:
        raise ConfigError(f"screen.decision.score {settings.decision.score!r} is not one of {scores}")
    if settings.predictions and not manifest.model.backbone.classifier:
        raise ConfigError("screen.predictions: the bundle has no classifier (it was fitted on unlabelled ID data)")
    plans = plan_sources(settings.inputs, config.corpus, config.s3, settings.passthrough_columns)
    expected_rows = sum(plan.rows for plan in plans)
    output = resolve(settings.output, config.s3)
    _output_apart_from_inputs(output, plans)
    limits = screening_limits(settings, preprocess, config.corpus.file_extensions)
    target = ReportTarget(output, run_fingerprint(config, plans, manifest.bundle_id))
    written = target.prepare(settings.overwrite)
    try:
        init_ray(config.ray)
        check_room_for_decoding(settings, config.ray)
        started = time.perf_counter()
        with _inputs_stay_readable(plans):
            decoded = read_decoded(
                plans,
                image_column=config.corpus.image_column,
                id_column=config.corpus.id_column,
                size=preprocess.native_size,
                limits=limits,
                passthrough=settings.passthrough_columns,
                batch_size=settings.decode_batch_size,
                written=written.ids,
            )
            if decoded is None:
                log.info("every input row is in the report already")
            else:
                _write(_score(decoded, config, manifest.bundle_id), target, settings, expected_rows)
        summary = _summary(
            config, manifest, calibration, plans, target, written.rows, limits, time.perf_counter() - started
        )
        _check_accounting(summary, resumed=written.rows > 0, uri=target.location.uri)
        target.finish(summary)
    finally:
        target.release()  # after finish() a no-op; after a failure it frees the output for a resume
    return summary, target.location.uri


def _score(decoded: ray.data.Dataset, config: RayoodConfig, bundle_id: str) -> ray.data.Dataset:
    """The decoded rows through the scoring actors, one batch per actor task: a file's rows are decoded in one read
    task, so its block would else be scored, and written, in one piece."""
    settings = config.screen
    with warnings.catch_warnings():  # Ray 2.60 deprecates ray_remote_args (where max_restarts goes)
        # with no named replacement for it yet: the warning is not the user's to act on
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", RayDeprecationWarning)
        return decoded.repartition(target_num_rows_per_block=settings.batch_size).map_batches(
            ScoreActor,
            fn_constructor_kwargs={
                "bundle_uri": settings.bundle,
                "bundle_id": bundle_id,
                "s3": config.s3,
                "device": settings.device,
                "decision": settings.decision,
                "passthrough": settings.passthrough_columns,
                "cpu_threads": settings.actor_threads,
                "embedding": settings.embedding,
                "predictions": settings.predictions,
            },
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=-1,
            **actor_pool(settings),
        )


def _write(scored: ray.data.Dataset, target: ReportTarget, settings: ScreenSettings, expected_rows: int) -> None:
    """Run the pipeline into the report's row files, logging progress, and leave Ray Data's per-operator stats
    beside them (where the time went)."""
    with RowProgress(target.rows, expected_rows, settings.progress_every_s):
        scored.write_parquet(
            target.rows.path,
            filesystem=target.rows.fs,
            filename_provider=AttemptFilenames(target.run_id),
            min_rows_per_file=rows_per_file(settings.batch_size, expected_rows),
            # Writing is light (0.2 s CPU per 20,000 rows) and must not wait for a CPU slot: with one slot
            # per task it ran only after every row had been scored (2 CPUs: the actor holds one, decoding
            # the other), so nothing was on disk, or safe from a kill, until the end. Without a slot, a
            # writer per actor: unbounded, zero-CPU tasks each started a worker process (+1.25 GiB, 0.6x the rows/s).
            ray_remote_args={"num_cpus": 0},
            concurrency=max(1, settings.max_actors),
        )
    target.location.join(STATS).write_bytes(scored.stats().encode())


def _summary(
    config: RayoodConfig,
    manifest: Manifest,
    calibration: dict[str, np.ndarray],
    plans: list[SourcePlan],
    target: ReportTarget,
    reused_rows: int,
    limits: DecodeLimits,
    elapsed_s: float,
) -> dict:
    """``summary.json``: the report's counts and decision, streamed back from its row files, with the decode
    limits that applied and the run's provenance; and report.html from the same pass."""
    settings = config.screen
    scores = manifest.report_scores
    page = ReportPageRows(scores, settings.decision.score, settings.report_thumbnails)
    needed = [*KEY_COLUMNS, IS_OOD, *(score_col(name) for name in scores), *page.columns(settings.decision.score)]
    if settings.truth:
        needed.append(settings.truth.column)
    rows = pads.dataset(target.rows.path, filesystem=target.rows.fs, format="parquet")

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in rows.to_batches(columns=list(dict.fromkeys(needed)), batch_size=SUMMARY_BATCH_ROWS):
            page.add(batch)
            yield batch

    summary = summarize(
        batches(),
        score_names=scores,
        calibration=calibration,
        decision=settings.decision,
        expected_rows=sum(plan.rows for plan in plans),
        elapsed_s=elapsed_s,
        bundle_id=manifest.bundle_id,
        truth=settings.truth,
        skipped_files=sum(len(plan.skipped_files) for plan in plans),
        left_out=Counter(why for plan in plans for why, _ in plan.left_out),
        # planning refuses repeated Parquet ids and paths are unique: only shard keys, or two attempts'
        # rows, can repeat a key
        count_repeats=reused_rows > 0 or any(plan.kind == "webdataset" for plan in plans),
        samples=page.samples,
    )
    summary["reused_rows"] = reused_rows
    summary["output_lease"] = target.lease.mode  # how exclusive this run's hold on the output was (report/lease.py)
    summary["decode_limits"] = {
        "max_bytes": limits.max_bytes,
        "max_pixels": limits.max_pixels,
        "formats": list(limits.formats),
        "from": {k: "screen config" if getattr(settings, k) else "bundle" for k in ("max_bytes", "max_pixels")},
    }
    # what a reader a month later needs to reproduce the report (S3 keys come from the environment and
    # endpoints with credentials are refused; URLs lose their user, password and query string)
    summary["provenance"] = redacted(
        {
            "bundle_uri": settings.bundle,
            "bundle_id": manifest.bundle_id,
            "versions": library_versions(),
            "config": config.model_dump(mode="json"),
        }
    )
    write_report_page(page, summary, calibration, target.location, config.corpus, config.s3, limits)
    return summary


@contextmanager
def _inputs_stay_readable(plans: list[SourcePlan]) -> Iterator[None]:
    """Turn an I/O error that names a planned input (deleted after planning, access withdrawn, retries used
    up) into an InputError naming its URI; every other failure passes through unchanged."""
    try:
        yield
    except Exception as error:
        unreadable = _unreadable_input(error)
        text = str(unreadable) if unreadable else ""
        named = [plan.location.uri_of(p) for plan in plans for p in plan.paths if p in text]
        if not named:
            raise
        raise InputError(
            f"cannot read {max(named, key=len)} any more ({type(unreadable).__name__}: {text}); it was there when "
            "the run was planned. Rows written so far are kept: run again once it is back, or with --overwrite "
            "if the corpus changed"
        ) from error


def _unreadable_input(error: BaseException | None) -> OSError | None:
    """The I/O error behind a failed run (an object deleted after planning, access denied, retries used up),
    looked for through Ray's task-error wrappers; None when something else failed."""
    while error is not None:
        if isinstance(error, ray.exceptions.RayTaskError):  # subclasses its cause's type: look inside first
            error = error.cause
        elif isinstance(error, OSError):
            return error
        else:
            error = error.__cause__
    return None


def _check_accounting(summary: dict, *, resumed: bool, uri: str) -> None:
    """Every planned row once. A resumed report must also hold each (source, id) once: attempts meet on those
    keys, so a repeat means two attempts wrote the same input (an input repeating an id of its own is only
    counted in a fresh report, as ``duplicate_ids``)."""
    if summary["rows"] != summary["expected_rows"]:
        hint = " (resumed: ids repeated within an input cannot be resumed, pass --overwrite)" if resumed else ""
        raise AccountingError(
            f"the report at {uri} has {summary['rows']} rows, expected {summary['expected_rows']}{hint}"
        )
    if resumed and summary["duplicate_ids"]:
        raise AccountingError(f"the report at {uri} holds {summary['duplicate_ids']} (source, id) keys more than once")
