"""DLSR (Yang et al., NeurIPS 2024): layer-wise semantic reconstruction of backbone features.

The pooled map of every tapped stage is z-scored per sample across its own channels and the blocks are
concatenated into z0. A feature denoiser trained on ID z0 reconstructs it from a slightly noised copy;
OOD features reconstruct worse. Scores (higher = more OOD):
- ``layerwise_mse``: sum over dimensions of (z0 - z0_hat)^2;
- ``layerwise_mfsim``: minus the mean over *all* stages of the cosine between z0 and z0_hat blocks
  (the paper's definition; its code skips the first stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rayood.bundle_files import BundleFiles, load_state_into
from rayood.config import LayerwiseSettings
from rayood.detectors.contract import ScoringView
from rayood.detectors.registry import LAYERWISE
from rayood.models.diffusion import build_denoiser, ddim_reconstruct_x0, noise_for_ids, noise_schedule

NORM_EPS = 1e-5
NOISE_SALT = "layerwise"


def layer_features(stage_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global-average-pool each stage map, z-score each block per sample, concatenate: (N, sum(C_i))."""
    blocks = []
    for feature_map in stage_maps:
        pooled = feature_map.float().mean(dim=(2, 3))
        mean = pooled.mean(dim=1, keepdim=True)
        std = pooled.std(dim=1, keepdim=True)
        blocks.append((pooled - mean) / (std + NORM_EPS))
    return torch.cat(blocks, dim=1)


def mse_score(z0: torch.Tensor, z0_hat: torch.Tensor) -> torch.Tensor:
    return (z0 - z0_hat).pow(2).sum(dim=1)


def mfsim_score(z0: torch.Tensor, z0_hat: torch.Tensor, block_dims: Sequence[int]) -> torch.Tensor:
    similarities = [
        F.cosine_similarity(a, b, dim=1)
        for a, b in zip(z0.split(list(block_dims), 1), z0_hat.split(list(block_dims), 1))
    ]
    return -torch.stack(similarities, dim=1).mean(dim=1)


class LayerwiseDetector:
    """Test-time DLSR: noise z0 to ``noise_level`` with per-id noise, DDIM back, score the reconstruction."""

    score_names = LAYERWISE

    def __init__(self, denoiser: nn.Module, settings: LayerwiseSettings, block_dims: Sequence[int]) -> None:
        self.denoiser = denoiser.eval()
        self.settings = settings
        self.block_dims = list(block_dims)
        self.schedule = noise_schedule(settings)

    @torch.no_grad()
    def reconstruct(self, z0: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        level = self.settings.noise_level
        noise = noise_for_ids(ids, (z0.shape[1],), NOISE_SALT).to(z0.device, z0.dtype)
        t = torch.full((z0.shape[0],), level, device=z0.device, dtype=torch.long)
        z_t = self.schedule.q_sample(z0, t, noise)
        return ddim_reconstruct_x0(self.denoiser, z_t, level, self.settings.ddim_steps, self.schedule)

    def to(self, device: torch.device) -> LayerwiseDetector:
        self.denoiser.to(device)
        return self

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return self.score_stages(view.features.stage_maps, view.ids)

    @torch.no_grad()
    def score_stages(self, stage_maps: Sequence[torch.Tensor], ids: Sequence[str]) -> dict[str, torch.Tensor]:
        z0 = layer_features(stage_maps)
        z0_hat = self.reconstruct(z0, ids)
        return {
            "layerwise_mse": mse_score(z0, z0_hat),
            "layerwise_mfsim": mfsim_score(z0, z0_hat, self.block_dims),
        }


def load(files: BundleFiles) -> LayerwiseDetector:
    stage_dims = list(files.manifest.stage_dims)
    denoiser = build_denoiser(files.settings, sum(stage_dims))
    load_state_into(denoiser, files.first_file(), "layerwise denoiser")
    return LayerwiseDetector(denoiser, files.settings.layerwise, stage_dims)
