"""Two-sample tests between a reference corpus and a target corpus.

- ``ks_test``: Kolmogorov-Smirnov on one score's values (distribution-free, sensitive to any shift).
- ``flagged_test``: how many target images get p <= alpha against the bundle's calibration set, compared
  with the exact null law of that count. Conformal p-values of m images against one calibration set of n
  are not independent: given the calibration set the flag rate is Beta(l, n + 1 - l) with
  l = floor(alpha (n + 1)), so the count is beta-binomial(m, l, n + 1 - l) (Bates et al., 2023). A plain
  binomial test ignores the calibration set's own randomness and rejects far too often once m >> n.
- ``mmd_test``: maximum mean discrepancy with an RBF kernel on backbone embeddings, with a permutation
  p-value: it sees shifts in feature space that no single score summarises.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import betabinom, ks_2samp

MMD_MAX_ROWS = 2000
MMD_PERMUTATIONS = 500
PERMUTATION_CHUNK = 64


def ks_test(reference: np.ndarray, target: np.ndarray) -> dict:
    if reference.size == 0 or target.size == 0:
        return {"skipped": "needs scored rows on both sides"}
    result = ks_2samp(reference, target)
    return {"statistic": float(result.statistic), "pvalue": float(result.pvalue)}


def flagged_test(pvalues: np.ndarray, alpha: float, calibration_rows: int) -> dict:
    """One-sided test of "more images flagged at ``alpha`` than exchangeable ID images would be"."""
    rows, flagged = int(pvalues.size), int((pvalues <= alpha).sum())
    if rows == 0:
        return {"skipped": "no scored rows"}
    hits = math.floor(alpha * (calibration_rows + 1))
    expected = hits / (calibration_rows + 1)  # P(p <= alpha) for one ID image; at most alpha
    pvalue = float(betabinom.sf(flagged - 1, rows, hits, calibration_rows + 1 - hits)) if hits else 1.0
    return {
        "rows": rows,
        "flagged": flagged,
        "fraction": flagged / rows,
        "alpha": alpha,
        "expected": expected,
        "pvalue": pvalue,
    }


def median_bandwidth(squared: np.ndarray) -> float:
    """The median pairwise Euclidean distance, from the symmetric matrix of squared distances (zero distances,
    the diagonal among them, left out: each pair appears twice, which leaves the median unchanged)."""
    positive = squared[squared > 0]
    return float(np.sqrt(np.median(positive, overwrite_input=True))) if positive.size else 1.0


def _mmd2(kernel: np.ndarray, in_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each labelling in the columns of ``in_x`` (boolean, n x labellings).

    ``kernel`` has a zero diagonal, so x^T K x sums the pairs i != j only."""
    x = in_x.astype(np.float64)
    y = 1.0 - x
    nx, ny = x[:, 0].sum(), y[:, 0].sum()
    kx = kernel @ x
    ky = kernel.sum(axis=1, keepdims=True) - kx  # kernel @ y with one product fewer
    within_x = (x * kx).sum(axis=0) / (nx * (nx - 1))
    within_y = (y * ky).sum(axis=0) / (ny * (ny - 1))
    across = (y * kx).sum(axis=0) / (nx * ny)
    return within_x + within_y - 2 * across


def mmd_test(
    reference: np.ndarray,
    target: np.ndarray,
    *,
    permutations: int = MMD_PERMUTATIONS,
    max_rows: int = MMD_MAX_ROWS,
    seed: int = 0,
) -> dict:
    """RBF-kernel MMD between two samples of vectors (rows), with a permutation p-value.

    Each sample is subsampled (without replacement, seeded) to ``max_rows``, so the pooled kernel matrix
    holds at most (2 max_rows)^2 float64 values: 128 MB at the default cap of 2000, and twice that at the
    peak, while the bandwidth's median is taken."""
    if len(reference) < 2 or len(target) < 2:
        return {"skipped": "needs at least two embeddings on each side"}
    rng = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, dtype=np.float64), max_rows, rng)
    y = _subsample(np.asarray(target, dtype=np.float64), max_rows, rng)
    pooled = np.concatenate([x, y])
    norms = (pooled**2).sum(axis=1)
    kernel = pooled @ pooled.T  # becomes the squared distances, then the kernel, in place
    kernel *= -2.0
    kernel += norms[:, None]
    kernel += norms[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    bandwidth = median_bandwidth(kernel)
    kernel *= -1.0 / (2 * bandwidth**2)
    np.exp(kernel, out=kernel)
    np.fill_diagonal(kernel, 0.0)
    observed = np.zeros((len(pooled), 1), dtype=bool)
    observed[: len(x)] = True
    statistic = float(_mmd2(kernel, observed)[0])
    exceed = 0
    for start in range(0, permutations, PERMUTATION_CHUNK):
        count = min(PERMUTATION_CHUNK, permutations - start)
        labels = np.stack([rng.permutation(observed[:, 0]) for _ in range(count)], axis=1)
        exceed += int((_mmd2(kernel, labels) >= statistic).sum())
    return {
        "statistic": statistic,
        "pvalue": (1 + exceed) / (1 + permutations),
        "bandwidth": bandwidth,
        "reference_rows": len(x),
        "target_rows": len(y),
        "permutations": permutations,
    }


def _subsample(values: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= max_rows:
        return values
    return values[np.sort(rng.choice(len(values), max_rows, replace=False))]
