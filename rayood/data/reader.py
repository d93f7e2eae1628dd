"""Planned sources -> one Ray Dataset of decoded rows (``id, source, status, error, pixels, ...``).

Bytes are read with ``read_binary_files`` / row ranges of Parquet files (:mod:`rayood.data.parquet_ranges`) /
a streaming read of WebDataset shards
(:mod:`rayood.data.webdataset`) and decoded per row in a CPU
``map_batches`` step, never with ``read_images``: one corrupt file must become one error row, not a
failed read task or a silently dropped block.

``written`` (source URI -> ids already in a resumed report) keeps finished rows out: image files among them
are never read; Parquet and WebDataset rows among them are dropped after the read and before decoding.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from rayood.data.decode import BatchDecoder, DecodeLimits, text_ids
from rayood.data.parquet_ranges import ParquetRowRanges
from rayood.data.sources import SourcePlan
from rayood.data.synthetic_corpus import rows_to_images
from rayood.data.webdataset import IMAGE_FIELD, KEY_COLUMN, PROBLEM_FIELD, SHARD_COLUMN, ShardReader

# Decode batches per Parquet read task: few enough tasks that their overhead (~50 ms each on 2 cores) stays
# small, enough that a 20,000-row file decodes on every CPU.
READ_TASK_BATCHES = 16


class _Unwritten:
    """Keeps the rows whose id is not in ``written`` (a null id matches nothing). ``written`` is an object-store
    reference to an Arrow string array: each worker process fetches the one copy once, not a copy per task."""

    def __init__(self, id_column: str, written: ray.ObjectRef) -> None:
        self.id_column = id_column
        self.written = written
        self._values: pa.Array | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._values is None:
            self._values = ray.get(self.written)
        return batch.filter(unwritten(text_ids(batch.column(self.id_column)), self._values))


def unwritten(ids: pa.Array | pa.ChunkedArray, written: pa.Array) -> pa.Array | pa.ChunkedArray:
    """True where an id is not among ``written``; a null id is never written."""
    return pc.invert(pc.is_in(ids, value_set=written, skip_nulls=True))


def _with_problem_column(batch: pa.Table) -> pa.Table:
    """Read files get an all-null problem column, so they union with the rows made for unread files."""
    return pa.table(
        {
            "bytes": batch.column("bytes"),
            "path": batch.column("path"),
            PROBLEM_FIELD: pa.nulls(batch.num_rows, pa.string()),
        }
    )


def _read_image_files(plan: SourcePlan, paths: list[str], max_bytes: int) -> tuple[ray.data.Dataset, bool]:
    """``bytes, path`` per file, and whether a ``problem`` column was added. A file the listing showed to be
    over ``max_bytes`` is never read: its row is made from its name and size alone (a 50 GB file must not reach
    a read task's memory). Only then do read files get the column too, so common corpora pay no extra stage."""
    sizes = dict(zip(plan.paths, plan.sizes))  # None where the listing gives no size (HTTP): decoding checks
    too_large = [p for p in paths if (sizes.get(p) or 0) > max_bytes]
    readable = [p for p in paths if (sizes.get(p) or 0) <= max_bytes]
    read = ray.data.read_binary_files(readable, filesystem=plan.location.fs, include_paths=True) if readable else None
    if not too_large:
        return read, False
    unread = ray.data.from_arrow(
        pa.table(
            {
                "bytes": pa.nulls(len(too_large), pa.binary()),
                "path": too_large,
                PROBLEM_FIELD: [
                    f"file too large: {sizes[p]} bytes > max_bytes {max_bytes} (not read)" for p in too_large
                ],
            }
        )
    )
    return (
        unread if read is None else read.map_batches(_with_problem_column, batch_format="pyarrow").union(unread)
    ), True


def _read_shards(plan: SourcePlan, passthrough: tuple[str, ...], max_bytes: int) -> ray.data.Dataset:
    """One task per shard, streaming its samples out in blocks: a shard (often 0.25-1 GB) is never one row."""
    shards = [{"path": path, SHARD_COLUMN: plan.location.uri_of(path)} for path in plan.paths]
    return ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        ShardReader(plan.location.fs, plan.image_extensions, passthrough, max_member_bytes=max_bytes),
        batch_format="pyarrow",
        batch_size=1,
    )


