"""Samples read back from the corpus a report was screened from, by report id.

Reports hold no pixels, so the jobs that need images (audit thumbnails, kept shards) read them again from
each row's ``source``: a WebDataset row's id is ``<shard URI>#<key>`` (every member of the sample comes
back), an image-file row's id is the file's URI, and a Parquet input is read once for the wanted ids.
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
from rayood.data.webdataset import WebSample, read_samples, sample_id, split_sample_id
from rayood.storage import resolve

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

    Ids that are not found are simply not yielded; callers decide whether that matters."""
    if not ids:
        return
    location = resolve(source, s3)
    keys = [split_sample_id(i) for i in ids]
    if all(key is not None for _, key in keys):
        by_shard: dict[str, set[str]] = defaultdict(set)
        for shard, key in keys:
            by_shard[shard].add(key)
        for shard, wanted in sorted(by_shard.items()):
            shard_location = resolve(shard, s3)
            for sample in read_samples(shard_location.fs, shard_location.path, shard):
                if isinstance(sample, WebSample) and sample.key in wanted:
                    yield sample_id(shard, sample.key), dict(sample.files)
    elif all(i.startswith(location.uri) for i in ids):
        for i in sorted(ids):
            yield i, {posixpath.splitext(i)[1].lstrip(".").lower(): resolve(i, s3).read_bytes()}
    else:
        dataset = pads.dataset(location.path, filesystem=location.fs, format="parquet")
        wanted = pc.field(corpus.id_column).isin(pa.array(sorted(ids)))
        for batch in dataset.to_batches(columns=[corpus.id_column, corpus.image_column], filter=wanted):
            for i, data in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                if data is not None:
                    yield i, {image_extension(data): data}
