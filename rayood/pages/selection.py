"""The rows a page shows, chosen while a report streams past in batches: the rows with the highest or lowest value,
and a uniform sample. Memory is bounded by the number shown, whatever the report's size; rows become Python
dicts only once chosen."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rayood.report.sampling import SampleSlots


def rows_at(batch: pa.Table, positions: np.ndarray) -> list[dict]:
    return batch.take(pa.array(positions, type=pa.int64())).to_pylist()


class Extremes:
    """The ``size`` rows with the highest (``highest=True``) or the lowest ``key`` seen so far; NaN keys never."""

    def __init__(self, size: int, highest: bool) -> None:
        self.size = size
        self.highest = highest
        self._kept: list[tuple[float, dict]] = []

    def add(self, keys: np.ndarray, batch: pa.Table) -> None:
        """``keys``: one value per row of ``batch``."""
        valid = np.flatnonzero(~np.isnan(keys))
        if self.size == 0 or valid.size == 0:
            return
        signed = -keys[valid] if self.highest else keys[valid]
        if valid.size > self.size:  # only this batch's best can enter
            valid = valid[np.argpartition(signed, self.size - 1)[: self.size]]
        candidates = self._kept + list(zip(keys[valid].tolist(), rows_at(batch, valid)))
        candidates.sort(key=lambda pair: -pair[0] if self.highest else pair[0])
        self._kept = candidates[: self.size]

    @property
    def rows(self) -> list[dict]:
        """Best first."""
        return [row for _, row in self._kept]


class RowSample:
    """A uniform sample of at most ``size`` rows of the stream (seeded)."""

    def __init__(self, size: int, seed: int) -> None:
        self.slots = SampleSlots(size, seed)
        self.rows: list[dict] = []

    def add(self, batch: pa.Table) -> None:
        positions, slots = self.slots.place(batch.num_rows)
        for slot, row in zip(slots.tolist(), rows_at(batch, positions)):
            if slot == len(self.rows):
                self.rows.append(row)
            else:
                self.rows[slot] = row
