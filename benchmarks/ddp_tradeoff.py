"""DDP's cost/quality trade-off: images/s and AUROC per sampling setting, next to the layer-wise scores.

    python benchmarks/ddp_tradeoff.py [--bundle rayood-demo/bundle] [--per-group 100]

Scores the same images (a fixed sample of the demo corpus's ID, near- and far-OOD rows) with the bundle's
U-Net under several (levels, draws, stride) settings, one process, one thread pool, so the rates compare.
It also reports two ID-only criteria computed on the bundle's held-out ID split (never on OOD data), which
is what the defaults are chosen from:
- ``id_class_kept``: fraction of held-out ID images whose predicted class survives reconstruction (the
  level must not destroy ID semantics);
- ``mc_rel_se``: Monte-Carlo standard error of the ID score over draws, relative to the ID score spread
  (enough draws that the score is not noise).
AUROC columns are a sweep, reported as a sweep: they were not used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayood.bundle_models import load_bundle
from rayood.config import DDPSettings
from rayood.data.decode import decode_images
from rayood.data.id_sample import in_calibration_split
from rayood.detectors.ddp import DDPDetector, guided_ddim
from rayood.evaluation.metrics import auroc
from rayood.models.backbones import uint8_to_unit

MC_DRAWS = 4  # single-draw scores per held-out ID image, to estimate the Monte-Carlo error of r draws
SETTINGS = {
    "paper (t=120,240,360; r=4; stride 20)": dict(levels=(120, 240, 360), draws=4, stride=20),
    "paper text (t=300; r=4; stride 20)": dict(levels=(300,), draws=4, stride=20),
    "t=120; r=2; stride 20": dict(levels=(120,), draws=2, stride=20),
    "t=120; r=1; stride 40 (demo)": dict(levels=(120,), draws=1, stride=40),
    "t=240; r=1; stride 40": dict(levels=(240,), draws=1, stride=40),
}


def load_pixels(table, size: int) -> torch.Tensor:
    pixels = decode_images(table.column("image").to_pylist(), size)
    return uint8_to_unit(torch.from_numpy(pixels))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="rayood-demo/bundle")
    parser.add_argument("--corpus", default="rayood-demo/corpus/corpus.parquet")
    parser.add_argument("--fit-data", default="rayood-demo/id_fit.parquet")
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--id-limit", type=int, default=64, help="held-out ID images for the ID-only criteria")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bundle = load_bundle(args.bundle, device=device)
    size = bundle.settings.preprocess.native_size
    corpus = pq.read_table(args.corpus)
    groups = corpus.column("group").to_numpy(zero_copy_only=False)
    rows = np.concatenate([np.flatnonzero(groups == g)[: args.per_group] for g in ("id", "near_ood", "far_ood")])
    sample = corpus.take(rows)
    images, ids, is_id = load_pixels(sample, size).to(device), sample.column("id").to_pylist(), groups[rows] == "id"
    manifest = bundle.manifest
    fit_table = pq.read_table(args.fit_data)
    fraction, seed = manifest.data["calibration_fraction"], manifest.data["split_seed"]
    held_out = fit_table.filter(
        pa.array([in_calibration_split(i, fraction, seed) for i in fit_table.column("id").to_pylist()])
    )
    held_out = held_out.slice(0, args.id_limit)
    id_images, id_ids = load_pixels(held_out, size).to(device), held_out.column("id").to_pylist()

    backbone, unet = bundle.backbone.eval(), bundle.detectors["ddp"].unet
    with torch.no_grad():
        started = time.perf_counter()
        features = backbone.features(images)
        layerwise = bundle.detectors["layerwise"].score_stages(features.stage_maps, ids)
        _sync(device)
        layerwise_rate = len(ids) / (time.perf_counter() - started)
        id_features = backbone.features(id_images)
    print(
        json.dumps(
            {
                "layerwise_images_per_s": round(layerwise_rate, 1),
                "layerwise_mfsim_auroc": round(
                    auroc(
                        layerwise["layerwise_mfsim"].cpu().numpy()[is_id],
                        layerwise["layerwise_mfsim"].cpu().numpy()[~is_id],
                    ),
                    4,
                ),
            }
        )
    )
    print("| setting | U-Net passes / image | images/s | id_class_kept | mc_rel_se | AUROC (sweep) |")
    print("|---|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        settings = DDPSettings(**{**bundle.settings.ddp.model_dump(), **overrides})
        detector = DDPDetector(unet, settings)
        with torch.no_grad():
            started = time.perf_counter()
            scores = detector.score_images(images, features, ids, backbone)["ddp"].cpu().numpy()
            _sync(device)
            rate = len(ids) / (time.perf_counter() - started)
            per_draw = []
            predicted = id_features.logits.argmax(1)
            for draw in range(MC_DRAWS):
                one = DDPSettings(**{**settings.model_dump(), "draws": 1})
                per_draw.append(
                    DDPDetector(unet, one)
                    .score_images(id_images, id_features, [f"{i}#{draw}" for i in id_ids], backbone)["ddp"]
                    .cpu()
                    .numpy()
                )
            top = max(settings.levels)
            noise = torch.randn(id_images.shape, generator=torch.Generator().manual_seed(0)).to(device)
            recon = guided_ddim(
                unet,
                id_images * 2 - 1,
                torch.full((len(id_ids),), top),
                noise,
                predicted,
                detector.schedule,
                settings.stride,
                settings.guidance,
            )
            kept = float((backbone.features((recon + 1) / 2).logits.argmax(1) == predicted).float().mean())
        draws = np.stack(per_draw)
        spread = draws.mean(0).std()
        rel_se = float(draws.std(0).mean() / np.sqrt(settings.draws) / spread)
        steps = sum(level // settings.stride + 1 for level in settings.levels) * settings.draws * 2
        separation = auroc(scores[is_id], scores[~is_id])
        print(f"| {name} | {steps} | {rate:.1f} | {kept:.3f} | {rel_se:.3f} | {separation:.4f} |")


if __name__ == "__main__":
    main()
