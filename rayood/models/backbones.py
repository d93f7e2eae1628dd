"""Backbones with feature taps: one forward pass gives logits and every stage's feature map.

Three families behind one interface (``stem`` -> ``stages`` -> pooled -> ``fc``):
- ``cifar_resnet``: a narrow CIFAR-style ResNet (3x3 stem, no max-pool) whose widths and depths come
  from config, small enough to fit in minutes on a laptop CPU;
- ``cifar_fast``: the three-block convolutional net of the fast CIFAR-10 training recipes (Keller Jordan's
  airbench, 2024: 94% test accuracy in about 10 epochs with ~2M parameters), built here from its published
  description: a frozen 2x2 patch-whitening stem fitted to the ID data, then three groups of conv -> max-pool
  -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, BatchNorm scales frozen at 1, logits scaled by 1/9.
  ``classifier_pool: max`` is airbench's global max-pool before the classifier; ``avg`` is the default, as in
  ResNets (either way the penultimate vector is also KNN's and MODE's global vector);
- ``resnet18`` / ``resnet50``: torchvision's models (``weights=None``; start from local weights with
  ``init_weights``), optionally with the CIFAR stem, for GPU clusters;
- any other torchvision classification model by name (``torchvision.models.list_models``): its feature maps are
  tapped with ``torchvision.models.feature_extraction`` (``encoders.py``), usually as a frozen ImageNet encoder.

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

from rayood.config import RAYOOD_ARCHS, BackboneSettings, PreprocessSettings
from rayood.models.encoders import TorchvisionEncoder

log = logging.getLogger(__name__)


@dataclass
class Features:
    """What one backbone pass yields: classifier logits, each tapped stage's map (stem first; DLSR's layers),
    the last map (``last_map``: KNN's and MODE's regions) and its pooled vector the classifier reads
    (``penultimate``). The trained families tap the last map as their last stage; a torchvision encoder's last
    map may be a head the taps leave out (``encoders.py``)."""

    logits: torch.Tensor
    stage_maps: list[torch.Tensor]
    last_map: torch.Tensor
    penultimate: torch.Tensor


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


FAST_WHITEN_PATCH = 2
FAST_BN_MOMENTUM = 0.4  # airbench's 0.6 in its own convention (weight of the old running value)
FAST_BN_EPS = 1e-12
FAST_LOGIT_SCALE = 1 / 9


class _FastConv(nn.Conv2d):
    """3x3 'same' convolution whose first in_channels filters start as identities (airbench's partial Dirac init)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(in_channels, out_channels)])


def _fast_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=FAST_BN_EPS, momentum=FAST_BN_MOMENTUM)
    norm.weight.requires_grad_(False)  # scale fixed at 1: only the shift is learned
    return norm


def _fast_group(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        _FastConv(in_channels, out_channels),
        nn.MaxPool2d(2),
        _fast_norm(out_channels),
        nn.GELU(),
        _FastConv(out_channels, out_channels),
        _fast_norm(out_channels),
        nn.GELU(),
    )


class PatchWhitening(nn.Conv2d):
    """A 2x2 convolution whose frozen filters whiten image patches: the covariance eigenvectors of ID patches
    divided by the square root of their eigenvalues, and their negatives (so 2 x 12 filters for RGB)."""

    def __init__(self) -> None:
        super().__init__(3, 2 * 3 * FAST_WHITEN_PATCH**2, FAST_WHITEN_PATCH, padding=0, bias=True)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, normalised: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the filters from normalised ID images (N, 3, H, W); a few thousand are plenty."""
        patches = normalised.float().unfold(2, FAST_WHITEN_PATCH, 1).unfold(3, FAST_WHITEN_PATCH, 1)
        patches = patches.transpose(1, 3).reshape(-1, 3 * FAST_WHITEN_PATCH**2)
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
        filters = filters.reshape(-1, 3, FAST_WHITEN_PATCH, FAST_WHITEN_PATCH)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))


def _cifar_fast(settings: BackboneSettings) -> tuple[nn.Module, nn.ModuleList, int]:
    widths = settings.widths
    stem = nn.Sequential(PatchWhitening(), nn.GELU())
    stages = nn.ModuleList()
    in_channels = stem[0].out_channels
    for width in widths:
        stages.append(_fast_group(in_channels, width))
        in_channels = width
    return stem, stages, in_channels


class ScaledLinear(nn.Linear):
    """A bias-free linear classifier whose logits are multiplied by a constant (airbench: 1/9)."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


_BUILDERS = {"cifar_resnet": _cifar_resnet, "cifar_fast": _cifar_fast}


def linear_head(settings: BackboneSettings, feature_dim: int, classes: int) -> nn.Linear:
    """A linear head on the penultimate vector: bias-free with airbench's 1/9 logit scale for ``cifar_fast``."""
    if settings.arch == "cifar_fast":
        return ScaledLinear(feature_dim, classes, FAST_LOGIT_SCALE)
    return nn.Linear(feature_dim, classes)


def _torchvision_resnet(settings: BackboneSettings) -> tuple[nn.Module, nn.ModuleList, int]:
    net = (resnet18 if settings.arch == "resnet18" else resnet50)(weights=None)
    if settings.cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
    return stem, stages, net.fc.in_features


ROTATIONS = 4  # quarter turns 0, 90, 180, 270 degrees: the rotation head's classes


