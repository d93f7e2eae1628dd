"""``jobs/evaluate.py``: screen an ID test set and OOD sets with one screening run, then write the table.

All sets go through one ``screen()`` call (one actor pool, the very pipeline users run), and the report's
``source`` column tells the sets apart. Output::

    OUTPUT/report/          the screening report of every set (rows, summary.json, _SUCCESS)
    OUTPUT/metrics.csv      score, ood_set, kind, auroc, fpr_at_95_tpr, aupr_in, aupr_out (+ near/far means)
    OUTPUT/metrics.md       the same as Markdown tables, OpenOOD's layout, under the classifier's ID test accuracy
    OUTPUT/evaluation.json  sets, throughput and ``id_accuracy`` (null when the ID set is not labelled Parquet)
    OUTPUT/plots/roc_<score>.png, OUTPUT/plots/hist_<score>.png
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayood.bundle import read_calibration, read_manifest
from rayood.cli import job_config
from rayood.config import ConfigError, RayoodConfig
from rayood.data.sources import InputError, plan_source
from rayood.detectors.calibrate import threshold
from rayood.evaluation.plots import histogram_png, roc_png
from rayood.evaluation.table import OODSet, evaluate_scores, to_csv, to_markdown
from rayood.report.columns import PREDICTED_CLASS, SOURCE, STATUS, STATUS_OK, score_col
from rayood.report.guard import claim_output
from rayood.screen.pipeline import screen
from rayood.storage import Location, resolve

log = logging.getLogger(__name__)


def parse_named(values: list[str]) -> dict[str, str]:
    """``NAME=URI`` arguments -> {name: uri}; names and URIs must be unique."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, uri = value.partition("=")
        if not sep or not name or not uri:
            raise ConfigError(f"--ood {value!r}: expected NAME=URI")
        if name in named:
            raise ConfigError(f"--ood name {name!r} is given twice")
        named[name] = uri
    return named


