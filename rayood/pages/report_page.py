"""report.html: a screening run's summary as a page, beside summary.json.

Collected while the summary streams the report's rows back (the same pass, so the page costs the same for a
thousand rows and ten million): per score, a uniform sample of the screened rows' values to draw against the
bundle's ID calibration scores, and the most out-of-distribution rows by the decision score, whose thumbnails are
then read back from the originals.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeLimits
from rayood.evaluation.plots import histogram_png
from rayood.pages.html import Markup, document, gallery, image, number, png_uri, table, text
from rayood.pages.selection import Extremes
from rayood.pages.thumbnails import THUMBNAIL_PX, attach_thumbnails
from rayood.report.columns import STATUS, STATUS_OK, pvalue_col, score_col
from rayood.report.summary import score_samples
from rayood.report.target import PAGE
from rayood.storage import Location


class ReportPageRows:
    """What report.html needs from the report's rows, batch by batch: the most OOD rows here, and each score's
    sample of screened values, which the summary's own pass fills."""

    def __init__(self, score_names: list[str], decision_score: str, thumbnails: int) -> None:
        self.decision_score = decision_score
        self.samples = score_samples(score_names)  # filled by the summary's pass (summarize(samples=...))
        self.most_ood = Extremes(thumbnails, highest=True)

    @staticmethod
    def columns(decision_score: str) -> list[str]:
        """The report columns it reads besides the scores."""
        return ["id", "source", STATUS, pvalue_col(decision_score)]

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        batch = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        scored = batch.filter(pc.fill_null(pc.equal(batch.column(STATUS), STATUS_OK), False))
        shown = pa.table(
            {
                "id": scored.column("id"),
                "source": scored.column("source"),
                "score": scored.column(score_col(self.decision_score)),
                "pvalue": scored.column(pvalue_col(self.decision_score)),
            }
        )
        self.most_ood.add(shown.column("score").to_numpy(zero_copy_only=False).astype(np.float64), shown)


def _figures(summary: dict, report_uri: str) -> Markup:
    decision, timings = summary["decision"], summary["timings"]
    cut = (
        f"score_{text(decision['score'])} &gt; {text(number(decision['threshold']))}"
        if decision["threshold"] is not None
        else "no threshold"
    )
    return Markup(
        f'<p class="verdict">{text(decision["flagged"])} of {text(summary["ok"])} scored rows flagged '
        f"out-of-distribution ({decision['flagged_fraction']:.1%})</p>"
        f"<p>Report {text(report_uri)}; bundle {text(summary['bundle_id'])}. Rows {text(summary['rows'])} (expected "
        f"{text(summary['expected_rows'])}): scored {text(summary['ok'])}, errors {text(summary['errors'])}; "
        f"{text(timings['rows_per_s'])} rows/s over {text(timings['elapsed_s'])} s.<br>is_ood: p &le; "
        f"{text(decision['alpha'])} against the bundle's calibration set ({cut}): about {text(decision['alpha'])} of "
        f"in-distribution images are flagged too.</p>"
    )


def _score_table(summary: dict) -> Markup:
    rows = []
    for name, stats in summary["scores"].items():
        quantiles = stats.get("quantiles", {})
        rows.append(
            [
                name,
                stats["count"],
                number(stats.get("mean")),
                *(number(quantiles.get(q)) for q in ("p05", "p50", "p95")),
                number(stats.get("threshold")),
            ]
        )
    return table(["score", "scored", "mean", "5%", "median", "95%", "threshold"], rows)


def _evaluation(summary: dict) -> list[object]:
    evaluation = summary.get("evaluation", {})
    if "scores" not in evaluation:
        return []
    rows = [[name, number(m["auroc"]), number(m["fpr_at_95_tpr"])] for name, m in evaluation["scores"].items()]
    return [
        Markup(
            f"<h2>Evaluation against {text(evaluation['truth_column'])}</h2><p>{text(evaluation['id_rows'])} "
            f"ID and {text(evaluation['ood_rows'])} OOD scored rows.</p>"
        ),
        table(["score", "AUROC", "FPR at 95% TPR"], rows),
    ]


def render_report_page(summary: dict, report_uri: str, histograms: dict[str, str], most_ood: list[dict]) -> str:
    """The page for ``summary`` (summary.json's content), with histogram and thumbnail data URIs."""
    score = summary["decision"]["score"]
    parts: list[object] = [
        Markup("<h1>rayood screening report</h1>"),
        _figures(summary, report_uri),
        *(Markup(f'<p class="note">warning: {text(w)}</p>') for w in summary.get("warnings", [])),
        Markup("<h2>Scores</h2>"),
        _score_table(summary),
        Markup(
            "<h2>Score distributions: the bundle's ID calibration scores against the screened rows</h2>"
            '<div class="grid hist">'
        ),
        *(image(uri, f"histogram of score_{name}") for name, uri in histograms.items()),
        Markup("</div>"),
        *_evaluation(summary),
        Markup("<h2>Rows per source</h2>"),
        table(["source", "rows"], summary["per_source"].items()),
        Markup("<h2>Errors</h2>"),
        table(["reason", "rows"], summary["error_kinds"].items()) if summary["error_kinds"] else Markup("<p>None.</p>"),
        Markup(
            f'<h2>Most out-of-distribution images</h2><p class="note">Highest score_{text(score)} first, as the '
            "model saw them.</p>"
        ),
        gallery(
            most_ood,
            lambda row: [row["id"], f"score {number(row['score'])}, p {number(row['pvalue'], 3)}"],
            "No scored images.",
        ),
    ]
    return document("rayood screening report", parts)


def write_report_page(
    rows: ReportPageRows,
    summary: dict,
    calibration: dict[str, np.ndarray],
    output: Location,
    corpus: CorpusSettings,
    s3: S3Settings | None,
    limits: DecodeLimits,
) -> None:
    """report.html under ``output``: thumbnails read from the originals of the shown rows only."""
    histograms = {}
    for name, sample in rows.samples.items():
        curves = {
            f"ID calibration ({len(calibration[name])})": calibration[name],
            f"screened ({sample.count})": sample.values,
        }
        histograms[name] = png_uri(histogram_png(name, curves, summary["scores"][name].get("threshold")))
    most_ood = attach_thumbnails(rows.most_ood.rows, corpus, s3, THUMBNAIL_PX, limits)
    output.join(PAGE).write_bytes(render_report_page(summary, output.uri, histograms, most_ood).encode())
