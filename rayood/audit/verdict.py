"""One top-line answer to "did the target drift from the reference?", with multiplicity control.

An audit runs many tests (KS and flag rate per score, MMD on embeddings, and all of them again per group), so
at least one p < 0.05 is expected even without drift: two halves of the CIFAR-10 test set gave p = 0.02 and
0.03 among about 28 tests. The verdict is Holm's step-down over every target-against-reference test, which
controls the family-wise error at ``level`` under any dependence between the tests (they share rows, so they
are dependent). The reference's own flag-rate checks against the bundle's calibration are not part of it:
they test the reference, not the difference between the two corpora.
"""

from __future__ import annotations

import numpy as np


def holm_adjusted(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values: reject test i at level a iff its adjusted p-value is <= a."""
    names = sorted(pvalues, key=pvalues.get)
    m = len(names)
    adjusted, running = {}, 0.0
    for rank, name in enumerate(names):
        running = max(running, min(1.0, (m - rank) * pvalues[name]))
        adjusted[name] = running
    return adjusted


def _tests_of(comparison: dict, prefix: str = "") -> dict[str, float]:
    tests = {}
    for name, score in comparison["scores"].items():
        for kind in ("ks", "flagged"):
            if "pvalue" in score[kind] and np.isfinite(score[kind]["pvalue"]):
                tests[f"{prefix}{kind} score_{name}"] = float(score[kind]["pvalue"])
    if "pvalue" in comparison["mmd"]:
        tests[f"{prefix}mmd embeddings"] = float(comparison["mmd"]["pvalue"])
    return tests


def drift_verdict(result: dict, level: float = 0.05) -> dict:
    """``drift`` (bool) at ``level`` over every test of ``result`` (an audit), and which tests carry it."""
    tests = _tests_of(result)
    for group, comparison in result.get("groups", {}).items():
        tests.update(_tests_of(comparison, f"{result['by']}={group}: "))
    adjusted = holm_adjusted(tests)
    rejected = sorted((name for name, p in adjusted.items() if p <= level), key=adjusted.get)
    return {
        "drift": bool(rejected),
        "level": level,
        "method": "Holm over every target-against-reference test",
        "tests": len(tests),
        "rejected": {name: adjusted[name] for name in rejected},
        "smallest_adjusted_pvalue": min(adjusted.values()) if adjusted else None,
    }


def verdict_line(verdict: dict) -> str:
    if verdict["tests"] == 0:
        return "drift: no test could be run"
    if verdict["drift"]:
        carried = ", ".join(list(verdict["rejected"])[:4])
        return (
            f"drift: YES at level {verdict['level']} (Holm over {verdict['tests']} tests; {len(verdict['rejected'])} "
            f"reject: {carried}{', ...' if len(verdict['rejected']) > 4 else ''})"
        )
    return (
        f"drift: no at level {verdict['level']} (Holm over {verdict['tests']} tests; smallest adjusted p "
        f"{verdict['smallest_adjusted_pvalue']:.3g})"
    )
