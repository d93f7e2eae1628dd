"""A training worker's shard of the ID corpus, decoded once into a compact uint8 tensor.

Streaming the shard from Ray Data every epoch cost about 5 s per epoch on the 2-core machine (Arrow
batches, a local shuffle buffer, Arrow-to-tensor conversion: BENCHMARKS.md, training overhead), and the
shuffle buffer of a few blocks mixed a class-sorted corpus so coarsely that a CIFAR-10 refit stalled at 70%
training accuracy. So each stage reads its shard once, keeps the pixels as (N, 3, H, W) uint8 (CIFAR-10's
38,000 training images: 117 MB) and draws a full random permutation per epoch. Ray Train still owns the
worker group, the sharding, checkpoints and restarts.

Rows are kept in id order: Ray Data delivers blocks in whatever order its tasks finish, and a permutation
of rows in arrival order would make two fits of the same config differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch

from rayood.data.decode import pixels_from_column

READ_BATCH_ROWS = 4096


def id_order(ids: list[str]) -> torch.Tensor:
    """The permutation that sorts rows by id (ids are unique within a corpus)."""
    return torch.tensor(sorted(range(len(ids)), key=ids.__getitem__), dtype=torch.long)


class CacheTooLarge(RuntimeError):
    """The shard does not fit the per-worker cache limit (``train.cache_max_bytes``)."""


@dataclass
class CachedShard:
    pixels: torch.Tensor  # (N, 3, H, W) uint8, on the CPU
    labels: torch.Tensor  # (N,) int64 class index

    @classmethod
    def load(cls, shard, size: int, label_column: str, class_names: list[str], max_bytes: int) -> CachedShard:
        """Read a Ray Train dataset shard (or any object with ``iter_batches``) once, in id order."""
        index = {name: i for i, name in enumerate(class_names)}
        chunks, labels, ids, total = [], [], [], 0
        for batch in shard.iter_batches(batch_size=READ_BATCH_ROWS, batch_format="pyarrow"):
            pixels = pixels_from_column(batch.column("pixels"), size)
            total += pixels.nbytes
            if total > max_bytes:
                raise CacheTooLarge(
                    f"this worker's share of train.data exceeds train.cache_max_bytes={max_bytes}: "
                    "raise it, or use more train.num_workers"
                )
            chunks.append(torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous())
            labels += [index[name] for name in batch.column(label_column).cast(pa.string()).to_pylist()]
            ids += batch.column("id").to_pylist()
        if not chunks:
            return cls(torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
        order = id_order(ids)
        return cls(torch.cat(chunks)[order], torch.tensor(labels, dtype=torch.long)[order])

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_batches(self, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Row indices of ``steps`` batches from one fresh permutation (every worker runs the same step count)."""
        order = torch.randperm(len(self), generator=generator)
        for step in range(steps):
            yield order[step * batch_size : (step + 1) * batch_size]

    def images(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The rows' pixels as float [0, 1], NCHW, on ``device``."""
        return self.pixels[index].to(device, non_blocking=True).float().div_(255.0)
