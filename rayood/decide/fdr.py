"""Benjamini-Hochberg over conformal p-values: reject (call OOD) with a bound on the false discovery rate.

A discovery is an image called OOD; a false discovery is an ID image called OOD. BH at level Q controls
E[#ID rejected / max(#rejected, 1)] <= Q * m0 / m when the null p-values are PRDS, which conformal
p-values against one shared calibration set are (Bates et al., 2023, "Testing for outliers with conformal
p-values"), provided the ID images are exchangeable with the calibration scores.

The procedure is fitted from the distinct p-values and their counts, not from every row: conformal
p-values take at most n_calibration + 1 values, so a report of any size fits in a few kilobytes, and rows
can then be decided batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class BenjaminiHochberg:
    """The BH step-up procedure at level ``q`` for one family of p-values."""

    def __init__(self, values: np.ndarray, counts: np.ndarray, q: float) -> None:
        """``values``: the distinct p-values (any order); ``counts``: how many rows hold each."""
        if not 0 < q < 1:
            raise ValueError(f"the FDR level must be in (0, 1), got {q}")
        values = np.asarray(values, dtype=np.float64)
        counts = np.asarray(counts).astype(np.int64)
        if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
            raise ValueError("p-values must lie in [0, 1] (drop rows without a p-value first)")
        order = np.argsort(values)
        self.values, self.counts = values[order], counts[order]
        if (np.diff(self.values) == 0).any() or (self.counts < 1).any():
            raise ValueError("values must be distinct and every count positive")
        self.q = q
        self.tests = int(self.counts.sum())
        # A tied group's rank is its last position: step-up rejects all copies or none.
        raw = self.values * self.tests / np.cumsum(self.counts)
        self.adjusted = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)

    @classmethod
    def fit(cls, pvalues: np.ndarray, q: float) -> BenjaminiHochberg:
        return cls.fit_batches([pvalues], q)

    @classmethod
    def fit_batches(cls, batches: Iterable[np.ndarray], q: float) -> BenjaminiHochberg:
        """Fit on the p-values of several batches, holding only their distinct values in memory."""
        values, counts = [np.empty(0)], [np.empty(0, dtype=np.int64)]
        for batch in batches:
            batch_values, batch_counts = np.unique(np.asarray(batch, dtype=np.float64), return_counts=True)
            values.append(batch_values)
            counts.append(batch_counts)
        merged, inverse = np.unique(np.concatenate(values), return_inverse=True)
        return cls(merged, np.bincount(inverse, weights=np.concatenate(counts), minlength=merged.size), q)

    def qvalues(self, pvalues: np.ndarray) -> np.ndarray:
        """BH-adjusted p-values: the smallest level at which each p-value would be rejected.

        Only defined for p-values of the fitted family (each must be one of the fitted values).
        """
        pvalues = np.asarray(pvalues, dtype=np.float64)
        index = np.searchsorted(self.values, pvalues)
        if pvalues.size and (index.max() >= self.values.size or (self.values[index] != pvalues).any()):
            raise ValueError("p-values outside the family this procedure was fitted on")
        return self.adjusted[index]

    def reject(self, pvalues: np.ndarray) -> np.ndarray:
        return self.qvalues(pvalues) <= self.q

    @property
    def threshold(self) -> float | None:
        """The largest rejected p-value (every p-value up to it is rejected), or None when nothing is."""
        rejected = self.values[self.adjusted <= self.q]
        return float(rejected[-1]) if rejected.size else None

    @property
    def rejections(self) -> int:
        return int(self.counts[self.adjusted <= self.q].sum())
