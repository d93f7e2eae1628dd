"""Calibration on held-out ID scores: conformal p-values and the matching score thresholds.

p(s) = (1 + #{calibration scores >= s}) / (n + 1). If the calibration scores and a new ID score are
exchangeable, P(p <= alpha) <= alpha, so flagging ``p <= alpha`` falsely flags at most a fraction alpha
of ID images. ``threshold`` is the smallest score whose p-value is <= alpha, for reports.
"""

from __future__ import annotations

import numpy as np


class ConformalReference:
    """One detector's held-out ID scores, sorted once so that each batch's p-values are a binary search."""

    def __init__(self, calibration: np.ndarray) -> None:
        self.sorted = np.sort(np.asarray(calibration, dtype=np.float64))
        if self.sorted.size == 0:
            raise ValueError("no calibration scores")

    def pvalues(self, scores: np.ndarray) -> np.ndarray:
        values = np.asarray(scores, dtype=np.float64)
        at_least = self.sorted.size - np.searchsorted(self.sorted, values, side="left")
        pvalues = (1.0 + at_least) / (self.sorted.size + 1.0)
        return np.where(np.isnan(values), np.nan, pvalues)


def conformal_pvalues(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    return ConformalReference(calibration).pvalues(scores)


def threshold(calibration: np.ndarray, alpha: float) -> float:
    """The decision boundary in score space: a score s gets p <= alpha iff s > threshold.

    With n sorted calibration scores c_1 <= ... <= c_n, p(s) <= alpha needs #{c >= s} <= k where
    k = floor(alpha (n + 1)) - 1; that holds iff s > c_(n - k). Returns +inf when no score can reach alpha.
    """
    reference = np.sort(np.asarray(calibration, dtype=np.float64))
    k = int(np.floor(alpha * (reference.size + 1))) - 1
    if k < 0:
        return float("inf")
    return float(reference[reference.size - k - 1])
