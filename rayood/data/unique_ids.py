"""Repeated values in an id column, found with 8 bytes of driver memory per row instead of the ids themselves.

A report row is known by (source, id), so planning refuses a Parquet input whose ids repeat. Holding every id
to count them costs the driver the whole column (strings: ~10 GB at 100 million rows). Instead, the column
streams through once and keeps a 64-bit hash per row; only hashes seen twice are candidates, and a second
streaming pass counts the real ids behind those few. Hash collisions therefore cost a second pass, never a
wrong answer. Null ids are left out (a null id is an error row of its own, not a repeat).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

BATCH_ROWS = 65_536


def _present(ids: pa.Array) -> pa.Array:
    return ids.drop_null() if ids.null_count else ids


def _hashes(ids: pa.Array) -> np.ndarray:
    """uint64 per id; pandas' vectorised SipHash, seeded identically in every process."""
    return pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object), categorize=False)


def repeated_ids(batches: Callable[[], Iterable[pa.Array]], rows: int, limit: int = 3) -> tuple[int, list]:
    """(how many distinct ids occur more than once, up to ``limit`` of them) over the id arrays that
    ``batches()`` yields, ``rows`` ids at most (the Parquet footers' count: the hashes go straight into one array
    of that size). ``batches`` is called a second time only when some hash repeats."""
    every, filled = np.empty(rows, np.uint64), 0
    for ids in batches():
        hashes = _hashes(_present(ids))
        if filled + len(hashes) > rows:
            raise ValueError(f"the id column holds more than the {rows} rows its footers declare")
        every[filled : filled + len(hashes)] = hashes
        filled += len(hashes)
    every = every[:filled]
    every.sort()
    candidates = np.unique(every[1:][every[1:] == every[:-1]])
    del every
    if not len(candidates):
        return 0, []
    counts: Counter = Counter()
    for ids in batches():
        ids = _present(ids)
        suspect = np.isin(_hashes(ids), candidates)
        if suspect.any():
            counts.update(ids.filter(pa.array(suspect)).to_pylist())
    repeated = [value for value, count in counts.items() if count > 1]
    return len(repeated), repeated[:limit]
