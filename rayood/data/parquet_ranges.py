"""Reading planned Parquet files as row ranges: read tasks of a bounded number of rows, whatever the files' sizes.

``ray.data.read_parquet`` makes one block per file (or per 128 MB); the screening pipeline then had to split
it in a separate repartition task, which on a 2-CPU node held the CPU that decoding needed while the scoring
actor held the other (BENCHMARKS.md, "Pipeline against the tight loop": a 27 s stall per run, and ~55 ms of
task overhead per 64-row decode block). The planner has already read every footer, so the driver knows each
row group's size: each read task here takes at most ``rows_per_task`` rows (parts of row groups, streamed in
batches), so decoding gets blocks of that size and no separate split task (Ray Data runs the read and the
decode as two operators).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one row group of one file."""

    path: str
    row_group: int
    start: int
    stop: int


def split_rows(row_groups: Sequence[tuple[str, Sequence[int]]], rows_per_task: int) -> list[list[RowRange]]:
    """Every row of every file's row groups (``(path, rows of each group)``), in order, cut into tasks of at most
    ``rows_per_task`` rows; a task may span row groups and files."""
    tasks: list[list[RowRange]] = [[]]
    room = rows_per_task
    for path, groups in row_groups:
        for group, rows in enumerate(groups):
            start = 0
            while start < rows:
                if room == 0:
                    tasks.append([])
                    room = rows_per_task
                stop = min(rows, start + room)
                tasks[-1].append(RowRange(path, group, start, stop))
                room -= stop - start
                start = stop
    return [task for task in tasks if task]


def _read_range(fs: pafs.FileSystem, piece: RowRange, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """The range's rows in tables of at most ``batch_rows``, streamed: a large row group is never held whole."""
    with fs.open_input_file(piece.path) as handle:
        parquet = pq.ParquetFile(handle)
        offset = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[piece.row_group], columns=columns):
            begin, end = max(piece.start, offset), min(piece.stop, offset + batch.num_rows)
            if begin < end:
                yield pa.Table.from_batches([batch.slice(begin - offset, end - begin)])
            offset += batch.num_rows
            if offset >= piece.stop:
                return


class ParquetRowRanges(Datasource):
    """The planned files' ``columns``, in read tasks of at most ``rows_per_task`` rows each."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        row_groups: Sequence[tuple[str, Sequence[int]]],
        columns: list[str],
        *,
        rows_per_task: int,
        batch_rows: int,
        bytes_per_row: float,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.tasks = split_rows(row_groups, rows_per_task)
        self.columns = columns
        self.batch_rows = batch_rows
        self.bytes_per_row = bytes_per_row

    def estimate_inmemory_data_size(self) -> int:
        return int(self.bytes_per_row * sum(p.stop - p.start for task in self.tasks for p in task))

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        fs, columns, batch_rows = self.fs, self.columns, self.batch_rows

        def read(pieces: list[RowRange]) -> Iterator[pa.Table]:
            for piece in pieces:
                yield from _read_range(fs, piece, columns, batch_rows)

        read_tasks = []
        for pieces in self.tasks:
            rows = sum(p.stop - p.start for p in pieces)
            metadata = BlockMetadata(
                num_rows=rows,
                size_bytes=int(rows * self.bytes_per_row),
                exec_stats=None,
                input_files=tuple(dict.fromkeys(p.path for p in pieces)),
            )
            read_tasks.append(
                ReadTask(lambda pieces=pieces: read(pieces), metadata, per_task_row_limit=per_task_row_limit)
            )
        return read_tasks

    def get_name(self) -> str:
        return "ParquetRowRanges"
