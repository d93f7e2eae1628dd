"""ALPA (MODE, Zhang et al., ICCV 2023): attention-based local propagation between the last feature maps
of two images, giving a similarity that compares local regions after aligning them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _head(channels: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, channels, bias=False), nn.ReLU(), nn.Linear(channels, dim, bias=False))


class LocalPropagation(nn.Module):
    """Q, K, V heads (Linear -> ReLU -> Linear, no bias) on the tokens of the last feature map."""

    def __init__(self, channels: int, dim: int = 80) -> None:
        super().__init__()
        self.dim = dim
        self.query, self.key, self.value = _head(channels, dim), _head(channels, dim), _head(channels, dim)

    def similarity(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, N) with sim(a, b) = mean_t cos(V_a, align(b -> a)) + mean_t cos(V_b, align(a -> b)).

        align(b -> a) = softmax(Q_a K_b^T / sqrt(d)) V_b: b's tokens re-arranged to a's positions.
        """
        tokens = feature_map.flatten(2).transpose(1, 2)  # (N, T, C)
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        attention = torch.softmax(torch.einsum("atd,bsd->abts", q, k) / math.sqrt(self.dim), dim=-1)
        aligned = torch.einsum("abts,bsd->abtd", attention, v)  # b aligned to a, at a's token positions
        cosine = torch.einsum("atd,abtd->abt", F.normalize(v, dim=-1), F.normalize(aligned, dim=-1))
        one_way = cosine.mean(dim=-1)  # (N, N): row a, column b
        return one_way + one_way.T
