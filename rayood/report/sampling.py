"""Uniform samples of a stream of any length in bounded memory (Algorithm R, vectorised per batch; seeded, so a
summary or a page is reproducible)."""

from __future__ import annotations

import numpy as np


class SampleSlots:
    """Where the items of each new batch go in a uniform sample of at most ``size`` items of the whole stream."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.count = 0
        self.rng = np.random.default_rng(seed)

    def place(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For a batch of ``n`` new items: the positions (in the batch, ascending) of those that enter the sample
        and the slot each takes. A slot equal to the sample's length appends; a later item in the same slot wins."""
        filled = min(self.count, self.size)
        take = min(self.size - filled, n)
        positions, slots = np.arange(take), filled + np.arange(take)
        rest = n - take
        if rest:
            seen = self.count + take + np.arange(1, rest + 1)  # each item's 1-based stream position
            drawn = (self.rng.random(rest) * seen).astype(np.int64)
            kept = drawn < self.size
            positions = np.concatenate([positions, take + np.flatnonzero(kept)])
            slots = np.concatenate([slots, drawn[kept]])
        self.count += n
        return positions, slots


class Reservoir:
    """A uniform sample of at most ``size`` values of a stream, with the exact count and mean of the whole stream."""

    def __init__(self, size: int, seed: int) -> None:
        self.slots = SampleSlots(size, seed)
        self.values = np.empty(0)
        self.total = 0.0

    @property
    def count(self) -> int:
        return self.slots.count

    def add(self, values: np.ndarray) -> None:
        self.total += float(values.sum())
        positions, slots = self.slots.place(len(values))
        if slots.size and slots.max() >= len(self.values):
            self.values = np.concatenate([self.values, np.empty(slots.max() + 1 - len(self.values))])
        self.values[slots] = values[positions]
