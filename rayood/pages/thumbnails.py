"""Thumbnails of report rows, read again from the corpus by id (rayood.data.originals), only for the rows shown.

A row whose original moved, changed or cannot be read gets a ``missing`` reason in place of its thumbnail: it
costs that picture, never the page.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
from PIL import Image

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeError, DecodeLimits, decode_image
from rayood.data.originals import iter_originals
from rayood.data.sources import InputError
from rayood.data.synthetic_corpus import SCHEME as SYNTHETIC
from rayood.pages.html import png_uri
from rayood.report.columns import pvalue_col, score_col
from rayood.storage import StorageError

log = logging.getLogger(__name__)

THUMBNAIL_PX = 128  # the pages' own size: the model's centre crop, at a size a person can judge


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
    return png_uri(buffer.getvalue())


def _read_originals(
    rows: list[dict], corpus: CorpusSettings, s3: S3Settings | None
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The image bytes of each distinct (source, id) of ``rows``, each read once; and why a source gave none."""
    by_source: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_source[row["source"]].add(row["id"])
    images: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for source, ids in by_source.items():
        if source.startswith(SYNTHETIC):
            unreadable[source] = "a synthetic corpus has no stored originals"
            continue
        try:
            for row_id, files in iter_originals(source, ids, corpus, s3):
                image = next((files[ext] for ext in files if ext.lower() in corpus.file_extensions), None)
                if image is not None:
                    images[f"{source}\0{row_id}"] = image
        except (StorageError, InputError, OSError, ValueError, pa.ArrowException) as error:
            log.warning("no thumbnails from %s: %s", source, error)
            unreadable[source] = f"cannot read the source: {error}"
    return images, unreadable


def attach_thumbnails(
    rows: list[dict], corpus: CorpusSettings, s3: S3Settings | None, size: int, limits: DecodeLimits = DecodeLimits()
) -> list[dict]:
    """Each row with ``thumbnail``: a PNG data URI of the image as the model crops it, ``size`` pixels square;
    or None and ``missing``, why not."""
    images, unreadable = _read_originals(rows, corpus, s3)
    result = []
    for row in rows:
        data = images.get(f"{row['source']}\0{row['id']}")
        try:
            if data is None:
                why = unreadable.get(row["source"], "the original is no longer in its source")
                result.append({**row, "thumbnail": None, "missing": why})
                continue
            result.append({**row, "thumbnail": data_uri(decode_image(data, size, limits))})
        except DecodeError as error:  # the file changed since it was screened
            log.warning("no thumbnail for %s: %s", row["id"], error)
            result.append({**row, "thumbnail": None, "missing": f"the original no longer decodes: {error}"})
    return result


def recorded_limits(summary: dict) -> DecodeLimits:
    """The decode limits a screening run applied (its summary records them): a thumbnail decodes no more than the
    screening did."""
    recorded = summary.get("decode_limits") or {}
    default = DecodeLimits()
    return DecodeLimits(
        recorded.get("max_bytes", default.max_bytes),
        recorded.get("max_pixels", default.max_pixels),
        tuple(recorded.get("formats", default.formats)),
    )
