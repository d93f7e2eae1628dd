"""Thumbnails of the most OOD target images, read again from the corpus by id (rayood.decide.originals).

An input that moved or cannot be read costs only its thumbnails, never the audit.
"""

from __future__ import annotations

import base64
import io
import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
from PIL import Image

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeError, DecodeLimits, decode_image
from rayood.decide.originals import iter_originals
from rayood.report.columns import pvalue_col, score_col
from rayood.storage import StorageError

log = logging.getLogger(__name__)


def most_ood(table: pa.Table, score: str, count: int) -> list[dict]:
    """The ``count`` rows with the highest ``score_<score>``: id, source, score and p-value."""
    values = table.column(score_col(score)).to_numpy(zero_copy_only=False).astype(np.float64)
    order = [i for i in np.argsort(-values, kind="stable") if not np.isnan(values[i])][:count]
    return [
        {
            "id": table.column("id")[i].as_py(),
            "source": table.column("source")[i].as_py(),
            "score": float(values[i]),
            "pvalue": table.column(pvalue_col(score))[i].as_py(),
        }
        for i in order
    ]


def data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attach_thumbnails(
    rows: list[dict], corpus: CorpusSettings, s3: S3Settings | None, size: int, limits: DecodeLimits = DecodeLimits()
) -> list[dict]:
    """Each row with ``thumbnail``: a PNG data URI of the image as the model saw it (``size`` pixels), or None."""
    by_source: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_source[row["source"]].add(row["id"])
    images: dict[str, bytes] = {}
    for source, ids in by_source.items():
        try:
            for row_id, files in iter_originals(source, ids, corpus, s3):
                image = next((files[ext] for ext in files if ext.lower() in corpus.file_extensions), None)
                if image is not None:
                    images[row_id] = image
        except (StorageError, OSError, ValueError, pa.ArrowException) as error:
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
