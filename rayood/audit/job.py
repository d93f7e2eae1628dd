"""The audit job: screen both corpora (or reuse their finished reports), compare, write audit.json and audit.html.

    OUTPUT/reference/, OUTPUT/target/   reports screened by this job (with embeddings), when not given as reports
    OUTPUT/audit.json                   every number (see rayood.audit.compare)
    OUTPUT/audit.html                   the same, with histograms and thumbnails, viewable offline

Everything that can be wrong with the arguments (bundle, inputs, columns, output) is checked before
either corpus is screened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from rayood.audit.compare import MmdSettings, audit, groups_of, values_of
from rayood.audit.report_html import histogram_uri, render_html
from rayood.audit.verdict import drift_verdict, verdict_line
from rayood.bundle import read_calibration, read_manifest
from rayood.config import RayoodConfig, S3Settings, with_overrides
from rayood.data.decode import DecodeLimits
from rayood.data.sources import InputError, plan_sources
from rayood.pages.thumbnails import attach_thumbnails, most_ood
from rayood.report.columns import score_col
from rayood.report.guard import claim_output
from rayood.report.reader import FinishedReport, is_finished_report
from rayood.storage import Location, resolve

log = logging.getLogger(__name__)

AUDIT_JSON, AUDIT_HTML = "audit.json", "audit.html"
SIDES = ("reference", "target")
Screen = Callable[[RayoodConfig], tuple[dict, str]]  # a screening run: its summary and report URI


@dataclass(frozen=True)
class AuditRequest:
    bundle: str
    reference: str
    target: str
    output: str
    by: str | None = None
    overwrite: bool = False
    mmd: MmdSettings = MmdSettings()
    thumbnails: int = 24
    level: float = 0.05  # family-wise error level of the drift verdict


def prepare_output(location: Location, overwrite: bool) -> None:
    """The audit's two files are replaced; its sides' screening reports (``reference/``, ``target/``) are left
    to the screening runs, which resume or refuse them by their own markers."""
    claim_output(
        location,
        what="an audit",
        owns=lambda name: name.split("/")[0] in {AUDIT_JSON, AUDIT_HTML, *SIDES},
        finished=lambda names: AUDIT_JSON in names,
        overwrite=overwrite,
    )
    for name in (AUDIT_JSON, AUDIT_HTML):
        if location.join(name).exists():
            location.fs.delete_file(location.join(name).path)


def _check_report(report: FinishedReport, bundle_id: str, flag: str, by: str | None) -> FinishedReport:
    if report.summary.get("bundle_id") != bundle_id:
        raise InputError(
            f"{flag} {report.uri} was screened with bundle {report.summary.get('bundle_id')}, not {bundle_id} "
            "(--bundle): its scores are not comparable"
        )
    if by and by not in report.dataset().schema.names:
        raise InputError(
            f"--by {by!r}: the report {report.uri} has no such column (screen it with it in screen.passthrough_columns)"
        )
    return report


def _side_config(config: RayoodConfig, request: AuditRequest, side: str, uri: str, output: Location) -> RayoodConfig:
    passthrough = config.screen.passthrough_columns
    if side == "target" and request.by and request.by not in passthrough:
        passthrough = (*passthrough, request.by)
    return with_overrides(
        config,
        "screen",
        inputs=(uri,),
        output=output.join(side).uri,
        bundle=request.bundle,
        embedding=True,
        overwrite=request.overwrite,
        passthrough_columns=passthrough,
    )


def _earlier_screening(
    location: Location, uri: str, bundle_id: str, by: str | None, s3: S3Settings
) -> FinishedReport | None:
    """This job's own finished report of the same input and bundle (with the --by column), from an attempt
    that died later on. Any other finished report there is left to screen(), which refuses it without --overwrite."""
    if not is_finished_report(location):
        return None
    report = FinishedReport.open(location.uri, s3)
    same = report.summary.get("bundle_id") == bundle_id and set(report.summary.get("per_source", {})) <= {uri}
    return report if same and (not by or by in report.dataset().schema.names) else None


def run_audit(config: RayoodConfig, request: AuditRequest, screen: Screen) -> tuple[dict, str]:
    """Run the audit; returns audit.json's content and the output URI. ``screen`` runs a screening (the job passes
    ``rayood.screen.pipeline.screen``: the readers of reports sit below the screening they may ask for)."""
    output = resolve(request.output, config.s3)
    manifest = read_manifest(request.bundle, config.s3)
    calibration = read_calibration(request.bundle, config.s3, manifest)
    prepare_output(output, request.overwrite)
    reports: dict[str, FinishedReport] = {}
    to_screen: dict[str, RayoodConfig] = {}
    for side, uri in zip(SIDES, (request.reference, request.target)):
        by = request.by if side == "target" else None
        if is_finished_report(resolve(uri, config.s3)):
            reports[side] = _check_report(
                FinishedReport.open(uri, config.s3, f"--{side}"), manifest.bundle_id, f"--{side}", by
            )
            continue
        earlier = (
            None if request.overwrite else _earlier_screening(output.join(side), uri, manifest.bundle_id, by, config.s3)
        )
        if earlier is not None:
            log.info("reusing this audit's earlier screening of %s at %s", uri, earlier.uri)
            reports[side] = earlier
            continue
        side_config = _side_config(config, request, side, uri, output)
        plan_sources(side_config.screen.inputs, config.corpus, config.s3, side_config.screen.passthrough_columns)
        to_screen[side] = side_config
    for side, side_config in to_screen.items():
        log.info("screening the %s corpus %s", side, side_config.screen.inputs[0])
        _, uri = screen(side_config)
        reports[side] = FinishedReport.open(uri, config.s3)

    result, reference_rows, target_rows = audit(
        reports["reference"],
        reports["target"],
        by=request.by,
        mmd=request.mmd,
        calibration_rows={name: int(values.size) for name, values in calibration.items()},
    )
    result["verdict"] = drift_verdict(result, request.level)
    preprocess = manifest.model.preprocess
    thumbnails = attach_thumbnails(
        most_ood(target_rows, result["decision_score"], request.thumbnails),
        config.corpus,
        config.s3,
        size=preprocess.native_size,
        limits=DecodeLimits(preprocess.max_bytes, preprocess.max_pixels),
    )
    result["most_ood"] = [{k: v for k, v in row.items() if k != "thumbnail"} for row in thumbnails]
    labels = groups_of(target_rows, request.by) if request.by else None
    histograms = {}
    for name in result["scores"]:
        column = score_col(name)
        groups = {group: values_of(target_rows, column, labels == group) for group in result.get("groups", {})}
        try:
            histograms[name] = histogram_uri(
                name, values_of(reference_rows, column), values_of(target_rows, column), groups
            )
        except Exception as error:  # a plot must never cost the finished screenings and the tests
            log.warning("no histogram of %s: %s: %s", column, type(error).__name__, error)
    output.join(AUDIT_JSON).write_bytes(json.dumps(result, indent=2, sort_keys=True).encode())
    output.join(AUDIT_HTML).write_bytes(render_html(result, histograms, thumbnails).encode())
    return result, output.uri


def render_text(result: dict, output_uri: str) -> str:
    """A one-screen view: per score KS and flag rates, MMD, and the groups that differ."""
    lines = [
        f"rayood audit: {result['target']['report']} against {result['reference']['report']} -> {output_uri}",
        f"  {verdict_line(result['verdict'])}",
        "  per test (uncorrected p-values):",
    ]
    lines.append(f"  {'score':<18}{'KS D':>8}{'KS p':>10}{'flagged':>9}{'expected':>9}{'flag p':>10}")
    for name, scores in result["scores"].items():
        ks, flagged = scores["ks"], scores["flagged"]
        if "pvalue" not in ks or "pvalue" not in flagged:
            lines.append(f"  {name:<18}(no scored rows)")
            continue
        lines.append(
            f"  {name:<18}{ks['statistic']:>8.3f}{ks['pvalue']:>10.2g}{flagged['fraction']:>9.3f}"
            f"{flagged['expected']:>9.3f}{flagged['pvalue']:>10.2g}"
        )
    mmd = result["mmd"]
    lines.append(
        f"  {mmd['skipped']}"
        if "skipped" in mmd
        else f"  MMD^2 {mmd['statistic']:.4g}, permutation p {mmd['pvalue']:.3g}"
    )
    for group, values in result.get("groups", {}).items():
        ks = values["scores"][result["decision_score"]]["ks"]
        mmd = values["mmd"]
        lines.append(
            f"  {result['by']}={group}: {values['rows']} rows, KS p {ks.get('pvalue', float('nan')):.2g}"
            + (f", MMD p {mmd['pvalue']:.3g}" if "pvalue" in mmd else "")
        )
    return "\n".join(lines)
