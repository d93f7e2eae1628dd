"""Exact k-th nearest-neighbour distance against a bank of L2-normalised vectors.

Search is a loop of matrix products over bank chunks on the actor's device, keeping a running top-k of
similarities, so memory is bounded by queries x (chunk + k) whatever the bank size. For unit vectors the
Euclidean distance is sqrt(2 - 2 cos), monotone in the similarity, so the k-th largest similarity gives the
k-th smallest distance (ties give equal distances either way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def kth_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_rows: int) -> torch.Tensor:
    """(Q, C) queries, (M, C) bank, both L2-normalised -> (Q,) distance to each query's k-th neighbour."""
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k = {k} needs 1 <= k <= bank size {bank.shape[0]}")
    best = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device, dtype=queries.dtype)
    for start in range(0, bank.shape[0], chunk_rows):
        chunk = bank[start : start + chunk_rows].to(queries.device, queries.dtype, non_blocking=True)
        candidates = torch.cat([best, queries @ chunk.T], dim=1)
        best = candidates.topk(min(k, candidates.shape[1]), dim=1).values
    kth_similarity = best[:, k - 1].clamp(-1.0, 1.0)
    return torch.sqrt((2.0 - 2.0 * kth_similarity).clamp_min(0.0))


def normalise(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=-1)
