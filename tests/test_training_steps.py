"""The training steps in plain torch (``train/steps.py``), without a cluster: each stage's step fits a fixed
batch, and a seeded generator makes it repeat exactly (what resume and the fit-determinism test rely on)."""

from __future__ import annotations

import torch

from rayood.config import ModelSettings
from rayood.models.diffusion import build_denoiser, noise_schedule
from rayood.models.unet import build_unet
from rayood.train.steps import ddpm_step, denoiser_step
from tests.conftest import TINY_MODEL, WITH_DDP

SETTINGS = ModelSettings.model_validate({**TINY_MODEL, **WITH_DDP})
STEPS = 40


def _denoiser_losses(seed: int) -> list[float]:
    torch.manual_seed(0)
    denoiser = build_denoiser(SETTINGS, 24)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=0.005)
    z0 = torch.randn(32, 24, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(seed)
    schedule = noise_schedule(SETTINGS.layerwise)
    return [
        denoiser_step(denoiser, schedule, optimizer, z0, SETTINGS.layerwise.timesteps, generator) for _ in range(STEPS)
    ]


def _ddpm_losses(seed: int) -> list[float]:
    torch.manual_seed(0)
    unet = build_unet(SETTINGS, 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=0.005)
    x0 = (torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1).expand(
        8, 3, 32, 32
    )  # flat colours
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # 3 is the null class of 3 classes
    generator = torch.Generator().manual_seed(seed)
    return [
        ddpm_step(unet, noise_schedule(SETTINGS.ddp), optimizer, x0, labels, 80, 1.0, generator) for _ in range(STEPS)
    ]


def test_the_denoiser_step_fits_a_batch_and_repeats_with_its_generator():
    losses = _denoiser_losses(seed=7)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    assert _denoiser_losses(seed=7) == losses and _denoiser_losses(seed=8) != losses


def test_the_ddpm_step_fits_a_batch_and_repeats_with_its_generator():
    losses = _ddpm_losses(seed=7)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    assert _ddpm_losses(seed=7) == losses and _ddpm_losses(seed=8) != losses
