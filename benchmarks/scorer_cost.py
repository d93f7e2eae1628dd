"""What one image costs to score with a config's models, before fitting anything: a bundle of random weights
of the config's shapes (the arithmetic does not depend on the values) and a random bank of ``--bank-rows`` ID
images, scored in one process, per detector family.

    python benchmarks/scorer_cost.py --config configs/imagenet-resnet50.yaml [--bank-rows 10000] [--batch 32]
        [--batches 4] [--device cpu|cuda]

Prints ms per image for the backbone pass alone and for the whole scorer (every detector of the config).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from rayood.bundle import (
    BACKBONE_FILE,
    CALIBRATION_FILE,
    new_manifest,
    write_calibration,
    write_file,
    write_manifest,
)
from rayood.bundle_files import state_dict_bytes
from rayood.bundle_models import load_bundle
from rayood.config import load_config
from rayood.detectors import mahalanobis
from rayood.detectors.multiscale import region_count, write_bank
from rayood.detectors.registry import DDP_FILE, LAYERWISE_FILE
from rayood.manifest import CalibrationRecord
from rayood.models.backbones import build_backbone
from rayood.models.diffusion import build_denoiser
from rayood.models.unet import build_unet
from rayood.scoring.scorer import Scorer
from rayood.storage import resolve

NUM_CLASSES = 10


def random_bundle(directory: str, config, bank_rows: int) -> None:
    settings = config.model.model_copy(
        update={"backbone": config.model.backbone.model_copy(update={"init_weights": None})}
    )
    backbone = build_backbone(settings.backbone, settings.preprocess, NUM_CLASSES)
    dims, feature_dim = backbone.stage_dims(), backbone.fc.in_features
    location = resolve(directory)
    write_file(location, BACKBONE_FILE, state_dict_bytes(backbone.state_dict()))
    write_file(location, LAYERWISE_FILE, state_dict_bytes(build_denoiser(settings, sum(dims)).state_dict()))
    if settings.ddp.enabled:
        write_file(location, DDP_FILE, state_dict_bytes(build_unet(settings, NUM_CLASSES).state_dict()))
    shape = (bank_rows, region_count(settings.multiscale), feature_dim)
    bank = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    bank_index = write_bank(location, bank / np.linalg.norm(bank, axis=-1, keepdims=True), settings.multiscale, seed=0)
    mahalanobis.write(location, np.zeros((NUM_CLASSES, feature_dim)), np.eye(feature_dim))
    written = {info.path.rsplit("/", 1)[-1] for info in location.list_files()}
    facts = {"multiscale": {"bank_rows": shape[0], "regions": shape[1], "index": bank_index}}
    manifest = new_manifest(settings, [str(c) for c in range(NUM_CLASSES)], dims, feature_dim, written, facts)
    write_calibration(location, {name: np.arange(10.0) for name in manifest.scores})
    write_manifest(
        location, manifest.model_copy(update={"calibration": CalibrationRecord(file=CALIBRATION_FILE, rows=10)})
    )


def per_image_ms(run, images: torch.Tensor, batches: int, device: torch.device) -> float:
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / (batches * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--bank-rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config = load_config(args.config)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as directory:
        random_bundle(directory, config, args.bank_rows)
        bundle = load_bundle(directory, device=device)
    size = bundle.settings.preprocess.native_size
    pixels = np.random.default_rng(1).integers(0, 256, size=(args.batch, size, size, 3), dtype=np.uint8)
    ids = [f"image-{n}" for n in range(args.batch)]
    scorer = Scorer(bundle, device)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)
    with torch.no_grad():
        backbone_ms = per_image_ms(lambda: scorer.backbone.features(images), images, args.batches, device)
    total_ms = per_image_ms(lambda: scorer.score(pixels, ids), images, args.batches, device)
    print(
        json.dumps(
            {
                "config": args.config,
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "native_size": size,
                "bank_rows": args.bank_rows,
                "batch": args.batch,
                "scores": bundle.score_names,
                "backbone_ms_per_image": round(backbone_ms, 2),
                "scorer_ms_per_image": round(total_ms, 2),
                "images_per_s": round(1000 / total_ms, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