def _scores_by_source(report_rows, sources: dict[str, str], names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    table = pads.dataset(report_rows.path, filesystem=report_rows.fs, format="parquet").to_table(
        columns=[SOURCE, STATUS, *(score_col(name) for name in names)]
    )
    table = table.filter(pc.equal(table.column(STATUS), STATUS_OK))
    result = {}
    for set_name, uri in sources.items():
        rows = table.filter(pc.equal(table.column("source"), uri))
        result[set_name] = {name: rows.column(score_col(name)).to_numpy() for name in names}
    return result


def _id_accuracy(config: RayoodConfig, report_rows, id_uri: str, classifier: bool) -> float | None:
    """Share of the ID set's scored rows whose ``predicted_class`` is their label; None for a bundle without a
    classifier (unlabelled ID data) and when the ID set is not a Parquet corpus with ``corpus.label_column``
    (its labels are read from it by id, not passed through the report, so the OOD sets need no label column)."""
    label, id_column = config.corpus.label_column, config.corpus.id_column
    if not classifier:
        return None
    try:
        plan = plan_source(id_uri, config.corpus, config.s3, extra_columns=(label,))
    except InputError:
        return None
    if plan.kind != "parquet":
        return None
    truth = pads.dataset(list(plan.paths), filesystem=plan.location.fs, format="parquet").to_table(
        columns=[id_column, label]
    )
    truth = pa.table({"id": truth.column(id_column).cast(pa.string()), "truth": truth.column(label).cast(pa.string())})
    predicted = pads.dataset(report_rows.path, filesystem=report_rows.fs, format="parquet").to_table(
        columns=["id", PREDICTED_CLASS], filter=(pc.field("source") == id_uri) & (pc.field("status") == STATUS_OK)
    )
    joined = predicted.join(truth, "id")
    if joined.num_rows == 0:
        return None
    correct = pc.equal(joined.column(PREDICTED_CLASS), joined.column("truth")).cast(pa.int64())
    return pc.sum(correct).as_py() / joined.num_rows


REPORT, METRICS_CSV, METRICS_MD, EVALUATION_JSON, PLOTS = (
    "report",
    "metrics.csv",
    "metrics.md",
    "evaluation.json",
    "plots",
)


def prepare_output(location: Location, overwrite: bool) -> None:
    """Refuse a directory holding anything an evaluation does not write (``--output .`` in a project would
    overwrite its own ``metrics.csv``); a finished evaluation is replaced only with ``overwrite``. The report under
    it is left to the screening run, which resumes or refuses it by its own markers."""
    written = {REPORT, METRICS_CSV, METRICS_MD, EVALUATION_JSON, PLOTS}
    claim_output(
        location,
        what="an evaluation",
        owns=lambda name: name.split("/")[0] in written,
        finished=lambda names: EVALUATION_JSON in names,
        overwrite=overwrite,
    )
    if location.join(EVALUATION_JSON).exists():  # written last: it must not outlive a replacement that fails
        location.fs.delete_file(location.join(EVALUATION_JSON).path)


def evaluate(
    config: RayoodConfig,
    *,
    bundle: str,
    id_uri: str,
    oods: dict[str, str],
    near: set[str],
    output: str,
    overwrite: bool = False,
) -> tuple[list[dict], str]:
    """Screen, measure and plot; returns the rows of ``metrics.csv`` and the text of ``metrics.md``."""
    if not oods:
        raise ConfigError("give at least one --ood NAME=URI")
    unknown = near - set(oods)
    if unknown:
        raise ConfigError(f"--near names {sorted(unknown)} are not --ood names {sorted(oods)}")
    uris = [id_uri, *oods.values()]
    if len(set(uris)) != len(uris):
        raise ConfigError("the ID set and every OOD set need distinct URIs (rows are told apart by source)")
    manifest = read_manifest(bundle, config.s3)
    names = manifest.report_scores
    classifier = manifest.model.backbone.classifier
    target = resolve(output, config.s3)
    prepare_output(target, overwrite)
    screen_settings = config.screen.model_copy(
        update={
            "inputs": tuple(uris),
            "output": target.join(REPORT).uri,
            "bundle": bundle,
            "overwrite": overwrite,
            "passthrough_columns": (),
            "truth": None,
            "fit_if_missing": False,
            "predictions": classifier,
        }
    )
    summary, report_uri = screen(config.model_copy(update={"screen": screen_settings}))
    by_set = _scores_by_source(resolve(report_uri, config.s3).join("rows"), {"id": id_uri, **oods}, names)
    empty = [name for name, scores in by_set.items() if len(scores[names[0]]) == 0]
    if empty:
        raise ConfigError(f"no decodable rows in set(s) {empty}; see {report_uri}/summary.json")
    sets = [OODSet(name, "near" if name in near else "far") for name in oods]
    id_scores = by_set.pop("id")
    rows = evaluate_scores(id_scores, by_set, sets)
    target.join(METRICS_CSV).write_bytes(to_csv(rows).encode())
    counts = ", ".join(f"{name} {len(scores[names[0]])}" for name, scores in by_set.items())
    accuracy = _id_accuracy(config, resolve(report_uri, config.s3).join("rows"), id_uri, classifier)
    missing = "not measured (the ID set has no labels)" if classifier else "none (the bundle has no classifier)"
    accuracy_text = missing if accuracy is None else f"{100 * accuracy:.2f}%"
    header = (
        f"# OOD evaluation\n\nbundle `{manifest.bundle_id}`; ID test {len(id_scores[names[0]])} images "
        f"(classifier accuracy {accuracy_text}); OOD: {counts}\n\n"
    )
    markdown = header + to_markdown(rows, sets)
    target.join(METRICS_MD).write_bytes(markdown.encode())
    calibration = read_calibration(bundle, config.s3, manifest)
    for name in names:
        target.join(PLOTS, f"roc_{name}.png").write_bytes(
            roc_png(name, id_scores[name], {ood: scores[name] for ood, scores in by_set.items()})
        )
        groups = {"ID": id_scores[name], **{ood: scores[name] for ood, scores in by_set.items()}}
        cut = threshold(calibration[name], config.screen.decision.alpha)
        target.join(PLOTS, f"hist_{name}.png").write_bytes(histogram_png(name, groups, cut))
    target.join(EVALUATION_JSON).write_bytes(
        json.dumps(
            {
                "bundle_id": manifest.bundle_id,
                "id": id_uri,
                "ood": oods,
                "near": sorted(near),
                "id_accuracy": accuracy,
                "heldout_accuracy": manifest.heldout_accuracy,
                "rows_per_s": summary["timings"]["rows_per_s"],
                "report": report_uri,
            },
            indent=2,
        ).encode()
    )
    return rows, markdown


def evaluate_job(args: argparse.Namespace) -> None:
    config = job_config(args, args.id)
    _, markdown = evaluate(
        config,
        bundle=args.bundle,
        id_uri=args.id,
        oods=parse_named(args.ood),
        near=set(args.near or ()),
        output=args.output,
        overwrite=bool(args.overwrite),
    )
    print(markdown)
    print(f"written to {args.output}")