def _read_parquet(plan: SourcePlan, columns: list[str], batch_size: int) -> ray.data.Dataset:
    """The plan's files in read tasks of ``READ_TASK_BATCHES`` decode batches each, so that decoding runs on
    every CPU however the rows are spread over files (a 20,000-row file is one block to ``read_parquet``)."""
    rows = plan.rows or 1
    source = ParquetRowRanges(
        plan.location.fs,
        list(zip(plan.paths, plan.row_groups)),
        columns,
        rows_per_task=READ_TASK_BATCHES * batch_size,
        batch_rows=batch_size,
        bytes_per_row=plan.data_bytes / rows,
    )
    return ray.data.read_datasource(source)


def _read_synthetic(rows: int, size: int, rows_per_task: int) -> ray.data.Dataset:
    """``synthetic://N``: ``id`` and ``image`` columns made from ``ray.data.range``, ``rows_per_task`` rows a task."""
    return ray.data.range(rows, override_num_blocks=max(1, -(-rows // rows_per_task))).map_batches(
        rows_to_images,
        fn_kwargs={"size": size},
        batch_format="pyarrow",
        batch_size=rows_per_task,
    )


def read_decoded(
    plans: list[SourcePlan],
    *,
    image_column: str,
    id_column: str,
    size: int,
    limits: DecodeLimits,
    passthrough: tuple[str, ...] = (),
    batch_size: int = 64,
    written: Mapping[str, pa.Array] | None = None,
) -> ray.data.Dataset | None:
    """One dataset over every plan, or None when ``written`` already holds every row."""
    datasets = []
    for plan in plans:
        done = (written or {}).get(plan.uri)
        if plan.kind == "images":
            paths = plan.paths
            if done is not None:
                uris = pa.array([plan.location.uri_of(path) for path in paths], pa.string())
                paths = [path for path, keep in zip(paths, unwritten(uris, done).to_pylist()) if keep]
            if not paths:
                continue
            raw, has_problems = _read_image_files(plan, paths, limits.max_bytes)
            decoder = BatchDecoder(
                image_column="bytes",
                id_column="path",
                source=plan.uri,
                size=size,
                limits=limits,
                id_uri_prefix=plan.location.uri_prefix,
                error_column=PROBLEM_FIELD if has_problems else None,
            )
        elif plan.kind == "webdataset":
            raw = _read_shards(plan, passthrough, limits.max_bytes)
            if done is not None:
                raw = raw.map_batches(_Unwritten("id", ray.put(done)), batch_format="pyarrow", batch_size=batch_size)
            decoder = BatchDecoder(
                image_column=IMAGE_FIELD,
                id_column="id",
                source=plan.uri,
                size=size,
                limits=limits,
                passthrough=tuple(dict.fromkeys([SHARD_COLUMN, KEY_COLUMN, *passthrough])),
                error_column=PROBLEM_FIELD,
            )
        elif plan.kind == "synthetic":
            raw = _read_synthetic(plan.rows, size, READ_TASK_BATCHES * batch_size)
            if done is not None:
                raw = raw.map_batches(_Unwritten("id", ray.put(done)), batch_format="pyarrow", batch_size=batch_size)
            decoder = BatchDecoder(image_column="image", id_column="id", source=plan.uri, size=size, limits=limits)
        else:
            raw = _read_parquet(plan, list(dict.fromkeys([image_column, id_column, *passthrough])), batch_size)
            if done is not None:
                raw = raw.map_batches(
                    _Unwritten(id_column, ray.put(done)), batch_format="pyarrow", batch_size=batch_size
                )
            decoder = BatchDecoder(
                image_column=image_column,
                id_column=id_column,
                source=plan.uri,
                size=size,
                limits=limits,
                passthrough=passthrough,
            )
        datasets.append(raw.map_batches(decoder, batch_format="pyarrow", batch_size=batch_size))
    if not datasets:
        return None
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
