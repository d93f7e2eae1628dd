"""The screening job: plan inputs, stream read -> decode -> score -> write, then summarise and verify.

All checks that can fail on configuration or inputs run before Ray starts. The report is read back at
the end and its row count compared with the planned one: a mismatch fails the run (no ``_SUCCESS``).
"""

from __future__ import annotations

import logging
import time

import pyarrow.dataset as pads
import ray.data

from rayood.bundle import read_calibration, read_manifest
from rayood.config import ConfigError, RayoodConfig
from rayood.data.decode import DecodeLimits
from rayood.data.reader import read_decoded
from rayood.data.sources import plan_sources
from rayood.report.summary import summarize
from rayood.runtime import init_ray
from rayood.screen.actor import ScoreActor
from rayood.screen.output import ReportTarget
from rayood.storage import resolve

log = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """The report does not hold every input row exactly once."""


def _require(value: object, field: str) -> None:
    if not value:
        raise ConfigError(f"{field} is not set (in the config, or by its command-line flag)")


def screen(config: RayoodConfig) -> tuple[dict, str]:
    """Run one screening; returns the summary and the report URI."""
    settings = config.screen
    _require(settings.inputs, "screen.inputs")
    _require(settings.output, "screen.output")
    _require(settings.bundle, "screen.bundle")
    manifest = read_manifest(settings.bundle, config.s3)
    calibration = read_calibration(settings.bundle, config.s3, manifest)
    preprocess = manifest["model"]["preprocess"]
    if settings.decision.score not in manifest["scores"]:
        raise ConfigError(f"screen.decision.score {settings.decision.score!r} is not one of {manifest['scores']}")
    plans = plan_sources(settings.inputs, config.corpus, config.s3, settings.passthrough_columns)
    expected_rows = sum(plan.rows for plan in plans)
    target = ReportTarget(resolve(settings.output, config.s3))
    target.prepare(settings.overwrite)

    init_ray(config.ray)
    started = time.perf_counter()
    decoded = read_decoded(
        plans,
        image_column=config.corpus.image_column,
        id_column=config.corpus.id_column,
        size=preprocess["native_size"],
        limits=DecodeLimits(max_bytes=preprocess["max_bytes"], max_pixels=preprocess["max_pixels"]),
        passthrough=settings.passthrough_columns,
        batch_size=settings.decode_batch_size,
    )
    scored = decoded.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "bundle_uri": settings.bundle,
            "s3": config.s3,
            "device": settings.device,
            "decision": settings.decision,
            "passthrough": settings.passthrough_columns,
            "cpu_threads": max(1, int(settings.cpus_per_actor)),
        },
        compute=ray.data.ActorPoolStrategy(min_size=settings.min_actors, max_size=settings.max_actors),
        num_gpus=settings.num_gpus_per_actor or None,
        num_cpus=settings.cpus_per_actor,
        batch_size=settings.batch_size,
        batch_format="pyarrow",
    )
    scored.write_parquet(target.rows.path, filesystem=target.rows.fs)
    elapsed = time.perf_counter() - started

    needed = ["id", "source", "status", "error", "is_ood", *(f"score_{name}" for name in manifest["scores"])]
    if settings.truth:
        needed.append(settings.truth.column)
    report = pads.dataset(target.rows.path, filesystem=target.rows.fs, format="parquet").to_table(columns=needed)
    summary = summarize(
        report,
        score_names=list(manifest["scores"]),
        calibration=calibration,
        decision=settings.decision,
        expected_rows=expected_rows,
        elapsed_s=elapsed,
        bundle_id=manifest["bundle_id"],
        truth=settings.truth,
        skipped_files=sum(len(plan.skipped_files) for plan in plans),
    )
    if summary["rows"] != expected_rows:
        raise AccountingError(f"the report at {target.location.uri} has {summary['rows']} rows, expected {expected_rows}")
    target.finish(summary)
    return summary, target.location.uri
