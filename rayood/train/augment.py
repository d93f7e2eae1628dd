"""Training-time augmentation on tensors (N, 3, H, W) in [0, 1].

- ``crop``: random crops of the image reflect-padded by 4 px (the usual CIFAR augmentation);
- ``translate``: the same with 2 px, the fast recipes' milder translation;
- ``flip``: a random horizontal flip per image and draw;
- ``alternating_flip``: each image is flipped at random in the first epoch and then mirrored every other
  epoch, so that consecutive epochs see both orientations (Jordan 2024, airbench: worth a few tenths of a
  point at a 10-epoch budget).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

CROP_PAD = {"crop": 4, "translate": 2}


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crops of the reflect-padded batch, one slice per distinct offset (not per image)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            chosen = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1).to(images.device)
            if len(chosen):
                out[chosen] = padded[chosen, :, dy : dy + h, dx : dx + w]
    return out


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)


class Augmenter:
    """The configured augmentations; ``alternating_flip`` needs each row's index and the epoch."""

    def __init__(self, kinds: Sequence[str], rows: int, seed: int) -> None:
        self.kinds = list(kinds)
        # drawn from the seed alone, so a resumed fit mirrors the same images as the run it continues
        self.first_flip = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) < 0.5

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, index: torch.Tensor | None = None, epoch: int = 0
    ) -> torch.Tensor:
        for kind, pad in CROP_PAD.items():
            if kind in self.kinds:
                images = random_crop(images, pad, generator)
        if "flip" in self.kinds:
            images = flip_where(images, torch.rand(images.shape[0], generator=generator) < 0.5)
        if "alternating_flip" in self.kinds and index is not None:
            images = flip_where(images, self.first_flip[index] ^ bool(epoch % 2))
        return images


def two_crop_transform(size: int, scale_min: float, flip: bool) -> v2.Compose:
    """SupCon's view augmentation: resized crop, optional flip, colour jitter, random greyscale."""
    steps = [v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    return v2.Compose(steps)
