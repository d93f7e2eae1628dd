"""ROC curves and score histograms as PNG bytes (matplotlib's Agg backend: no display needed), for the
evaluation's plots and the audit page alike."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _png(figure: plt.Figure) -> bytes:
    sink = io.BytesIO()
    figure.savefig(sink, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return sink.getvalue()


def roc_png(score: str, id_values: np.ndarray, oods: dict[str, np.ndarray]) -> bytes:
    """ROC curves of one score, OOD as the positive class, one curve per OOD set."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    for name, values in oods.items():
        labels = np.concatenate([np.zeros(len(id_values)), np.ones(len(values))])
        fpr, tpr, _ = roc_curve(labels, np.concatenate([id_values, values]))
        axes.plot(fpr, tpr, label=name)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate (ID flagged)", ylabel="true positive rate (OOD flagged)", title=score)
    axes.legend(loc="lower right")
    return _png(figure)


def plain_label(text: object) -> str:
    """A plot label shown as written: matplotlib reads $...$ as mathtext and raises on what it cannot parse."""
    return str(text).replace("$", r"\$")


def histogram_png(score: str, groups: dict[str, np.ndarray], threshold: float | None = None) -> bytes:
    """Overlaid density histograms of one score per group (labels from data are shown as written) on shared bins
    between the pooled 0.5% and 99.5% quantiles, values beyond them in the end bins; the decision threshold if given."""
    pooled = np.concatenate([values for values in groups.values() if len(values)] or [np.zeros(0)])
    low, high = np.quantile(pooled, [0.005, 0.995]) if pooled.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 50)
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, values in groups.items():
        axes.hist(
            np.clip(values, bins[0], bins[-1]),
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.5,
            label=plain_label(name),
        )
    if threshold is not None and np.isfinite(threshold):
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    axes.set(xlabel=plain_label(f"score_{score} (higher = more OOD)"), ylabel="density", title=plain_label(score))
    axes.legend(fontsize=7)
    return _png(figure)
