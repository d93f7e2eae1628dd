"""The detector contract, in the spirit of scikit-learn estimators and pytorch-ood's ``Detector``.

A detector holds its hyper-parameters (from ``ModelSettings``) and what fitting learned (weights, banks,
statistics), reads them from its own bundle file(s) in a module-level ``load(files)``, and scores one
``ScoringView``: the batch's images and ids with one backbone pass (and its mirror) that every detector shares,
so adding a detector never adds a backbone pass. ``registry.py`` declares the families; a bundle's manifest records
the ones it holds, and the bundle loader, the scorer, calibration and fusion iterate over those.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from rayood.bundle import BundleError
from rayood.bundle_files import BundleFiles
from rayood.config import ModelSettings
from rayood.manifest import Manifest
from rayood.models.backbones import FeatureBackbone, Features
from rayood.storage import Location


@dataclass(frozen=True)
class ScoringView:
    """One batch as every detector sees it."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1] at native size, on the scoring device
    ids: Sequence[
        str
    ]  # stable row ids: detectors that draw noise draw it per id, so a row scores the same in any batch
    backbone: FeatureBackbone
    features: Features
    mirror: Features | None  # the images flipped left-right, when a setting reads them (flip_tta, flip_average)
    logits: torch.Tensor  # what the classifier scores and the predicted class use

    @classmethod
    def of(
        cls, backbone: FeatureBackbone, images: torch.Tensor, ids: Sequence[str], settings: ModelSettings
    ) -> ScoringView:
        """One backbone pass, and one more on the mirror images when ``flip_tta`` or ``flip_average`` reads it;
        with ``flip_tta`` the logits are the mean of the image's and its mirror's (the fast CIFAR-10 recipes'
        test-time augmentation)."""
        features = backbone.features(images)
        wants_mirror = settings.backbone.flip_tta or settings.multiscale.flip_average
        mirror = backbone.features(images.flip(3)) if wants_mirror else None
        logits = (features.logits + mirror.logits) / 2 if settings.backbone.flip_tta else features.logits
        return cls(images, ids, backbone, features, mirror, logits)


class Detector(Protocol):
    score_names: Sequence[str]

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        """One tensor (N,) per score name, higher = more OOD."""
        ...

    def to(self, device: torch.device) -> Detector:
        """Move fitted state to the scoring device once, when an actor starts; returns self."""
        ...


class StreamingFit(Protocol):
    """A family fitted by the fit's feature pass (``rayood.train.references``): constructed with (model settings,
    seed, number of classes, a scratch directory on the driver or None in an actor)."""

    def rows(
        self, features: Features, mirror: Features | None, ids: list[str], classes: np.ndarray
    ) -> dict[str, np.ndarray]:
        """In an actor: one batch's per-row arrays (``classes``: each row's class index)."""
        ...

    def partial_fit(self, rows: dict[str, np.ndarray]) -> None:
        """On the driver: take one batch's arrays."""
        ...

    def finish(self, bundle: Location) -> dict:
        """Write the family's bundle files; returns the facts the manifest records for it."""
        ...


def load_detectors(location: Location, manifest: Manifest) -> dict[str, Detector]:
    """Every detector family the bundle holds, by family, in report column order, each loaded by the module its
    record names (a bundle fitted with a family the registry of this code lacks still loads where it is installed)."""
    detectors = {}
    for record in manifest.detectors:
        try:
            module = importlib.import_module(record.module)
        except ImportError as error:
            raise BundleError(
                f"bundle {location.uri}: the {record.family} detector needs {record.module}: {error}"
            ) from None
        detectors[record.family] = module.load(BundleFiles(location, manifest, record.family))
    return detectors
