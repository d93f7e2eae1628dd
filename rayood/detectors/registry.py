"""The registry of detector families: which a bundle holds, the scores each reports (in report column order) and
the module that implements it, without importing any of them.

Config validation, the bundle manifest and the report readers (filter, audit, evaluate) need only the names, so
this module needs no torch; scoring imports each family's module when it loads a bundle
(``rayood.detectors.contract.load_detectors``). Adding a detector: one module that implements the contract
(``contract.py``), one line in ``REGISTRY``, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayood.config import DDPSettings, ModelSettings

CLASSIFIER = ("msp", "energy", "maxlogit")
ROTATION = ("rotation",)
MAHALANOBIS = ("mahalanobis",)
LAYERWISE = ("layerwise_mse", "layerwise_mfsim")
MULTISCALE = ("knn", "multiscale")


def ddp_score_names(settings: DDPSettings) -> list[str]:
    """``ddp`` (the mean over levels), then ``ddp_t<level>`` per level when there are several."""
    names = ["ddp"]
    if len(settings.levels) > 1:
        names += [f"ddp_t{level}" for level in sorted(settings.levels)]
    return names


def _always(settings: ModelSettings) -> bool:
    return True


@dataclass(frozen=True)
class DetectorSpec:
    family: str
    module: str  # defines ``load(files: BundleFiles) -> Detector``; imported only to score
    score_names: Callable[[ModelSettings], Sequence[str]]
    enabled: Callable[[ModelSettings], bool] = _always


REGISTRY: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        "classifier",
        "rayood.detectors.baselines",
        lambda settings: CLASSIFIER,
        enabled=lambda settings: settings.backbone.classifier,
    ),
    DetectorSpec(
        "rotation",
        "rayood.detectors.rotation",
        lambda settings: ROTATION,
        enabled=lambda settings: settings.backbone.rotation_head,
    ),
    DetectorSpec("mahalanobis", "rayood.detectors.mahalanobis", lambda settings: MAHALANOBIS),
    DetectorSpec(
        "layerwise",
        "rayood.detectors.layerwise",
        lambda settings: LAYERWISE,
        enabled=lambda settings: settings.layerwise.enabled,
    ),
    DetectorSpec("multiscale", "rayood.detectors.multiscale", lambda settings: MULTISCALE),
    DetectorSpec(
        "ddp",
        "rayood.detectors.ddp",
        lambda settings: ddp_score_names(settings.ddp),
        enabled=lambda settings: settings.ddp.enabled,
    ),
)


def enabled_detectors(settings: ModelSettings) -> list[DetectorSpec]:
    return [spec for spec in REGISTRY if spec.enabled(settings)]


def score_names(settings: ModelSettings) -> list[str]:
    """Every score a bundle with these settings produces, in report column order."""
    return [name for spec in enabled_detectors(settings) for name in spec.score_names(settings)]
