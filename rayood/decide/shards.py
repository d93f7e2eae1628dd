"""The kept images of a filter as new WebDataset shards ``DIR/kept-00000.tar, ...``.

Each kept row becomes one sample with a fresh key (its position, ``000000000`` on) holding the original
files (every member of a WebDataset sample; the image of an image file or Parquet row) and
``rayood.json``: the row's id, source, p-value and q-value. Sources are read once each, in report order of
first appearance; the kept ids of one source are held in memory while it is read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

import pyarrow.parquet as pq

from rayood.config import CorpusSettings, S3Settings
from rayood.data.originals import iter_originals
from rayood.data.webdataset import SHARD_EXTENSION, WebSample, write_shards
from rayood.report.guard import claim_output
from rayood.storage import Location, StorageError

PREFIX = "kept-"
META = "rayood.json"


def prepare_shard_output(location: Location, overwrite: bool) -> None:
    """An empty directory, or (with ``overwrite``) one holding only shards that an earlier filter wrote."""
    names = claim_output(
        location,
        what="kept shards",
        owns=lambda name: name.startswith(PREFIX) and name.endswith(SHARD_EXTENSION),
        finished=bool,
        overwrite=overwrite,
        flag="--write-shards",
    )
    if names:
        location.delete_contents()


def _kept_by_source(keep: Location, pcol: str, qcol: str) -> dict[str, dict[str, dict]]:
    by_source: dict[str, dict[str, dict]] = defaultdict(dict)
    with keep.fs.open_input_file(keep.path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(columns=["id", "source", pcol, qcol]):
            for row in batch.to_pylist():
                by_source[row["source"]][row["id"]] = row
    return by_source


def write_kept_shards(
    keep: Location,
    pcol: str,
    qcol: str,
    output: Location,
    corpus: CorpusSettings,
    s3: S3Settings | None,
    max_samples: int = 10_000,
) -> list[str]:
    """Write every row of ``keep`` (keep.parquet) with its original files; returns the shard URIs.

    A kept id that its source no longer holds fails the write: a filtered corpus must not lose samples silently."""
    kept = _kept_by_source(keep, pcol, qcol)

    def samples() -> Iterator[WebSample]:
        index = 0
        for source, rows in kept.items():
            found: set[str] = set()
            for row_id, files in iter_originals(source, set(rows), corpus, s3):
                if row_id in found:  # an id repeated in the source: the report holds it once
                    continue
                found.add(row_id)
                yield WebSample(f"{index:09d}", {**files, META: json.dumps(rows[row_id], sort_keys=True).encode()})
                index += 1
            if len(found) != len(rows):
                raise StorageError(
                    f"{len(rows) - len(found)} kept rows were not found in their source {source} any more"
                )

    return write_shards(samples(), output, prefix=PREFIX, max_samples=max_samples)
