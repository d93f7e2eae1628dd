"""Diffusion pieces: noise schedules, the layer-wise feature denoiser (LFDN), deterministic DDIM, and
noise drawn from each image's id so that a score never depends on batch composition, worker or re-run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from rayood.config import ModelSettings, NoiseScheduleSettings


def noise_schedule(settings: NoiseScheduleSettings) -> NoiseSchedule:
    """The schedule a family's settings describe, spaced as its paper spaces it."""
    return getattr(NoiseSchedule, settings.SPACING)(settings.beta_start, settings.beta_end, settings.timesteps)


class NoiseSchedule:
    """Betas and cumulative alphas of a discrete diffusion with ``timesteps`` steps."""

    def __init__(self, betas: torch.Tensor) -> None:
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    @classmethod
    def sqrt_linear(cls, start: float, end: float, timesteps: int) -> NoiseSchedule:
        """Linear in sqrt-space (DLSR): ``betas = linspace(sqrt(start), sqrt(end), T) ** 2``."""
        return cls(torch.linspace(math.sqrt(start), math.sqrt(end), timesteps, dtype=torch.float64) ** 2)

    @classmethod
    def linear(cls, start: float, end: float, timesteps: int) -> NoiseSchedule:
        """Linear betas (DDPM): ``linspace(start, end, T)``."""
        return cls(torch.linspace(start, end, timesteps, dtype=torch.float64))

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t per row, shaped to broadcast against ``like``."""
        values = self.alphas_cumprod.to(like.device)[t].to(like.dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t from x0 and the noise; with the current estimates of both, this is also the deterministic DDIM
        (eta = 0) step to ``t``, which every sampler here takes through it."""
        ab = self.alpha_bar(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def noise_of(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that an x0 estimate implies at x_t (for x0-predicting models)."""
        ab = self.alpha_bar(t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def x0_of(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 that a noise estimate implies at x_t (for eps-predicting models)."""
        ab = self.alpha_bar(t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([angles.cos(), angles.sin()], dim=1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=1)
    return embedding


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, time_dim: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(1, width), nn.SiLU(), nn.Linear(width, width))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, width))
        self.out_layers = nn.Sequential(nn.GroupNorm(1, width), nn.SiLU(), _zero_linear(width, width))

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.time_projection(time)
        return x + self.out_layers(h)


class FeatureDenoiser(nn.Module):
    """LFDN (docs/METHODS.md section 1): an MLP-ResNet on feature vectors predicting z0 directly.

    Zero-initialised output layers make every block start as the identity and the model start at z0_hat = 0.
    """

    def __init__(self, dim: int, hidden: int, num_blocks: int, time_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.input = nn.Linear(dim, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, time_dim) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.GroupNorm(1, hidden), nn.SiLU(), _zero_linear(hidden, dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.input(z_t)
        for block in self.blocks:
            h = block(h, time)
        return self.output(h)


def build_denoiser(settings: ModelSettings, dim: int) -> FeatureDenoiser:
    """The LFDN for ``dim``-dimensional features, sized by ``model.layerwise``."""
    layerwise = settings.layerwise
    hidden = max(1, round(layerwise.hidden_multiplier * dim))
    return FeatureDenoiser(dim, hidden, layerwise.num_blocks, layerwise.time_embed_dim)


def ddim_timesteps(start: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from ``start`` down to 0 inclusive, evenly spaced."""
    if steps == 1:
        return [start]
    values = torch.linspace(start, 0, steps).round().long().tolist()
    return sorted(set(values), reverse=True)


@torch.no_grad()
def ddim_reconstruct_x0(
    predict_x0: nn.Module, z_start: torch.Tensor, start: int, steps: int, schedule: NoiseSchedule
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``z_start`` at timestep ``start`` back to the clean estimate.

    The model predicts z0; each step re-noises that estimate to the next timestep with the implied noise,
    and the result is the z0 predicted at the last (smallest) timestep: the clean variant docs/METHODS.md asks for.
    """
    z = z_start
    z0_hat = z
    times = ddim_timesteps(start, steps)
    for index, t in enumerate(times):
        t_batch = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        z0_hat = predict_x0(z, t_batch)
        if index + 1 == len(times):
            break
        eps = schedule.noise_of(z, z0_hat, t_batch)
        z = schedule.q_sample(z0_hat, torch.full_like(t_batch, times[index + 1]), eps)
    return z0_hat


def noise_for_ids(ids: Sequence[str], shape: tuple[int, ...], salt: str) -> torch.Tensor:
    """Standard normal noise of ``(len(ids), *shape)``, each row seeded by its id and ``salt``."""
    rows = []
    generator = torch.Generator()
    for image_id in ids:
        digest = hashlib.blake2b(f"{salt}\0{image_id}".encode(), digest_size=8).digest()
        generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
        rows.append(torch.randn(shape, generator=generator))
    if not rows:
        return torch.zeros((0, *shape))
    return torch.stack(rows)
