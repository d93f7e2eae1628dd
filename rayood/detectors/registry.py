"""The scores each detector family reports, in report column order, without importing the detectors.

Config validation, the bundle manifest and the report readers (filter, audit, evaluate) need only the names;
keeping them here lets those run without torch and breaks the config -> bundle -> detectors -> config circle.
Each detector class takes its ``score_names`` from this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayood.config import DDPSettings, ModelSettings

CLASSIFIER = ("msp", "energy", "maxlogit")
MAHALANOBIS = ("mahalanobis",)
LAYERWISE = ("layerwise_mse", "layerwise_mfsim")
MULTISCALE = ("knn", "multiscale")


def ddp_score_names(settings: DDPSettings) -> list[str]:
    """``ddp`` (the mean over levels), then ``ddp_t<level>`` per level when there are several."""
    names = ["ddp"]
    if len(settings.levels) > 1:
        names += [f"ddp_t{level}" for level in sorted(settings.levels)]
    return names


def score_names(settings: ModelSettings) -> list[str]:
    """Every score a bundle with these settings produces, in report column order."""
    names = [*CLASSIFIER, *MAHALANOBIS, *LAYERWISE, *MULTISCALE]
    return names + (ddp_score_names(settings.ddp) if settings.ddp.enabled else [])
