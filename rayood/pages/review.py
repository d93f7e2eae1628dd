"""review.html: what a filter run keeps and what it rejects, to look at before anything is deleted.

Collected while the filter writes its lists (one pass over the report in batches, so the page costs the same for a
thousand rows and ten million): the images on both sides of the threshold, the most out-of-distribution ones, a
random sample of the kept, the score's histogram on each side, rejections per group of a column the user names,
and the reasons rows could not be scored. Thumbnails are read back from the originals for the shown rows only.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeLimits
from rayood.evaluation.plots import histogram_png
from rayood.pages.html import Markup, document, gallery, image, number, png_uri, table, text
from rayood.pages.review_settings import ReviewSettings
from rayood.pages.selection import Extremes, RowSample
from rayood.pages.thumbnails import THUMBNAIL_PX, attach_thumbnails
from rayood.report.sampling import Reservoir
from rayood.report.summary import error_kind
from rayood.storage import Location

REVIEW = "review.html"
HISTOGRAM_SAMPLE = 100_000
MAX_GROUPS = 100_000  # distinct groups counted one by one; any further group is pooled
OTHER_GROUPS = "(other groups)"
GROUPS_SHOWN = 50


class GroupCounts:
    """Rows, rejections and unscored rows per group, for at most MAX_GROUPS distinct groups."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, labels: pa.Array | pa.ChunkedArray, rejected: np.ndarray, unscored: np.ndarray) -> None:
        rows = pa.table({"group": labels, "rejected": rejected.astype(np.int64), "unscored": unscored.astype(np.int64)})
        grouped = rows.group_by("group").aggregate([("rejected", "count"), ("rejected", "sum"), ("unscored", "sum")])
        for group, count, rejections, errors in zip(
            *(grouped.column(c).to_pylist() for c in ("group", "rejected_count", "rejected_sum", "unscored_sum"))
        ):
            if group not in self.counts and len(self.counts) >= MAX_GROUPS:
                group = OTHER_GROUPS
            totals = self.counts.setdefault(group, [0, 0, 0])
            totals[0] += count
            totals[1] += rejections
            totals[2] += errors

    def most_rejected(self) -> list[tuple[str, int, int, int]]:
        """(group, rows, rejected, not scored), the highest share of rejected scored rows first."""

        def order(item: tuple[str, list[int]]) -> tuple[float, int]:
            rows, rejected, errors = item[1]
            return -rejected / max(rows - errors, 1), -rejected

        return [(group, *totals) for group, totals in sorted(self.counts.items(), key=order)]


class FilterReview:
    """What review.html shows, collected batch by batch from the rows the filter decides."""

    def __init__(self, score: str, settings: ReviewSettings) -> None:
        self.score, self.settings = score, settings
        size = settings.gallery
        self.most_ood = Extremes(size, highest=True)  # among the rejected
        self.just_rejected = Extremes(size, highest=False)
        self.just_kept = Extremes(size, highest=True)
        self.kept_sample = RowSample(size, settings.seed)
        self.kept_scores = Reservoir(HISTOGRAM_SAMPLE, settings.seed)
        self.rejected_scores = Reservoir(HISTOGRAM_SAMPLE, settings.seed + 1)
        self.lowest_rejected = np.inf
        self.errors: Counter[str] = Counter()
        self.groups = GroupCounts() if settings.by else None

    def add(self, batch: pa.Table, scored: pa.Table, decided: np.ndarray, is_ood: np.ndarray) -> None:
        """``batch``: one batch of report rows (with ``error`` and the --by column); ``scored``: its decided rows as
        id, source, score, pvalue, qvalue; ``decided``: which rows of ``batch`` those are; ``is_ood``: rejected
        (per row of ``scored``)."""
        scores = scored.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        rejected, kept = scored.filter(pa.array(is_ood)), scored.filter(pa.array(~is_ood))
        self.most_ood.add(scores[is_ood], rejected)
        self.just_rejected.add(scores[is_ood], rejected)
        self.just_kept.add(scores[~is_ood], kept)
        self.kept_sample.add(kept)
        self.kept_scores.add(scores[~is_ood])
        self.rejected_scores.add(scores[is_ood])
        if is_ood.any():
            self.lowest_rejected = min(self.lowest_rejected, float(np.nanmin(scores[is_ood])))
        undecided = batch.filter(pa.array(~decided)).column("error").to_pylist()
        self.errors.update(error_kind(message) if message else "status ok but no p-value" for message in undecided)
        if self.groups is not None:
            rejected_rows = np.zeros(batch.num_rows, dtype=bool)
            rejected_rows[np.flatnonzero(decided)] = is_ood
            self.groups.add(self.settings.by.labels(batch), rejected_rows, ~decided)

    def galleries(self) -> dict[str, list[dict]]:
        """The four galleries, none repeating an image another already shows."""
        shown: set[tuple[str, str]] = set()

        def fresh(rows: list[dict]) -> list[dict]:
            new = [row for row in rows if (row["source"], row["id"]) not in shown]
            shown.update((row["source"], row["id"]) for row in new)
            return new

        return {
            "most_ood": fresh(self.most_ood.rows),
            "just_rejected": fresh(self.just_rejected.rows),
            "just_kept": fresh(self.just_kept.rows),
            "random_kept": fresh(sorted(self.kept_sample.rows, key=lambda row: -row["score"])),
        }


