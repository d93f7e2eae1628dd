"""Benchmark corpora made from one Parquet file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def replicate(source: Path, copies: int, target: Path) -> Path:
    """``copies`` Parquet files of the same images under new ids: a corpus ``copies`` times as large."""
    table = pq.read_table(source)
    target.mkdir(parents=True, exist_ok=True)
    column = table.schema.get_field_index("id")
    for copy in range(copies):
        ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(f"#{copy}"), "")
        pq.write_table(table.set_column(column, "id", ids), target / f"part-{copy:04d}.parquet")
    return target
