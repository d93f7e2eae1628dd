"""k-th nearest-neighbour distance against a bank of L2-normalised vectors: exact, or approximate with an index.

Two searches behind one interface (``kth_distance(queries, k)``):
- ``ExactSearch``: a loop of matrix products over bank chunks, keeping a running top-k of similarities, so
  memory is bounded by queries x (chunk + k) whatever the bank size. The bank may be a memory-mapped array:
  every actor on a node then reads the same page-cached file instead of holding its own copy.
- ``IvfSearch``: a faiss inverted-file index (``IndexIVFFlat``, inner product): the bank is split into
  ``lists`` k-means cells and a query scans the ``probe`` nearest cells only. For banks of millions of
  vectors, where exact search costs a full pass over the bank per batch. The index file is memory-mapped too.

For unit vectors the Euclidean distance is sqrt(2 - 2 cos), monotone in the similarity, so the k-th largest
similarity gives the k-th smallest distance (ties give equal distances either way).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

IVF_TRAIN_PER_LIST = 64  # k-means sample per cell (faiss warns below 39)


class NeighbourSearch(Protocol):
    rows: int

    def kth_distance(self, queries: torch.Tensor, k: int) -> torch.Tensor: ...

    def to(self, device: torch.device) -> NeighbourSearch: ...


def _distance(kth_similarity: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((2.0 - 2.0 * kth_similarity.clamp(-1.0, 1.0)).clamp_min(0.0))


def _check_k(k: int, rows: int) -> None:
    if not 1 <= k <= rows:
        raise ValueError(f"k = {k} needs 1 <= k <= bank size {rows}")


@torch.no_grad()
def kth_neighbour_distance(
    queries: torch.Tensor, bank: torch.Tensor | np.ndarray, k: int, chunk_rows: int
) -> torch.Tensor:
    """(Q, C) queries, (M, C) bank, both L2-normalised -> (Q,) distance to each query's k-th neighbour.
    A NumPy bank (memory-mapped or not) is read chunk by chunk and never copied whole; a strided one (the global
    vectors of an (N, R, C) bank) is multiplied in place, BLAS reading its rows at their stride."""
    _check_k(k, bank.shape[0])
    best = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device, dtype=queries.dtype)
    for start in range(0, bank.shape[0], chunk_rows):
        chunk = bank[start : start + chunk_rows]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(chunk)
        candidates = torch.cat([best, queries @ chunk.to(queries.device, queries.dtype, non_blocking=True).T], dim=1)
        best = candidates.topk(min(k, candidates.shape[1]), dim=1).values
    return _distance(best[:, k - 1])


class ExactSearch:
    """Brute force over a (M, C) bank: a tensor, or a NumPy array (memory-mapped) until moved to an accelerator."""

    def __init__(self, bank: torch.Tensor | np.ndarray, chunk_rows: int) -> None:
        self.bank, self.chunk_rows, self.rows = bank, chunk_rows, bank.shape[0]

    def to(self, device: torch.device) -> ExactSearch:
        """On an accelerator the bank is copied once into its memory; on the CPU a mapped bank stays mapped."""
        if device.type != "cpu":
            bank = torch.from_numpy(np.ascontiguousarray(self.bank)) if isinstance(self.bank, np.ndarray) else self.bank
            self.bank = bank.to(device)
        return self

    def kth_distance(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        return kth_neighbour_distance(queries, self.bank, k, self.chunk_rows)


class IvfSearch:
    """A faiss IVF index over unit vectors (inner product); searched on the CPU, whatever the queries' device."""

    def __init__(self, index, probe: int) -> None:
        self.index, self.rows = index, int(index.ntotal)
        self.index.nprobe = probe
        _use_torch_threads()  # once, when the actor loads its bundle (it sets torch's threads before that)

    def to(self, device: torch.device) -> IvfSearch:
        return self

    @torch.no_grad()
    def kth_distance(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        _check_k(k, self.rows)
        similarities, labels = self.index.search(np.ascontiguousarray(queries.float().cpu().numpy()), k)
        kth = np.where(labels[:, k - 1] >= 0, similarities[:, k - 1], -1.0)  # fewer than k found: farthest possible
        return _distance(torch.from_numpy(kth).to(queries.device, queries.dtype))


def _use_torch_threads() -> None:
    """faiss's OpenMP would take every core of the node; an actor gets as many as torch was given."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())


def default_lists(rows: int) -> int:
    """4 sqrt(rows) cells (faiss's guidance for millions of vectors), at most one per 39 training vectors."""
    return max(1, min(int(4 * math.sqrt(rows)), rows // 39))


def build_ivf(vectors: np.ndarray, lists: int | None, seed: int = 0):
    """A trained, filled ``IndexIVFFlat`` over (M, C) unit vectors; k-means on a seeded sample of the rows."""
    import faiss

    _use_torch_threads()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows, dim = vectors.shape
    lists = min(lists or default_lists(rows), rows)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(rows)[: lists * IVF_TRAIN_PER_LIST]
    index.cp.seed = seed
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    return index


def write_ivf(index, path: str) -> None:
    import faiss

    faiss.write_index(index, path)


def read_ivf(path: str):
    """An index file memory-mapped: its inverted lists are read from the page cache, shared by every process."""
    import faiss

    return faiss.read_index(path, faiss.IO_FLAG_MMAP)


def normalise(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=-1)
