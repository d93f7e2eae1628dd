"""One backbone pass per image, every detector fed from the same features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from rayood.bundle_models import Bundle
from rayood.detectors.baselines import classifier_scores
from rayood.config import ModelSettings
from rayood.detectors.multiscale import search_map
from rayood.models.backbones import FeatureBackbone, Features, uint8_to_unit


def pick_device(preference: str) -> torch.device:
    """``auto`` takes the GPU Ray assigned to this process when there is one."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("screen.device is 'cuda' but no CUDA device is visible to this actor")
        return torch.device("cuda")
    return torch.device("cpu")


class ScoredBatch(NamedTuple):
    scores: dict[str, np.ndarray]  # float64, one array per detector score
    embedding: np.ndarray  # float32 (n, d) penultimate features: free, the detectors computed them anyway
    predicted: np.ndarray  # int64 (n,) the classifier's ID class index


class Scorer:
    """Scores uint8 pixels with every detector of a bundle; returns one float64 array per score name."""

    def __init__(self, bundle: Bundle, device: torch.device) -> None:
        self.bundle = bundle
        self.device = device
        self.backbone = bundle.backbone.to(device).eval()
        bundle.layerwise.denoiser.to(device)
        bundle.multiscale.to(device)
        bundle.mahalanobis.to(device)
        if bundle.ddp is not None:
            bundle.ddp.unet.to(device)

    @torch.no_grad()
    def score(self, pixels: np.ndarray, ids: Sequence[str]) -> ScoredBatch:
        images = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True))
        features = self.backbone.features(images)
        mirror = mirror_features(self.backbone, images, self.bundle.settings)
        logits = classifier_logits(features, mirror if self.bundle.settings.backbone.flip_tta else None)
        scores = classifier_scores(logits)
        scores.update(self.bundle.mahalanobis.score(features.penultimate))
        scores.update(self.bundle.layerwise.score(features.stage_maps, ids))
        average = mirror if self.bundle.settings.multiscale.flip_average else None
        scores.update(self.bundle.multiscale.score(search_map(features, average)))
        if self.bundle.ddp is not None:  # the only other pass: the discriminator on reconstructions
            scores.update(self.bundle.ddp.score(images, features, ids, self.backbone))
        return ScoredBatch(
            {name: scores[name].double().cpu().numpy() for name in self.bundle.score_names},
            features.penultimate.float().cpu().numpy(),
            logits.argmax(dim=1).cpu().numpy(),
        )


def mirror_features(backbone: FeatureBackbone, images: torch.Tensor, settings: ModelSettings) -> Features | None:
    """The features of the images flipped left-right, when a setting reads them (``flip_tta``, ``flip_average``):
    one backbone pass serves both."""
    if settings.backbone.flip_tta or settings.multiscale.flip_average:
        return backbone.features(images.flip(3))
    return None


def classifier_logits(features: Features, mirror: Features | None) -> torch.Tensor:
    """The logits the classifier scores and the predicted class use: with ``flip_tta`` (``mirror`` given), the mean
    of the image's and its mirror's (the fast CIFAR-10 recipes' test-time augmentation)."""
    return features.logits if mirror is None else (features.logits + mirror.logits) / 2
