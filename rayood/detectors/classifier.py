"""Classifier baselines every OOD table reports, oriented so that higher = more OOD."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rayood.detectors.registry import CLASSIFIER

if TYPE_CHECKING:
    from rayood.bundle_files import BundleFiles
    from rayood.detectors.contract import ScoringView


def classifier_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSP (Hendrycks & Gimpel), energy (Liu et al., T = 1) and max-logit, each negated."""
    logits = logits.float()
    return {
        "msp": -torch.softmax(logits, dim=1).max(dim=1).values,
        "energy": -torch.logsumexp(logits, dim=1),
        "maxlogit": -logits.max(dim=1).values,
    }


class ClassifierDetector:
    """Post-hoc scores of the backbone's own logits: nothing fitted beyond the backbone."""

    score_names = CLASSIFIER

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return classifier_scores(view.logits)

    def to(self, device: torch.device) -> ClassifierDetector:
        return self


def load(files: BundleFiles) -> ClassifierDetector:
    return ClassifierDetector()
