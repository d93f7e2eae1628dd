"""Thumbnails of the most OOD target images, read again from the corpus by id.

Reports hold no pixels (so they stay small), so the audit reads the few images it shows back from the
inputs: an image-file input's ids are the files' URIs; a Parquet input is read for just those ids. An
input that moved or cannot be read costs only its thumbnails, never the audit.
"""

from __future__ import annotations

import base64
import io
import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeError, DecodeLimits, decode_image
from rayood.storage import StorageError, resolve

log = logging.getLogger(__name__)


def most_ood(table: pa.Table, score: str, count: int) -> list[dict]:
    """The ``count`` rows with the highest ``score_<score>``: id, source, score and p-value."""
    values = table.column(f"score_{score}").to_numpy(zero_copy_only=False).astype(np.float64)
    order = [i for i in np.argsort(-values, kind="stable") if not np.isnan(values[i])][:count]
    return [
        {
            "id": table.column("id")[i].as_py(),
            "source": table.column("source")[i].as_py(),
            "score": float(values[i]),
            "pvalue": table.column(f"pvalue_{score}")[i].as_py(),
        }
        for i in order
    ]


def _read_images(source: str, ids: list[str], corpus: CorpusSettings, s3: S3Settings | None) -> dict[str, bytes]:
    location = resolve(source, s3)
    if all(i.startswith(location.uri) for i in ids):  # image files: the id is the file's URI
        return {i: resolve(i, s3).read_bytes() for i in ids}
    dataset = pads.dataset(location.path, filesystem=location.fs, format="parquet")
    found = dataset.to_table(
        columns=[corpus.id_column, corpus.image_column], filter=pc.field(corpus.id_column).isin(pa.array(ids))
    )
    return dict(zip(found.column(corpus.id_column).to_pylist(), found.column(corpus.image_column).to_pylist()))


def data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attach_thumbnails(
    rows: list[dict], corpus: CorpusSettings, s3: S3Settings | None, size: int, limits: DecodeLimits = DecodeLimits()
) -> list[dict]:
    """Each row with ``thumbnail``: a PNG data URI of the image as the model saw it (``size`` pixels), or None."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row["id"])
    images: dict[str, bytes] = {}
    for source, ids in by_source.items():
        try:
            images.update(_read_images(source, ids, corpus, s3))
        except (StorageError, OSError, pa.ArrowException) as error:
            log.warning("no thumbnails from %s: %s", source, error)
    result = []
    for row in rows:
        try:
            thumbnail = data_uri(decode_image(images[row["id"]], size, limits)) if row["id"] in images else None
        except DecodeError as error:  # the file changed since it was screened
            log.warning("no thumbnail for %s: %s", row["id"], error)
            thumbnail = None
        result.append({**row, "thumbnail": thumbnail})
    return result
