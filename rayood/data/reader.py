"""Planned sources -> one Ray Dataset of decoded rows (``id, source, status, error, pixels, ...``).

Bytes are read with ``read_binary_files`` / ``read_parquet`` / a streaming read of WebDataset shards
(:mod:`rayood.data.webdataset`) and decoded per row in a CPU
``map_batches`` step, never with ``read_images``: one corrupt file must become one error row, not a
failed read task or a silently dropped block.
"""

from __future__ import annotations

import ray.data

from rayood.data.decode import BatchDecoder, DecodeLimits
from rayood.data.sources import SourcePlan
from rayood.data.webdataset import IMAGE_FIELD, KEY_COLUMN, PROBLEM_FIELD, SHARD_COLUMN, ShardReader


def _read_shards(plan: SourcePlan, passthrough: tuple[str, ...]) -> ray.data.Dataset:
    """One task per shard, streaming its samples out in blocks: a shard (often 0.25-1 GB) is never one row."""
    shards = [{"path": path, SHARD_COLUMN: plan.location.uri_of(path)} for path in plan.paths]
    return ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        ShardReader(plan.location.fs, plan.image_extensions, passthrough), batch_format="pyarrow", batch_size=1
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
) -> ray.data.Dataset:
    datasets = []
    for plan in plans:
        if plan.kind == "images":
            raw = ray.data.read_binary_files(list(plan.paths), filesystem=plan.location.fs, include_paths=True)
            decoder = BatchDecoder(
                image_column="bytes", id_column="path", source=plan.uri, size=size, limits=limits,
                id_uri_prefix="s3://" if plan.uri.startswith("s3://") else "",
            )
        elif plan.kind == "webdataset":
            raw = _read_shards(plan, passthrough)
            decoder = BatchDecoder(
                image_column=IMAGE_FIELD, id_column="id", source=plan.uri, size=size, limits=limits,
                passthrough=tuple(dict.fromkeys([SHARD_COLUMN, KEY_COLUMN, *passthrough])), error_column=PROBLEM_FIELD,
            )
        else:
            columns = list(dict.fromkeys([image_column, id_column, *passthrough]))
            raw = ray.data.read_parquet(list(plan.paths), filesystem=plan.location.fs, columns=columns)
            decoder = BatchDecoder(
                image_column=image_column, id_column=id_column, source=plan.uri, size=size, limits=limits,
                passthrough=passthrough,
            )
        datasets.append(raw.map_batches(decoder, batch_format="pyarrow", batch_size=batch_size))
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
