"""The rotation score (RotPred in OpenOOD v1.5, after Hendrycks et al., NeurIPS 2019), oriented higher = more OOD.

For an image x with class probabilities p (the classifier's logits, mirror-averaged under ``flip_tta``) and the
rotation head's cross-entropy CE_k of x turned by k quarter turns against class k:

    rotation(x) = mean_k CE_k(x) - KL(p || uniform)

An ID image is one whose turns the backbone recognises (small CE_k) and whose class it is sure of (large KL
to the uniform distribution); OpenOOD's ID-high score is the negative. Only a backbone fitted with
``train.backbone.objective: rotation`` has the head. Unlike the post-hoc scores it costs three more backbone
passes per image (the turned copies), so it is the one detector that does not read the shared view alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rayood.detectors.registry import ROTATION
from rayood.models.backbones import ROTATIONS, quarter_turn

if TYPE_CHECKING:
    from rayood.bundle_files import BundleFiles
    from rayood.detectors.contract import ScoringView


def rotation_score(
    backbone: torch.nn.Module, images: torch.Tensor, upright_penultimate: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """The score above for a batch; ``upright_penultimate`` is the images' own pass, reused, and the three turned
    copies go through the backbone as one batch."""
    turned = torch.cat([quarter_turn(images, turn) for turn in range(1, ROTATIONS)])
    penultimate = torch.cat([upright_penultimate, backbone.features(turned).penultimate])
    targets = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    losses = F.cross_entropy(backbone.rotation(penultimate).float(), targets, reduction="none")
    log_probs = torch.log_softmax(logits.float(), dim=1)
    kl_to_uniform = (log_probs.exp() * log_probs).sum(dim=1) + math.log(logits.shape[1])
    return losses.view(ROTATIONS, len(images)).mean(dim=0) - kl_to_uniform


class RotationDetector:
    score_names = ROTATION

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return {"rotation": rotation_score(view.backbone, view.images, view.features.penultimate, view.logits)}

    def to(self, device: torch.device) -> RotationDetector:
        return self


def load(files: BundleFiles) -> RotationDetector:
    return RotationDetector()
