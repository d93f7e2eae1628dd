"""Split a finished report into images to keep and images to reject, with Benjamini-Hochberg at level Q.

    DIR/keep.parquet    id, source, pvalue_<score>, qvalue_<score>: not rejected (treated as ID)
    DIR/reject.parquet  the same columns: rejected (called OOD); E[fraction of ID among them] <= Q
    DIR/errors.parquet  id, source, error: rows that could not be scored, so were not decided
    DIR/review.html     a page to look at before deleting anything (rayood.pages.review)
    DIR/filter.json     Q, score, counts, the BH threshold; written last, so its presence means complete
    SHARDS/kept-*.tar   optionally, the kept samples as WebDataset shards (rayood.decide.shards)

Rows that could not be scored go to a list of their own: keeping them would pass undecodable or
unreadable samples on unseen, rejecting them would count them as OOD discoveries they are not. The
report is read twice in batches (once for the distinct p-values, once to write), so its size is not
bounded by driver memory.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayood.config import CorpusSettings, S3Settings
from rayood.data.synthetic_corpus import SCHEME as SYNTHETIC
from rayood.decide.fdr import BenjaminiHochberg
from rayood.decide.shards import prepare_shard_output, write_kept_shards
from rayood.pages.review import REVIEW, FilterReview, write_review
from rayood.pages.review_settings import ReviewSettings
from rayood.pages.thumbnails import recorded_limits
from rayood.report.columns import STATUS, STATUS_OK, pvalue_col, qvalue_col, score_col
from rayood.report.guard import OutputError, claim_output
from rayood.report.reader import FinishedReport
from rayood.storage import Location, StorageError, resolve

KEEP, REJECT, ERRORS, RESULT = "keep.parquet", "reject.parquet", "errors.parquet", "filter.json"
BATCH_ROWS = 65_536


def prepare_output(location: Location, overwrite: bool) -> None:
    """Never mix two filter runs, and never delete anything that a filter did not write."""
    claim_output(
        location,
        what="a filter result",
        owns={KEEP, REJECT, ERRORS, REVIEW, RESULT}.__contains__,
        finished=lambda names: RESULT in names,
        overwrite=overwrite,
    )
    location.delete_contents()


def _apart_from_the_corpus(report: FinishedReport, s3: S3Settings | None, outputs: dict[str, Location | None]) -> None:
    """Refuse, before anything is written or deleted, an output inside a screened input or holding one: the next
    screening of that input would read the lists or shards as input, and ``--overwrite`` would delete the input
    (say, the kept shards of an earlier filter, filtered again into their own directory) before reading it back."""
    for source in sorted(report.sources()):
        if source.startswith(SYNTHETIC):  # made on the fly, stored nowhere
            continue
        screened = resolve(source, s3)
        for flag, location in outputs.items():
            if location is not None and location.overlaps(screened):
                raise OutputError(
                    f"{flag} {location.uri} and the screened input {source} overlap (one holds the other); nothing "
                    f"was written or deleted: choose a {flag} beside the corpus"
                )


def _decided(batch: pa.RecordBatch, pcol: str) -> np.ndarray:
    """Rows with status ok and a p-value: the family BH decides over."""
    ok = pc.fill_null(pc.equal(batch.column(STATUS), STATUS_OK), False)
    has_p = pc.fill_null(pc.invert(pc.is_nan(batch.column(pcol))), False)
    return np.asarray(pc.and_(ok, has_p).to_numpy(zero_copy_only=False), dtype=bool)


def _why_undecided(batch: pa.RecordBatch, pcol: str) -> pa.Array:
    return pc.fill_null(batch.column("error"), f"status ok but no {pcol}")


def filter_report(
    report: FinishedReport,
    q: float,
    output: Location,
    score: str | None = None,
    overwrite: bool = False,
    shards: Location | None = None,
    corpus: CorpusSettings = CorpusSettings(),
    s3: S3Settings | None = None,
    review: ReviewSettings | None = ReviewSettings(),
) -> dict:
    """Decide every scored row of ``report`` by BH at level ``q``; write the lists, the review page unless
    ``review`` is None (and, given ``shards``, the kept samples as WebDataset shards there) and return
    filter.json's content."""
    score = report.check_score(score)
    pcol, qcol = pvalue_col(score), qvalue_col(score)
    dataset = report.dataset()
    columns = ["id", "source", "status", "error", pcol]
    if review is not None:
        if review.by:
            review.by.check(dataset.schema, report.uri)
        columns = list(dict.fromkeys([*columns, score_col(score), *([review.by.column] if review.by else [])]))
    page = FilterReview(score, review) if review is not None else None
    _apart_from_the_corpus(report, s3, {"--output": output, "--write-shards": shards})
    prepare_output(output, overwrite)
    if shards is not None:
        prepare_shard_output(shards, overwrite)

    def batches():
        for batch in dataset.to_batches(columns=["status", pcol], batch_size=BATCH_ROWS):
            yield batch.column(pcol).to_numpy(zero_copy_only=False)[_decided(batch, pcol)]

    bh = BenjaminiHochberg.fit_batches(batches(), q)
    listed = pa.schema([("id", pa.string()), ("source", pa.string()), (pcol, pa.float64()), (qcol, pa.float64())])
    failed = pa.schema([("id", pa.string()), ("source", pa.string()), ("error", pa.string())])
    counts = {"rows": 0, "kept": 0, "rejected": 0, "errors": 0}
    try:
        output.fs.create_dir(output.path, recursive=True)
        with (
            pq.ParquetWriter(output.join(KEEP).path, listed, filesystem=output.fs) as keep,
            pq.ParquetWriter(output.join(REJECT).path, listed, filesystem=output.fs) as reject,
            pq.ParquetWriter(output.join(ERRORS).path, failed, filesystem=output.fs) as errors,
        ):
            for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
                decided = _decided(batch, pcol)
                scored = batch.filter(pa.array(decided))
                pvalues = scored.column(pcol).to_numpy(zero_copy_only=False)
                qvalues = bh.qvalues(pvalues)
                is_ood = qvalues <= q
                lists = pa.table([scored.column("id"), scored.column("source"), pvalues, qvalues], schema=listed)
                keep.write_table(lists.filter(pa.array(~is_ood)))
                reject.write_table(lists.filter(pa.array(is_ood)))
                undecided = batch.filter(pa.array(~decided))
                errors.write_table(
                    pa.table(
                        [undecided.column("id"), undecided.column("source"), _why_undecided(undecided, pcol)],
                        schema=failed,
                    )
                )
                if page is not None:
                    shown = pa.table(
                        {
                            "id": scored.column("id"),
                            "source": scored.column("source"),
                            "score": scored.column(score_col(score)),
                            "pvalue": pvalues,
                            "qvalue": qvalues,
                        }
                    )
                    page.add(pa.Table.from_batches([batch]), shown, decided, is_ood)
                counts["rows"] += batch.num_rows
                counts["rejected"] += int(is_ood.sum())
                counts["kept"] += int((~is_ood).sum())
                counts["errors"] += undecided.num_rows
    except OSError as error:
        raise StorageError(f"cannot write the filter lists under {output.uri}: {error}") from None
    result: dict = {
        "report": report.uri,
        "bundle_id": report.summary.get("bundle_id"),
        "score": score,
        "fdr": q,
        **counts,
        "threshold_pvalue": bh.threshold,
        "files": {"keep": KEEP, "reject": REJECT, "errors": ERRORS, **({"review": REVIEW} if page else {})},
    }
    if shards is not None:
        written = write_kept_shards(output.join(KEEP), pcol, qcol, shards, corpus, s3)
        result["shards"] = {"directory": shards.uri, "files": len(written), "samples": counts["kept"]}
    if page is not None:
        write_review(page, result, output, corpus, s3, recorded_limits(report.summary))
    output.join(RESULT).write_bytes(json.dumps(result, indent=2, sort_keys=True).encode())
    return result


def render(result: dict, output_uri: str) -> str:
    threshold = result["threshold_pvalue"]
    cut = f"p <= {threshold:.4g}" if threshold is not None else "nothing rejected"
    shards = result.get("shards")
    written = f"; kept samples in {shards['files']} shards under {shards['directory']}" if shards else ""
    review = (
        f"\n  review the decision: {output_uri.rstrip('/')}/{REVIEW} (open it in a browser)"
        if "review" in result["files"]
        else ""
    )
    return (
        f"rayood filter at FDR {result['fdr']} on {result['score']} ({cut}): kept {result['kept']}, "
        f"rejected {result['rejected']}, not scored {result['errors']} -> {output_uri}{written}{review}"
    )
