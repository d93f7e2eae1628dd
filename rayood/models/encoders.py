"""Any torchvision classification model as a feature encoder: its maps tapped by ``feature_extraction``.

Default taps (``model.backbone.taps`` empty) are the ends of the model's stages, found the same way for every
family by one dry run: the model's *trunk* is ``features`` where the model has that Sequential (MobileNet,
EfficientNet, ConvNeXt, VGG, DenseNet, MNASNet ...), RegNet's ``stem`` and ``trunk_output`` blocks, and otherwise
its top-level children (ResNet, ResNeXt, Wide ResNet, ShuffleNet, GoogLeNet ...). The trunk's last map is what the
classifier pools (the penultimate vector, and KNN's and MODE's regions); the taps are the trunk's last module at
each spatial resolution, except a final 1x1 convolution head (MobileNet's and EfficientNet's
``Conv2dNormActivation``), which widens the last stage for the classifier and is no stage of its own.
EfficientNet-B4 at 224 px then gives ``features.1, .2, .3, .5, .7``: 24 + 32 + 56 + 160 + 448 = 720 dimensions,
DLSR's five stages (docs/METHODS.md); MobileNetV2 gives ``features.1, .3, .6, .13, .17`` (16 + 24 + 32 + 96 + 320).

Transformers (ViT, Swin, MaxViT) give tokens, not (N, C, H, W) maps, and are refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import get_model, list_models
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import Conv2dNormActivation

TOKEN_FAMILIES = ("vit_", "swin_", "maxvit_")
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class EncoderError(ValueError):
    """An unknown model or node; the message starts with the config field to name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def torchvision_archs() -> list[str]:
    """The classification models torchvision builds by name."""
    import torchvision.models

    return list_models(module=torchvision.models)


def _trunk(net: nn.Module) -> list[tuple[str, nn.Module]]:
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        return [(f"features.{name}", module) for name, module in features.named_children()]
    trunk = getattr(net, "trunk_output", None)
    if isinstance(trunk, nn.Sequential) and hasattr(net, "stem"):
        return [("stem", net.stem), *((f"trunk_output.{name}", m) for name, m in trunk.named_children())]
    return list(net.named_children())


def _trunk_maps(net: nn.Module, size: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """The trunk modules that yield (N, C, H, W) maps, in call order, with their shapes on one probe image."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, module in _trunk(net):
        if isinstance(module, _POOLS):
            continue

        def record(module: nn.Module, inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                seen.append((name, module, tuple(output.shape)))

        hooks.append(module.register_forward_hook(record))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return seen


def _is_head(module: nn.Module) -> bool:
    conv = module[0] if isinstance(module, Conv2dNormActivation) else None
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)


def default_taps(net: nn.Module, size: int) -> tuple[list[str], str]:
    """(taps, last map node) of a torchvision classifier: see the module docstring."""
    maps = _trunk_maps(net, size)
    if not maps:
        raise EncoderError("model.backbone.arch", "this model yields no (N, C, H, W) feature maps to tap")
    last = maps[-1][0]
    stages = maps[:-1] if len(maps) > 1 and _is_head(maps[-1][1]) else maps
    taps = [
        name
        for index, (name, _, shape) in enumerate(stages)
        if index + 1 == len(stages) or stages[index + 1][2][2:] != shape[2:]
    ]
    return taps, last


class TorchvisionEncoder(nn.Module):
    """A torchvision classifier cut to its feature maps: ``forward`` gives (tapped maps, last map). Parameter
    names are the model's own, so its state_dict (ImageNet weights) loads as it is, less the classifier."""

    def __init__(self, arch: str, taps: tuple[str, ...], input_size: int) -> None:
        super().__init__()
        if arch.startswith(TOKEN_FAMILIES):
            raise EncoderError("model.backbone.arch", f"{arch} yields tokens, not (N, C, H, W) feature maps to tap")
        if arch not in torchvision_archs():
            raise EncoderError(
                "model.backbone.arch",
                f"{arch!r} is neither a rayood backbone nor a torchvision classification model "
                "(torchvision.models.list_models(module=torchvision.models))",
            )
        net = get_model(arch, weights=None)
        default, last = default_taps(net, input_size)
        self.arch, self.taps, self.last_node = arch, list(taps) or default, last
        nodes = list(dict.fromkeys([*self.taps, last]))
        try:
            self.extractor = create_feature_extractor(net, return_nodes=nodes)
        except ValueError as error:  # torchvision's message names the node that is not in the graph
            raise EncoderError("model.backbone.taps", str(error).split(". Hint")[0]) from None
        self.extractor.eval()
        with torch.no_grad():
            probe = self.extractor(torch.zeros(1, 3, input_size, input_size))
        self.extractor.train()
        flat = [name for name in nodes if probe[name].dim() != 4]
        if flat:
            raise EncoderError("model.backbone.taps", f"nodes {flat} give no (N, C, H, W) feature map")
        self.last_dim = int(probe[last].shape[1])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.extractor(x)
        return [out[name] for name in self.taps], out[self.last_node]
