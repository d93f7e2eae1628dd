"""Backbones with feature taps: one forward pass gives logits and every stage's feature map.

Two families behind one interface (``stem`` -> ``stages`` -> pooled -> ``fc``):
- ``cifar_resnet``: a narrow CIFAR-style ResNet (3x3 stem, no max-pool) whose widths and depths come
  from config, small enough to fit in minutes on a laptop CPU;
- ``resnet18`` / ``resnet50``: torchvision's models (``weights=None``; start from local weights with
  ``init_weights``), optionally with the CIFAR stem, for GPU clusters.

Inputs are uint8-range pixels scaled to [0, 1] at the ID native size; the model itself upsamples to its
input size and normalises, so the data path carries compact uint8 and no caller can forget a step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50

from rayood.config import BackboneSettings, PreprocessSettings

log = logging.getLogger(__name__)


@dataclass
class Features:
    """What one backbone pass yields: classifier logits and each tapped stage's map (stem first)."""

    logits: torch.Tensor
    stage_maps: list[torch.Tensor]

    @property
    def penultimate(self) -> torch.Tensor:
        return self.stage_maps[-1].mean(dim=(2, 3))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cifar_resnet(settings: BackboneSettings) -> tuple[nn.Module, nn.ModuleList, int]:
    widths, blocks = settings.widths, settings.blocks
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
    stages = nn.ModuleList()
    in_channels = widths[0]
    for index, (width, count) in enumerate(zip(widths, blocks)):
        stride = 1 if index == 0 else 2
        layers = [_BasicBlock(in_channels if i == 0 else width, width, stride if i == 0 else 1) for i in range(count)]
        stages.append(nn.Sequential(*layers))
        in_channels = width
    return stem, stages, in_channels


def _torchvision_resnet(settings: BackboneSettings) -> tuple[nn.Module, nn.ModuleList, int]:
    net = (resnet18 if settings.arch == "resnet18" else resnet50)(weights=None)
    if settings.cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
    return stem, stages, net.fc.in_features


class FeatureBackbone(nn.Module):
    """Preprocessing + stem + stages + linear classifier, with every stage's map exposed."""

    def __init__(self, settings: BackboneSettings, preprocess: PreprocessSettings, num_classes: int) -> None:
        super().__init__()
        build = _cifar_resnet if settings.arch == "cifar_resnet" else _torchvision_resnet
        self.stem, self.stages, feature_dim = build(settings)
        self.fc = nn.Linear(feature_dim, num_classes)
        self.input_size = preprocess.input_size
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    def stage_dims(self) -> list[int]:
        """Channels of each tapped map (stem first), found by a dry run so every architecture agrees."""
        probe = torch.zeros(1, 3, 8, 8, device=self.mean.device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dims = [m.shape[1] for m in self._maps(probe)]
        self.train(was_training)
        return dims

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] NCHW at native size -> normalised input at ``input_size`` (bilinear, as for ID data)."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> Features:
        maps = self._maps(self.prepare(images))
        logits = self.fc(maps[-1].mean(dim=(2, 3)))
        return Features(logits=logits, stage_maps=maps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).logits


_TORCHVISION_PREFIXES = {"conv1.": "stem.0.", "bn1.": "stem.1.", **{f"layer{i}.": f"stages.{i - 1}." for i in range(1, 5)}}


def load_matching(model: FeatureBackbone, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the tensors of ``state`` that fit ``model``; returns the names of the model's tensors left as they were.

    Accepts a rayood backbone.pt or a torchvision ResNet state_dict (``conv1``/``layerN`` names). Tensors of
    another shape (an ImageNet classifier or 7x7 stem on a CIFAR-stem model) are skipped and listed.
    Raises when nothing at all matches, which means the weights are for another architecture.
    """
    renamed = {}
    for name, tensor in state.items():
        for old, new in _TORCHVISION_PREFIXES.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    own = model.state_dict()
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError("init_weights match no tensor of this backbone: wrong architecture?")
    model.load_state_dict(usable, strict=False)
    left = sorted(set(own) - set(usable))
    if left:
        log.warning("init_weights: %d tensors not loaded (kept initial values): %s", len(left), left[:8])
    return left


def build_backbone(settings: BackboneSettings, preprocess: PreprocessSettings, num_classes: int) -> FeatureBackbone:
    return FeatureBackbone(settings, preprocess, num_classes)


def uint8_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)
