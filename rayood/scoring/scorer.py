"""One backbone pass per image, every detector fed from the same view of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from rayood.bundle_models import Bundle
from rayood.detectors.contract import ScoringView
from rayood.models.backbones import uint8_to_unit


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
        for detector in bundle.detectors.values():
            detector.to(device)

    @torch.no_grad()
    def score(self, pixels: np.ndarray, ids: Sequence[str]) -> ScoredBatch:
        images = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True))
        view = ScoringView.of(self.backbone, images, ids, self.bundle.settings)
        scores: dict[str, torch.Tensor] = {}
        for detector in self.bundle.detectors.values():
            scores.update(detector.score(view))
        return ScoredBatch(
            {name: scores[name].double().cpu().numpy() for name in self.bundle.score_names},
            view.features.penultimate.float().cpu().numpy(),
            view.logits.argmax(dim=1).cpu().numpy(),
        )
