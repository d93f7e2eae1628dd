"""Score fusion (``score_fused``): one statistic from several detectors' conformal p-values.

Rules, over the k fused p-values of an image:
- ``cauchy`` (default; Liu & Xie, JASA 2020): T = mean_i tan((0.5 - p_i) pi). Its tail stays close to a
  standard Cauchy under arbitrary dependence between the p-values, and our detectors share one backbone,
  so their p-values are strongly dependent. A very small p-value dominates T, so one confident detector
  is enough to flag, while the weak ones add little. A conformal p-value of exactly 1 (a score below
  every reference score) would give tan(-pi/2), so p-values are capped at 1 - 1/(n + 1), the mirror of
  the smallest one, 1/(n + 1).
- ``fisher`` (Fisher, 1925): T = -2 sum_i log p_i; chi-square with 2k degrees of freedom only under
  independence, and it rewards agreement of several moderately small p-values.

Neither null distribution is relied on. T is treated as one more score (higher = more OOD) and
calibrated conformally on held-out ID data like every other score, so ``pvalue_fused`` is valid under the
same exchangeability assumption alone; the rule decides power only. For that T's reference must not be
computed from the p-values' own reference rows, so the calibration rows are split in two by position
(their order does not depend on their scores): even rows are the reference of the per-score p-values
inside T, odd rows' T values are the reference of T.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rayood.detectors.calibrate import ConformalReference
from rayood.evaluation.metrics import auroc

FUSED = "fused"
RULES = ("cauchy", "fisher")


def combine(pvalues: np.ndarray, rule: str) -> np.ndarray:
    """Combine an (n, k) array of p-values in (0, 1] into n statistics, higher = more OOD."""
    if rule == "cauchy":
        return np.tan((0.5 - pvalues) * np.pi).mean(axis=1)
    if rule == "fisher":
        return -2.0 * np.log(pvalues).sum(axis=1)
    raise ValueError(f"unknown fusion rule {rule!r}; choose one of {RULES}")


class FusedScore:
    """The fused statistic of new scores, and the held-out statistic that calibrates it."""

    def __init__(self, calibration: Mapping[str, np.ndarray], names: list[str], rule: str) -> None:
        if not names:
            raise ValueError("fusion needs at least one score")
        self.names, self.rule = list(names), rule
        self.references = {name: ConformalReference(np.asarray(calibration[name])[0::2]) for name in names}
        self.calibration = self.statistic({name: np.asarray(calibration[name])[1::2] for name in names})

    def statistic(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """T for each row; NaN where any fused score is NaN (rows that were not scored). A fusion of one score
        is that score: its conformal p-value would only coarsen it to the reference's 1/(n + 1) steps, tying
        every image beyond the highest reference score (0.01 AUROC on CIFAR-10 vs MNIST)."""
        if len(self.names) == 1:
            return np.asarray(scores[self.names[0]], dtype=float)
        pvalues = np.stack([self.references[name].pvalues(scores[name]) for name in self.names], axis=1)
        pvalues = np.minimum(pvalues, 1.0 - 1.0 / (self.references[self.names[0]].sorted.size + 1.0))
        missing = np.isnan(pvalues).any(axis=1)
        fused = combine(np.where(missing[:, None], 1.0, pvalues), self.rule)
        return np.where(missing, np.nan, fused)


MIN_GAIN = 0.002  # mean AUROC a score must add to join the fused set: below it is noise on ~500 ID rows
MAX_KIND_LOSS = 0.005  # AUROC any one synthetic kind may lose when a score joins: "do no harm per kind"


def _per_kind_auroc(id_values: np.ndarray, outliers: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {str(kind): auroc(id_values, outliers[kinds == kind]) for kind in np.unique(kinds)}


def choose_fused_scores(
    calibration: Mapping[str, np.ndarray],
    outliers: Mapping[str, np.ndarray],
    kinds: np.ndarray,
    names: list[str],
    rule: str,
) -> dict:
    """Pick the scores to fuse by greedy forward selection on ID-only evidence.

    The ID side is the half of the calibration rows that serves as the per-score reference inside T (the even
    rows), split again: its even rows are the reference of the p-values, its odd rows the ID examples. The
    outliers are synthetic (``detectors/synthetic.py``). Starting from the single score with the best AUROC
    averaged over the kinds, a score joins when it raises that mean by ``MIN_GAIN`` and lowers no kind's AUROC
    by more than ``MAX_KIND_LOSS``. The second condition is what keeps ``fused`` from falling below the best
    single score: a weak score that wins one kind big (so the mean rises) and loses the others a little is
    exactly what dilutes the Cauchy mean on real OOD data, and choosing on four kinds and checking the fifth
    showed the mean-only rule losing on held-out kinds (BENCHMARKS.md). T's own reference, the odd calibration
    rows, takes no part, so ``pvalue_fused`` stays valid whatever is chosen. Returns the chosen names and the
    evidence for the manifest.
    """
    even = {name: np.asarray(calibration[name])[0::2] for name in names}
    kinds = np.asarray(kinds)

    def per_kind(chosen: list[str]) -> dict[str, float]:
        # FusedScore on the even half: its even rows are the p-values' reference, its odd rows' T the ID side
        fused = FusedScore(even, chosen, rule)
        return _per_kind_auroc(fused.calibration, fused.statistic(outliers), kinds)

    def step(added: str, aurocs: dict[str, float]) -> dict:
        return {"add": added, "mean_auroc": float(np.mean(list(aurocs.values()))), "kind_auroc": aurocs}

    single = {name: step(name, per_kind([name])) for name in names}
    chosen = [max(names, key=lambda name: single[name]["mean_auroc"])]
    steps = [single[chosen[0]]]
    while len(chosen) < len(names):
        current = steps[-1]
        trials = [step(name, per_kind([*chosen, name])) for name in names if name not in chosen]
        harmless = [
            t
            for t in trials
            if all(t["kind_auroc"][kind] >= auroc_ - MAX_KIND_LOSS for kind, auroc_ in current["kind_auroc"].items())
        ]
        best = max(harmless, key=lambda t: t["mean_auroc"], default=None)
        if best is None or best["mean_auroc"] < current["mean_auroc"] + MIN_GAIN:
            break
        chosen.append(best["add"])
        steps.append(best)
    return {
        "scores": chosen,
        "steps": steps,
        "kinds": sorted(set(kinds.tolist())),
        "single_mean_auroc": {name: single[name]["mean_auroc"] for name in names},
    }
