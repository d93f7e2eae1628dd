"""A bundle's classifier accuracy at the three test-time augmentation levels of the fast CIFAR-10 recipes.

    python benchmarks/tta_accuracy.py --bundle B --data ../cifar10-lossless/cifar10_val.parquet

Levels (airbench94, Jordan 2024): 0 the image alone; 1 the mean of the image's and its mirror's logits
(``model.backbone.flip_tta``); 2 level 1 averaged half-and-half with the mean of level 1 on the image shifted
one pixel up-left and down-right (reflect padding): six backbone passes. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from rayood.bundle_models import load_bundle
from rayood.data.decode import decode_images
from rayood.models.backbones import uint8_to_unit


def _flip_mean(backbone, images: torch.Tensor) -> torch.Tensor:
    return (backbone(images) + backbone(images.flip(3))) / 2


def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    h, w = images.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


@torch.no_grad()
def level_logits(backbone, images: torch.Tensor) -> list[torch.Tensor]:
    plain, level1 = backbone(images), _flip_mean(backbone, images)
    shifts = (_flip_mean(backbone, _shifted(images, -1, -1)) + _flip_mean(backbone, _shifted(images, 1, 1))) / 2
    return [plain, level1, (level1 + shifts) / 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="labelled Parquet (image, label)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_bundle(args.bundle, require_calibration=False).backbone
    table = pq.read_table(args.data, columns=["image", "label"])
    size = backbone.input_size
    labels = table.column("label").to_numpy()
    correct = np.zeros(3)
    for start in range(0, table.num_rows, 500):
        chunk = table.column("image").slice(start, 500).to_pylist()
        images = uint8_to_unit(torch.from_numpy(decode_images(chunk, size)))
        for level, logits in enumerate(level_logits(backbone, images)):
            correct[level] += int((logits.argmax(1).numpy() == labels[start : start + len(chunk)]).sum())
    print(
        json.dumps(
            {"images": table.num_rows, **{f"level_{i}": round(c / table.num_rows, 4) for i, c in enumerate(correct)}}
        )
    )


if __name__ == "__main__":
    main()