class FeatureBackbone(nn.Module):
    """Preprocessing + stem + stages + linear classifier, with every stage's map exposed; with
    ``rotation_head`` also a linear classifier of the image's quarter turn on the penultimate vector."""

    def __init__(self, settings: BackboneSettings, preprocess: PreprocessSettings, num_classes: int) -> None:
        super().__init__()
        self.encoder: TorchvisionEncoder | None = None
        if settings.arch in RAYOOD_ARCHS:
            self.stem, self.stages, feature_dim = _BUILDERS.get(settings.arch, _torchvision_resnet)(settings)
        else:
            self.encoder = TorchvisionEncoder(settings.arch, settings.taps, preprocess.input_size)
            feature_dim = self.encoder.last_dim
        self.fc = linear_head(settings, feature_dim, num_classes)
        # scaled like the classifier: cifar_fast's recipe (lr 1.5) diverged with a plain linear rotation head
        self.rotation = linear_head(settings, feature_dim, ROTATIONS) if settings.rotation_head else None
        self.input_size = preprocess.input_size
        self.classifier_pool = settings.classifier_pool
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    @property
    def whitening(self) -> PatchWhitening | None:
        """The data-fitted first layer of ``cifar_fast``; None for the other architectures."""
        if self.encoder is not None:
            return None
        first = self.stem[0]
        return first if isinstance(first, PatchWhitening) else None

    def fit_whitening(self, images: torch.Tensor) -> None:
        """Fit the whitening stem (if any) to ID images in [0, 1] at native size, before training."""
        if self.whitening is not None:
            self.whitening.fit(self.prepare(images))

    def stage_dims(self) -> list[int]:
        """Channels of each tapped map (stem first), found by a dry run so every architecture agrees."""
        probe = torch.zeros(1, 3, 32, 32, device=self.mean.device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dims = [m.shape[1] for m in self._maps(probe)[0]]
        self.train(was_training)
        return dims

    def _maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The tapped maps and the last map."""
        if self.encoder is not None:
            return self.encoder(x)
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps, maps[-1]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] NCHW at native size -> normalised input at ``input_size`` (bilinear, as for ID data)."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> Features:
        maps, last = self._maps(self.prepare(images))
        pooled = last.amax(dim=(2, 3)) if self.classifier_pool == "max" else last.mean(dim=(2, 3))
        return Features(logits=self.fc(pooled), stage_maps=maps, last_map=last, penultimate=pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).logits


_TORCHVISION_PREFIXES = {
    "conv1.": "stem.0.",
    "bn1.": "stem.1.",
    **{f"layer{i}.": f"stages.{i - 1}." for i in range(1, 5)},
}


def load_matching(model: FeatureBackbone, state: dict[str, torch.Tensor], warn: bool = True) -> list[str]:
    """Load the tensors of ``state`` that fit ``model``; returns the names of the model's tensors left as they were.

    Accepts a rayood backbone.pt or a torchvision ResNet state_dict (``conv1``/``layerN`` names). Tensors of
    another shape (an ImageNet classifier or 7x7 stem on a CIFAR-stem model) are skipped and listed.
    Raises when nothing at all matches, which means the weights are for another architecture; logs the tensors
    left unless ``warn`` is false. A torchvision encoder (``encoders.py``) takes its model's state_dict and must
    find every one of its tensors there.
    """
    if model.encoder is not None:
        return _load_encoder(model, state)
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
    if left and warn:
        log.warning("init_weights: %d tensors not loaded (kept initial values): %s", len(left), left[:8])
    return left


def _load_encoder(model: FeatureBackbone, state: dict[str, torch.Tensor]) -> list[str]:
    """A torchvision model's state_dict (or a rayood backbone.pt of this encoder) into the encoder, strictly:
    weights for another architecture raise, naming what does not fit. Its own classifier (ImageNet's) is left out."""
    prefix = "encoder.extractor."
    encoder = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    own = model.encoder.extractor.state_dict()
    missing = sorted(set(own) - set(encoder))
    mismatched = sorted(k for k in set(own) & set(encoder) if own[k].shape != encoder[k].shape)
    if missing or mismatched:
        shapes = [f"{k} {tuple(encoder[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3]]
        raise ValueError(
            f"the weights do not fit {model.encoder.arch}: {len(missing)} of its {len(own)} tensors missing "
            f"{missing[:3]}, {len(mismatched)} of another shape {shapes}"
        )
    model.encoder.extractor.load_state_dict({k: encoder[k] for k in own})
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}  # fc, rotation
    usable = {k: v for k, v in state.items() if k in heads and heads[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(heads) - set(usable))


def torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """The state_dict of torchvision's named weights (``ResNet50_Weights.IMAGENET1K_V2``), through torchvision's
    own weights API: downloaded once (hash-checked) into torch's hub cache (``$TORCH_HOME``), read from there
    afterwards. Raises ValueError for an unknown name or weights neither cached nor downloadable."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError):
        raise ValueError(f"{name!r} is not a torchvision weights name (see torchvision.models.list_models)") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError included: offline, and not in the cache
        cache = torch.hub.get_dir()
        raise ValueError(
            f"torchvision weights {name} are not in {cache} and could not be downloaded: {error}"
        ) from None


def quarter_turn(images: torch.Tensor, turns: int) -> torch.Tensor:
    """NCHW images turned by ``turns`` x 90 degrees: the rotation head's class ``turns`` (training and scoring)."""
    return torch.rot90(images, turns, dims=(2, 3))


def build_backbone(settings: BackboneSettings, preprocess: PreprocessSettings, num_classes: int) -> FeatureBackbone:
    return FeatureBackbone(settings, preprocess, num_classes)


def uint8_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)
