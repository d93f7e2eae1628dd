"""What DDP's noise-and-denoise does to ID and OOD images: the measurements behind its AUROC.

    python benchmarks/ddp_reconstruction.py --bundle rayood-cifar10/bundle --data ../cifar10-lossless
        [--per-set 300] [--levels 60 120 240]

For a fixed random sample of each set of the lossless benchmark (``cifar10_val`` as ID; TIN, CIFAR-100, MNIST,
Textures as OOD; ``../shared/data/lossless/README.md``), reconstructs every
image once at each level (default: the bundle's largest DDP level) with the bundle's stride and guidance
(a level must be a multiple of the stride), then reports per level and set:
- ``psnr_db``: reconstruction against input (how much of the image survives);
- ``class_kept``: share whose predicted class survives (on ID: whether the level destroys ID semantics);
- ``confidence_in`` / ``confidence_out``: mean max-softmax before and after (DDP's premise: OOD inputs are
  pulled toward an ID class, so their confidence and logits should move more than ID ones');
- ``logit_shift``: mean L1 distance between L2-normalised logits before and after (the single-draw DDP score);
- on ID also ``accuracy_in`` / ``accuracy_out`` against the true labels.
Nothing here chooses a setting: it explains a measured AUROC.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from rayood.bundle_models import load_bundle
from rayood.data.decode import decode_images
from rayood.detectors.ddp import guided_ddim
from rayood.models.backbones import uint8_to_unit
from rayood.models.diffusion import noise_for_ids

SETS = {
    "cifar10_val (ID)": "cifar10_val.parquet",
    "tin (near)": "tin32_val.parquet",
    "cifar100 (near)": "cifar100_32.parquet",
    "mnist (far)": "mnist32_test.parquet",
    "textures (far)": "dtd32.parquet",
}
BATCH = 100


def _sample(path: Path, count: int, size: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    table = pq.read_table(path)
    rows = np.sort(np.random.default_rng(0).choice(table.num_rows, min(count, table.num_rows), replace=False))
    table = table.take(rows)
    pixels = decode_images(table.column("image").to_pylist(), size)
    return uint8_to_unit(torch.from_numpy(pixels)), table.column("label").to_numpy(), table.column("id").to_pylist()


@torch.no_grad()
def measure(bundle, level: int, images: torch.Tensor, ids: list[str], labels: np.ndarray | None) -> dict:
    ddp, settings = bundle.detectors["ddp"], bundle.settings.ddp
    before, after, recon_all = [], [], []
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH]
        logits = bundle.backbone.features(x).logits
        noise = noise_for_ids(ids[start : start + BATCH], tuple(x.shape[1:]), f"ddp/{level}/0")
        levels = torch.full((len(x),), level, dtype=torch.long)
        recon = (
            guided_ddim(
                ddp.unet, x * 2 - 1, levels, noise, logits.argmax(1), ddp.schedule, settings.stride, settings.guidance
            )
            + 1
        ) / 2
        before.append(logits)
        after.append(bundle.backbone.features(recon).logits)
        recon_all.append(recon)
    before, after, recon = torch.cat(before), torch.cat(after), torch.cat(recon_all)
    mse = (recon - images).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    result = {
        "images": len(images),
        "psnr_db": float((10 * torch.log10(1 / mse)).mean()),
        "class_kept": float((before.argmax(1) == after.argmax(1)).float().mean()),
        "confidence_in": float(before.softmax(1).max(1).values.mean()),
        "confidence_out": float(after.softmax(1).max(1).values.mean()),
        "logit_shift": float((F.normalize(before, dim=1) - F.normalize(after, dim=1)).abs().sum(1).mean()),
    }
    if labels is not None:
        truth = torch.as_tensor(labels.astype(np.int64))
        result["accuracy_in"] = float((before.argmax(1) == truth).float().mean())
        result["accuracy_out"] = float((after.argmax(1) == truth).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="folder of the lossless CIFAR-10 benchmark")
    parser.add_argument("--per-set", type=int, default=300)
    parser.add_argument("--levels", type=int, nargs="+", help="noise levels to reconstruct from")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, require_calibration=False)
    if "ddp" not in bundle.detectors:
        raise SystemExit("this bundle has no DDP model (model.ddp.enabled was false)")
    size = bundle.settings.preprocess.native_size
    index = {name: i for i, name in enumerate(bundle.manifest.class_names)}
    settings = bundle.settings.ddp
    levels = args.levels or [max(settings.levels)]
    table: dict[int, dict] = {level: {} for level in levels}
    for name, file in SETS.items():
        images, labels, ids = _sample(Path(args.data) / file, args.per_set, size)
        ordered = np.array([index.get(str(v), -1) for v in labels]) if "ID" in name else None
        for level in levels:
            table[level][name] = measure(bundle, level, images, ids, ordered)
    print(
        json.dumps(
            {
                "stride": settings.stride,
                "guidance": settings.guidance,
                "training": bundle.manifest.training.get("ddp"),
                "levels": table,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
