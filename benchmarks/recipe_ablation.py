"""Does a backbone recipe choice hurt the feature-based detectors? Quick fits that differ in one setting.

    python benchmarks/recipe_ablation.py --data ../shared/data [--epochs 4] [--set train.backbone.label_smoothing=0.0]

Fits the config's backbone once as configured and once per ``--set`` override (plain loop, no Ray) on
``cifar10_train.parquet``, then scores with the bundle-free essentials of the detectors (KNN k=50 on the
normalised penultimate features, Mahalanobis with a shared covariance, energy):
- the ID-only criterion that may decide a recipe: AUROC of held-out ID images (2,000 of ``cifar10_train_b``)
  against synthetic outliers made from training images (``detectors/synthetic.py``), mean over their kinds;
- as a sweep, reported and never used to choose: AUROC against 1,000 TIN and 1,000 MNIST test images.
Plus test accuracy on ``cifar10_test``. Fit lengths are far below the real config's; a comparison, not a result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from plain_fit import plain_fit

from rayood.config import load_config, parse_config
from rayood.data.decode import decode_image
from rayood.detectors.baselines import classifier_scores
from rayood.detectors.knn import kth_neighbour_distance, normalise
from rayood.detectors.mahalanobis import GaussianStatistics, MahalanobisDetector, mahalanobis_features
from rayood.detectors.synthetic import synthetic_outliers
from rayood.models.backbones import uint8_to_unit
from rayood.evaluation.metrics import auroc
from rayood.train.cache import CachedShard

KNN_K = 50


def _pixels(path: Path, rows: int | None = None, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    if rows is not None:
        table = table.take(np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False)))
    pixels = np.stack([decode_image(b, size) for b in table.column("image").to_pylist()])
    return pixels, table.column("label").to_numpy().astype(np.int64)


@torch.no_grad()
def _features(backbone, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    out = [backbone.features(uint8_to_unit(torch.from_numpy(pixels[i : i + 500].copy()))) for i in range(0, len(pixels), 500)]
    return torch.cat([f.penultimate for f in out]), torch.cat([f.logits for f in out])


def _scores(backbone, bank: torch.Tensor, gaussian: MahalanobisDetector, pixels: np.ndarray) -> dict[str, np.ndarray]:
    penultimate, logits = _features(backbone, pixels)
    return {
        "knn": kth_neighbour_distance(normalise(penultimate), bank, KNN_K, 65_536).numpy(),
        "mahalanobis": gaussian.distance(penultimate).numpy(),
        "energy": classifier_scores(logits)["energy"].numpy(),
    }


def run(config, data: CachedShard, sets: dict) -> dict:
    backbone, epoch_seconds = plain_fit(config, data, torch.device("cpu"))
    seconds = sum(epoch_seconds)
    train_pixels = data.pixels.permute(0, 2, 3, 1).numpy()
    penultimate, _ = _features(backbone, train_pixels)
    normalised = config.model.mahalanobis.normalise
    statistics = GaussianStatistics(10, penultimate.shape[1])
    statistics.partial_fit(mahalanobis_features(penultimate.numpy(), normalised), data.labels.numpy())
    gaussian = MahalanobisDetector(torch.from_numpy(statistics.means()), torch.from_numpy(statistics.precision()), normalised)
    bank = normalise(penultimate)
    scored = {name: _scores(backbone, bank, gaussian, pixels) for name, (pixels, _) in sets.items()}
    _, test_logits = _features(backbone, sets["cifar10_test"][0])
    result = {"fit_s": round(seconds, 1),
              "test_accuracy": float((test_logits.argmax(1).numpy() == sets["cifar10_test"][1]).mean())}
    kinds = sets["synthetic"][1]
    for score in scored["heldout_id"]:
        held = scored["heldout_id"][score]
        synthetic = np.mean([auroc(held, scored["synthetic"][score][kinds == k]) for k in np.unique(kinds)])
        result[score] = {"synthetic_mean (ID-only)": round(float(synthetic), 4),
                         **{f"{ood} (sweep)": round(auroc(scored["cifar10_test"][score], scored[ood][score]), 4)
                            for ood in ("tin", "mnist")}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with the benchmark Parquet files")
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], help="SECTION.FIELD...=VALUE, one variant each")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_dir = Path(args.data)
    base = load_config(args.config).model_dump(mode="json")
    base["train"]["backbone"]["epochs"] = args.epochs
    train_pixels, train_labels = _pixels(data_dir / "cifar10_train.parquet")
    data = CachedShard(torch.from_numpy(train_pixels).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(train_labels))
    outliers, kinds = synthetic_outliers(train_pixels, train_labels, 200, seed=1)
    sets = {
        "heldout_id": _pixels(data_dir / "cifar10_train_b.parquet", 2000),
        "synthetic": (outliers, np.asarray(kinds)),
        "cifar10_test": _pixels(data_dir / "cifar10_test.parquet"),
        "tin": _pixels(data_dir / "tin32_val.parquet", 1000),
        "mnist": _pixels(data_dir / "mnist32_test.parquet", 1000),
    }
    variants = {"as configured": base}
    for assignment in args.set:
        path, _, value = assignment.partition("=")
        variant = json.loads(json.dumps(base))
        *parents, leaf = path.split(".")
        node = variant
        for part in parents:
            node = node[part]
        node[leaf] = json.loads(value)
        variants[assignment] = variant
    results = {name: run(parse_config(variant, name), data, sets) for name, variant in variants.items()}
    print(json.dumps({"epochs": args.epochs, "train_images": len(data), "variants": results}, indent=2))


if __name__ == "__main__":
    main()
