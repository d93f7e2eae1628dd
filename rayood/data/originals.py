"""Samples read back from the corpus a report was screened from, by report id.

Reports hold no pixels, so the jobs that need images (audit thumbnails, kept shards) read them again from
each row's ``source``, planned again as screening planned it: a WebDataset row's id is ``<shard URI>#<key>``
(every member of the sample comes back), an image-file row's id is the file's URI, and a Parquet input is read
once for the wanted ids.
"""

from __future__ import annotations

import io
import posixpath
from collections import defaultdict
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image, UnidentifiedImageError

from rayood.config import CorpusSettings, S3Settings
from rayood.data.sources import InputError, plan_source
from rayood.data.webdataset import WebSample, read_samples, sample_id, split_sample_id

# A Parquet corpus has no index: finding a few ids scans every row, a few thousand at a time (pyarrow's default
# read-ahead held 42 MiB more on a 200,000-row corpus, for no gain: the wanted rows are few).
SCAN_ROWS = 8192
FORMAT_EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes (``bin`` when PIL does not know them)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            name = (image.format or "bin").lower()
    except (UnidentifiedImageError, OSError):
        return "bin"
    return FORMAT_EXTENSIONS.get(name, name)


def iter_originals(
    source: str, ids: set[str], corpus: CorpusSettings, s3: S3Settings | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(id, files by extension)`` of the rows of ``source`` whose id is in ``ids``, reading the input once.

    The source is planned again exactly as screening planned it, and an id is looked up only among what that
    plan holds: a file it listed, a sample of a shard it listed, a row of its Parquet files. An id is never
    turned into a path (a Parquet id such as ``<source>/../secret`` or ``/x/y.tar#k`` must not read that file).
    Ids that are not found are simply not yielded; callers decide whether that matters."""
    if not ids:
        return
    plan = plan_source(source, corpus, s3)
    if plan.location is None:
        raise InputError(f"{source} is a synthetic corpus: it has no original files to copy")
    fs = plan.location.fs
    paths_by_uri = {plan.location.uri_of(path): path for path in plan.paths}
    if plan.kind == "webdataset":
        by_shard: dict[str, set[str]] = defaultdict(set)
        for shard, key in map(split_sample_id, ids):
            if key is not None and shard in paths_by_uri:
                by_shard[shard].add(key)
        for shard, wanted in sorted(by_shard.items()):
            for sample in read_samples(fs, paths_by_uri[shard], shard):
                if isinstance(sample, WebSample) and sample.key in wanted:
                    yield sample_id(shard, sample.key), dict(sample.files)
    elif plan.kind == "images":
        for uri in sorted(ids & paths_by_uri.keys()):
            with fs.open_input_stream(paths_by_uri[uri]) as handle:
                data = handle.read()
            yield uri, {posixpath.splitext(uri)[1].lstrip(".").lower(): data}
    else:
        dataset = pads.dataset(list(plan.paths), filesystem=fs, format="parquet")
        wanted = pc.field(corpus.id_column).isin(pa.array(sorted(ids)))
        scan = dataset.to_batches(
            columns=[corpus.id_column, corpus.image_column],
            filter=wanted,
            batch_size=SCAN_ROWS,
            batch_readahead=1,
            fragment_readahead=1,
        )
        for batch in scan:
            for i, data in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                if data is not None:
                    yield i, {image_extension(data): data}
