"""A class-conditional DDPM U-Net (eps-prediction) for DDP (DiffOOD, docs/METHODS.md section 2).

The shape of the paper's CIFAR U-Net (base channels x multipliers, residual blocks per level, self-attention
at chosen resolutions, dropout) with every size from config, so one class serves the GPU model and a tiny
CPU one. A label embedding with one extra *null* class is added to the time embedding: training replaces
the label by the null class some of the time, which makes classifier-free guidance possible at test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayood.config import ModelSettings
from rayood.models.diffusion import timestep_embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            _norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.embed = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.embed(embedding)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class _Attention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(attended.transpose(-1, -2).reshape(n, c, h, w))


class ConditionalUNet(nn.Module):
    def __init__(
        self,
        *,
        image_size: int,
        num_classes: int,
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        dropout: float,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.base_channels = base_channels
        embed_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.label_embedding = nn.Embedding(num_classes + 1, embed_dim)  # the last index is the null label
        self.conv_in = nn.Conv2d(3, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base_channels]
        channels, resolution = base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([_ResBlock(channels, base_channels * mult, embed_dim, dropout)])
                channels = base_channels * mult
                if resolution in attention_resolutions:
                    block.append(_Attention(channels))
                self.down.append(block)
                skips.append(channels)
            if level + 1 < len(channel_mults):
                self.down.append(nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1)]))
                skips.append(channels)
                resolution //= 2
        self.middle = nn.ModuleList(
            [
                _ResBlock(channels, channels, embed_dim, dropout),
                _Attention(channels),
                _ResBlock(channels, channels, embed_dim, dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for index in range(num_res_blocks + 1):
                block = nn.ModuleList([_ResBlock(channels + skips.pop(), base_channels * mult, embed_dim, dropout)])
                channels = base_channels * mult
                if resolution in attention_resolutions:
                    block.append(_Attention(channels))
                if level > 0 and index == num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(channels, channels, 3, padding=1))
                    resolution *= 2
                self.up.append(block)
        self.out = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @staticmethod
    def _run_block(block: nn.ModuleList, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, embedding) if isinstance(layer, _ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted noise for images ``x`` in [-1, 1] at timesteps ``t`` with class ``labels`` (null allowed)."""
        embedding = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.label_embedding(labels)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = self._run_block(block, h, embedding)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding) if isinstance(layer, _ResBlock) else layer(h)
        for block in self.up:
            h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), embedding)
        return self.out(h)


def build_unet(settings: ModelSettings, num_classes: int) -> ConditionalUNet:
    """The DDP U-Net sized by ``model.ddp`` at the ID native resolution."""
    ddp = settings.ddp
    return ConditionalUNet(
        image_size=settings.preprocess.native_size,
        num_classes=num_classes,
        base_channels=ddp.base_channels,
        channel_mults=ddp.channel_mults,
        num_res_blocks=ddp.num_res_blocks,
        attention_resolutions=ddp.attention_resolutions,
        dropout=ddp.dropout,
    )