def _caption(row: dict) -> list[object]:
    return [row["id"], f"score {number(row['score'])}", f"p {number(row['pvalue'], 3)}, q {number(row['qvalue'], 3)}"]


GALLERY_TITLES = {
    "most_ood": ("Most out-of-distribution rejected images", "Highest score first.", "Nothing was rejected."),
    "just_rejected": (
        "Rejected, just past the threshold",
        "Lowest score first: the rejected images most like the kept.",
        "No rejected images besides those above.",
    ),
    "just_kept": (
        "Kept, just before the threshold",
        "Highest score first: the kept images most like the rejected.",
        "Nothing was kept.",
    ),
    "random_kept": (
        "A random sample of the kept images",
        "Highest score first.",
        "No kept images besides those above.",
    ),
}


def _decision(result: dict, lowest_rejected: float) -> Markup:
    score, q, threshold = result["score"], result["fdr"], result["threshold_pvalue"]
    cut = (
        f"rejected every image with p &le; {text(number(threshold))} (score_{text(score)} &ge; "
        f"{text(number(lowest_rejected))})"
        if threshold is not None
        else "rejected nothing"
    )
    return Markup(
        f'<p class="verdict">Kept {text(result["kept"])}, rejected {text(result["rejected"])}, not scored '
        f"{text(result['errors'])} of {text(result['rows'])} rows</p>"
        f"<p>Benjamini-Hochberg on the conformal p-values of score_{text(score)} at FDR {text(q)}: {cut}. "
        f"Report {text(result['report'])}, bundle {text(result['bundle_id'])}.</p>"
        f'<p class="note">What {text(q)} means: among the rejected images, the expected fraction of in-distribution '
        f"ones is at most {text(q)}, provided in-distribution images are exchangeable with the bundle's calibration "
        f"images; it bounds nothing about out-of-distribution images that were kept. Rows not scored were not "
        f"decided: they are listed in errors.parquet.</p>"
    )


def _groups(review: FilterReview) -> list[object]:
    if review.groups is None:
        return []
    ranked = review.groups.most_rejected()
    by = str(review.settings.by)
    rows = [
        [group, count, rejected, f"{rejected / max(count - errors, 1):.1%}", errors]
        for group, count, rejected, errors in ranked[:GROUPS_SHOWN]
    ]
    more = f" The {len(ranked) - GROUPS_SHOWN} other groups are not shown." if len(ranked) > GROUPS_SHOWN else ""
    return [
        Markup(
            f"<h2>Rejections per {text(by)}</h2><p>The highest share of rejected scored rows first.{text(more)}</p>"
        ),
        table([by, "rows", "rejected", "rejected of scored", "not scored"], rows),
    ]


def render_review(review: FilterReview, result: dict, galleries: dict[str, list[dict]]) -> str:
    """The page for a filter ``result`` (filter.json's content), with ``galleries`` carrying thumbnails."""
    score = review.score
    threshold = review.lowest_rejected if np.isfinite(review.lowest_rejected) else None
    histogram = histogram_png(
        score,
        {
            f"kept ({review.kept_scores.count})": review.kept_scores.values,
            f"rejected ({review.rejected_scores.count})": review.rejected_scores.values,
        },
        threshold,
    )
    parts: list[object] = [
        Markup("<h1>rayood filter review</h1>"),
        _decision(result, review.lowest_rejected),
        Markup(f'<h2>score_{text(score)}: kept and rejected</h2><div class="hist">'),
        image(png_uri(histogram), f"histogram of score_{score}, kept and rejected"),
        Markup("</div>"),
    ]
    for key, (title, note, empty) in GALLERY_TITLES.items():
        rows = galleries[key]
        parts += [
            Markup(f"<h2>{text(title)}</h2>"),
            Markup(f'<p class="note">{text(note)}</p>') if rows else "",
            gallery(rows, _caption, empty),
        ]
    parts += _groups(review)
    parts += [
        Markup("<h2>Rows not scored</h2>"),
        table(["reason", "rows"], review.errors.most_common()) if review.errors else Markup("<p>None.</p>"),
    ]
    return document("rayood filter review", parts)


def write_review(
    review: FilterReview,
    result: dict,
    output: Location,
    corpus: CorpusSettings,
    s3: S3Settings | None,
    limits: DecodeLimits,
) -> None:
    """review.html under ``output``, thumbnails read from the originals of the shown rows only."""
    galleries = review.galleries()
    shown = attach_thumbnails([row for rows in galleries.values() for row in rows], corpus, s3, THUMBNAIL_PX, limits)
    with_pictures = iter(shown)
    galleries = {key: [next(with_pictures) for _ in rows] for key, rows in galleries.items()}
    output.join(REVIEW).write_bytes(render_review(review, result, galleries).encode())
