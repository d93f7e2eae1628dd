"""The jobs as functions of parsed arguments; ``jobs/*.py`` only parse and call these."""

from __future__ import annotations

import argparse
import logging

from rayood.bundle import MANIFEST
from rayood.cli import job_config
from rayood.config import RayoodConfig, with_overrides
from rayood.data.demo import build_demo
from rayood.pages.review_settings import GroupBy, ReviewSettings
from rayood.report.reader import FinishedReport
from rayood.report.summary import render
from rayood.report.target import PAGE
from rayood.storage import Location, resolve

log = logging.getLogger(__name__)


def _prepare_demo(config: RayoodConfig) -> None:
    if config.demo is not None:
        fit_path, corpus = build_demo(config.demo.root, config.demo.seed)
        log.info("demo data: fitting set %s, corpus %s", fit_path, corpus)


def train_job(args: argparse.Namespace) -> None:
    from rayood.train.fit import fit

    config = with_overrides(job_config(args), "train", bundle=args.output, overwrite=args.overwrite)
    _prepare_demo(config)
    print(f"model bundle written to {fit(config)}")


def screen_job(args: argparse.Namespace) -> None:
    from rayood.screen.pipeline import screen

    config = with_overrides(
        job_config(args, args.input, args.output, args.bundle),
        "screen",
        inputs=tuple(args.input) if args.input else None,
        output=args.output,
        bundle=args.bundle,
        overwrite=args.overwrite,
    )
    _prepare_demo(config)
    bundle = config.screen.bundle
    if config.screen.fit_if_missing and bundle and not resolve(bundle, config.s3).join(MANIFEST).exists():
        from rayood.train.fit import fit

        log.info("no bundle at %s yet: fitting one first", bundle)
        fit(with_overrides(config, "train", bundle=bundle))
    summary, report = screen(config)
    print(render(summary, report))
    print(f"  page: {resolve(report, config.s3).join(PAGE).uri} (open it in a browser)")
    if args.filter_fdr is not None:
        _filter(
            config, FinishedReport.open(report, config.s3), args.filter_fdr, resolve(report, config.s3).join("filter")
        )


def fdr_level(text: str) -> float:
    """argparse type of ``--fdr`` / ``--filter-fdr``: a level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"the FDR level must be in (0, 1), got {text}")
    return value


def _filter(
    config: RayoodConfig,
    report: FinishedReport,
    q: float,
    output: Location,
    score: str | None = None,
    overwrite: bool = False,
    shards: Location | None = None,
    review: ReviewSettings | None = ReviewSettings(),
) -> None:
    from rayood.decide.filter import filter_report
    from rayood.decide.filter import render as render_filter

    result = filter_report(report, q, output, score, overwrite, shards, config.corpus, config.s3, review)
    print(render_filter(result, output.uri))


def at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def filter_job(args: argparse.Namespace) -> None:
    config = job_config(args, args.report)
    shards = resolve(args.write_shards, config.s3) if args.write_shards else None
    report = FinishedReport.open(args.report, config.s3)
    review = None if args.no_review else ReviewSettings(by=args.by, gallery=args.review_size)
    _filter(config, report, args.fdr, resolve(args.output, config.s3), args.score, bool(args.overwrite), shards, review)


def group_by(text: str) -> GroupBy:
    """argparse type of ``--by``: COLUMN or COLUMN:REDUCTION."""
    try:
        return GroupBy.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _screening(config: RayoodConfig) -> tuple[dict, str]:
    """A screening run for the audit's sides that are corpora (torch and Ray load only then)."""
    from rayood.screen.pipeline import screen

    return screen(config)


def audit_job(args: argparse.Namespace) -> None:
    from rayood.audit.compare import MmdSettings
    from rayood.audit.job import AuditRequest, render_text, run_audit

    request = AuditRequest(
        bundle=args.bundle,
        reference=args.reference,
        target=args.target,
        output=args.output,
        by=args.by,
        overwrite=bool(args.overwrite),
        mmd=MmdSettings(args.permutations, args.mmd_max_rows, args.seed),
        thumbnails=args.thumbnails,
        level=args.level,
    )
    result, output = run_audit(job_config(args, args.reference, args.target), request, _screening)
    print(render_text(result, output))
