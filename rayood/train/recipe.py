"""The backbone's optimisation recipe: SGD parameter groups, the per-step learning-rate schedule and lookahead.

``warmup_linear`` and ``lookahead`` follow the fast CIFAR-10 recipes (Jordan 2024, airbench94's published
hyper-parameters): the learning rate rises linearly from 0.2x to its peak over the first 23% of the steps
and falls linearly to 0.07x; every 5 steps the weights move to an exponential average of themselves whose
weight grows as 0.95^5 (step/total)^3, and the last step takes the average. BatchNorm parameters may get a
larger learning rate (airbench: 64x) with the weight decay scaled down by the same factor, so that their
per-step decay is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rayood.config import BackboneOptimSettings

WARMUP_START, WARMUP_END = 0.2, 0.07
LOOKAHEAD_EVERY = 5
LOOKAHEAD_BASE = 0.95**LOOKAHEAD_EVERY


def lr_factor(step: int, total: int, optim: BackboneOptimSettings) -> float:
    """The multiplier of the peak learning rate at ``step`` of ``total``."""
    progress = step / max(1, total)
    if optim.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    peak = optim.warmup_fraction
    if progress < peak:
        return WARMUP_START + (1 - WARMUP_START) * progress / peak
    return 1 + (WARMUP_END - 1) * (progress - peak) / max(1e-9, 1 - peak)


def build_optimizer(
    model: nn.Module, optim: BackboneOptimSettings, whitening_bias: nn.Parameter | None
) -> torch.optim.SGD:
    """Nesterov SGD; groups named ``norm`` (BatchNorm), ``whitening`` (frozen after a few epochs) and ``other``."""
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    }
    whitening_ids = {id(whitening_bias)} if whitening_bias is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    norm = [p for p in trainable if id(p) in norm_ids]
    whitening = [p for p in trainable if id(p) in whitening_ids]
    other = [p for p in trainable if id(p) not in norm_ids | whitening_ids]
    scale = optim.norm_lr_scale
    groups = [
        {"name": "norm", "params": norm, "lr": optim.lr * scale, "weight_decay": optim.weight_decay / scale},
        {"name": "whitening", "params": whitening, "lr": optim.lr, "weight_decay": optim.weight_decay},
        {"name": "other", "params": other, "lr": optim.lr, "weight_decay": optim.weight_decay},
    ]
    for group in groups:
        group["peak_lr"] = group["lr"]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=optim.lr, momentum=optim.momentum, nesterov=True)


def set_learning_rates(
    optimizer: torch.optim.Optimizer, factor: float, epoch: int, optim: BackboneOptimSettings
) -> None:
    for group in optimizer.param_groups:
        frozen = group["name"] == "whitening" and epoch >= optim.whitening_bias_epochs
        group["lr"] = 0.0 if frozen else group["peak_lr"] * factor


class Lookahead:
    """An exponential average of the weights (and BatchNorm statistics) that the weights are reset to."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for name, value in model.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, 1 - decay)
                value.copy_(self.average[name])

    def step(self, model: nn.Module, step: int, total: int) -> None:
        """Called after every optimiser step; the last one takes the average outright."""
        if step >= total:
            self.update(model, 1.0)
        elif step % LOOKAHEAD_EVERY == 0:
            self.update(model, LOOKAHEAD_BASE * (step / total) ** 3)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.average[name].copy_(value)
