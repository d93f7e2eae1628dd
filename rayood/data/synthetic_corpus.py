"""``synthetic://N``: a corpus of N small images made on the fly, for load tests of a cluster or of rayood itself.

Nothing is stored: a Ray Data ``range`` is turned into JPEG bytes per row, then decoded and scored like any
other input, so the run costs what a real corpus of small JPEGs costs except the storage reads. Row ``i`` has
id ``synthetic-<i>`` and one of a fixed set of random-texture images (chosen by ``i``): the same URI always
gives the same rows, so a killed load test resumes like any other run.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pyarrow as pa
from PIL import Image

SCHEME = "synthetic://"
DISTINCT_IMAGES = 256
ID_PREFIX = "synthetic-"


class SyntheticCorpusError(ValueError):
    """A ``synthetic://`` URI that does not name a row count."""


def synthetic_rows(uri: str) -> int:
    """The row count a ``synthetic://N`` URI names."""
    count = uri[len(SCHEME) :].rstrip("/")
    if not count.isdigit() or int(count) == 0:
        raise SyntheticCorpusError(f"{uri}: a synthetic corpus is synthetic://N with N a positive row count")
    return int(count)


@functools.lru_cache(maxsize=4)  # once per worker process and size
def _textures(size: int, seed: int = 0) -> list[bytes]:
    """JPEG bytes of ``DISTINCT_IMAGES`` smooth random colour textures (quality 75, as the CIFAR-10 data)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(DISTINCT_IMAGES):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=75)
        images.append(buffer.getvalue())
    return images


def rows_to_images(batch: pa.Table, size: int) -> pa.Table:
    """``ray.data.range``'s ``id`` (the row number) -> ``id`` (text) and ``image`` (JPEG bytes), for
    ``map_batches`` (no Ray import here: planning, which imports this module, stays Ray-free)."""
    numbers = batch.column("id").to_numpy().tolist()
    images = _textures(size)
    return pa.table(
        {
            "id": [f"{ID_PREFIX}{n}" for n in numbers],
            "image": pa.array([images[n % DISTINCT_IMAGES] for n in numbers], pa.binary()),
        }
    )
