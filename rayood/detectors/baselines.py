"""Classifier baselines every OOD table reports, oriented so that higher = more OOD."""

from __future__ import annotations

import torch

def classifier_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSP (Hendrycks & Gimpel), energy (Liu et al., T = 1) and max-logit, each negated."""
    logits = logits.float()
    return {
        "msp": -torch.softmax(logits, dim=1).max(dim=1).values,
        "energy": -torch.logsumexp(logits, dim=1),
        "maxlogit": -logits.max(dim=1).values,
    }
