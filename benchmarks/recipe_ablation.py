"""Does a backbone recipe choice help the detectors? Quick fits that differ in one setting.

    python benchmarks/recipe_ablation.py --data ../cifar10-lossless [--epochs 4] \
        [--set train.backbone.label_smoothing=0.0]

``--data`` is the lossless CIFAR-10 benchmark (``../shared/data/lossless/README.md``). Fits the config's backbone
once as configured and once per ``--set`` override (plain loop, no Ray) on ``cifar10_train.parquet`` less the
config's calibration split (the same rows a fit holds out, chosen by id hash), then scores, without a bundle, with
the library's own detectors fitted by the fit's own streamed fits on every training row: KNN (the config's
``knn_k`` over the global vectors, with its ``flip_average``; runs before 2026-12-07 used k=50 on the penultimate
vector without the mirror), Mahalanobis, energy, and the rotation score when the backbone has a rotation head:
- the ID-only criterion that may decide a recipe: AUROC of the held-out split against synthetic outliers made
  from training images (``detectors/synthetic.py``), mean over their kinds, and the same mean without the
  ``rotate`` kind (a backbone trained to predict rotations is taught that kind: it is no evidence for it);
- as a sweep, reported and never used to choose: AUROC against 1,000 images of each OOD set.
Plus accuracy on ``cifar10_val``. Fit lengths are far below the real config's; a comparison, not a result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from plain_fit import plain_fit

from rayood.config import MultiscaleSettings, RayoodConfig, load_config, parse_config
from rayood.data.decode import decode_images
from rayood.data.id_sample import in_calibration_split
from rayood.detectors.classifier import classifier_scores
from rayood.detectors.mahalanobis import MahalanobisDetector, MahalanobisFit
from rayood.detectors.multiscale import MultiscaleDetector, search_vectors
from rayood.detectors.rotation import rotation_score
from rayood.detectors.synthetic import synthetic_outliers
from rayood.evaluation.metrics import auroc
from rayood.models.backbones import uint8_to_unit
from rayood.train.cache import CachedShard

OOD_SETS = {"tin": "tin32_val", "cifar100": "cifar100_32", "mnist": "mnist32_test", "textures": "dtd32"}
SWEEP_ROWS = 1000


def _decoded(table, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    pixels = decode_images(table.column("image").to_pylist(), size)
    return pixels, table.column("label").to_numpy().astype(np.int64)


def _sample(path: Path, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    if rows is not None and rows < table.num_rows:
        table = table.take(np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False)))
    return _decoded(table)


def _split(path: Path, config: RayoodConfig) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) as the fit splits them: the calibration split by id hash."""
    table = pq.read_table(path)
    held = np.array(
        [
            in_calibration_split(i, config.train.calibration_fraction, config.train.seed)
            for i in table.column("id").to_pylist()
        ]
    )
    return _decoded(table.filter(~held)), _decoded(table.filter(held))


@torch.no_grad()
def _scores(
    backbone, references: tuple[MultiscaleDetector, MahalanobisDetector], search: MultiscaleSettings, pixels: np.ndarray
) -> dict[str, np.ndarray]:
    bank, gaussian = references
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(pixels), 500):
        images = uint8_to_unit(torch.from_numpy(pixels[start : start + 500].copy()))
        features = backbone.features(images)
        mirror = backbone.features(images.flip(3)) if search.flip_average else None
        scores = {
            "knn": bank.score_vectors(search_vectors(features, mirror, search))["knn"],
            "mahalanobis": gaussian.distance(features.penultimate),
            "energy": classifier_scores(features.logits)["energy"],
            "logits": features.logits,
        }
        if backbone.rotation is not None:
            scores["rotation"] = rotation_score(backbone, images, features.penultimate, features.logits)
        for name, value in scores.items():
            chunks.setdefault(name, []).append(value)
    return {name: torch.cat(values).numpy() for name, values in chunks.items()}


@torch.no_grad()
def _references(backbone, config: RayoodConfig, data: CachedShard) -> tuple[MultiscaleDetector, MahalanobisDetector]:
    """The KNN bank and the Mahalanobis statistics of the training rows, by the fit's own streamed fits (every
    training row in the bank: the benchmark's fits keep ``bank_fraction`` 1)."""
    model, classes = config.model, data.labels.numpy()
    gaussian = MahalanobisFit(model, config.train.seed, int(classes.max()) + 1, None)
    regions = []
    pixels = data.pixels.permute(0, 2, 3, 1).numpy()
    for start in range(0, len(pixels), 500):
        images = uint8_to_unit(torch.from_numpy(pixels[start : start + 500].copy()))
        features = backbone.features(images)
        mirror = backbone.features(images.flip(3)) if model.multiscale.flip_average else None
        gaussian.partial_fit(gaussian.rows(features, None, [], classes[start : start + 500]))
        regions.append(search_vectors(features, mirror, model.multiscale))
    return MultiscaleDetector.exact(torch.cat(regions), model.multiscale), gaussian.detector()


def run(config: RayoodConfig, data: CachedShard, sets: dict) -> dict:
    backbone, epoch_seconds = plain_fit(config, data, torch.device("cpu"))
    references = _references(backbone, config, data)
    search = config.model.multiscale
    scored = {name: _scores(backbone, references, search, pixels) for name, (pixels, _) in sets.items()}
    val_logits = scored["cifar10_val"].pop("logits")
    result = {
        "epoch_s": [round(s, 1) for s in epoch_seconds],
        "val_accuracy": float((val_logits.argmax(1) == sets["cifar10_val"][1]).mean()),
    }
    kinds = sets["synthetic"][1]
    for score, held in scored["heldout_id"].items():
        if score == "logits":
            continue
        per_kind = {kind: auroc(held, scored["synthetic"][score][kinds == kind]) for kind in np.unique(kinds)}
        result[score] = {
            "synthetic_mean (ID-only)": round(float(np.mean(list(per_kind.values()))), 4),
            "synthetic_mean_without_rotate (ID-only)": round(
                float(np.mean([v for k, v in per_kind.items() if k != "rotate"])), 4
            ),
            **{f"{ood} (sweep)": round(auroc(scored["cifar10_val"][score], scored[ood][score]), 4) for ood in OOD_SETS},
        }
    return result


def _variant(base: dict, assignment: str) -> dict:
    """``base`` with one ``SECTION.FIELD...=JSON`` assignment (several joined by ``;``)."""
    variant = json.loads(json.dumps(base))
    for part in assignment.split(";"):
        path, _, value = part.partition("=")
        *parents, leaf = path.split(".")
        node = variant
        for key in parents:
            node = node[key]
        node[leaf] = json.loads(value)
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the lossless CIFAR-10 benchmark")
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="SECTION.FIELD...=JSON, one variant each (several assignments joined by ';')",
    )
    parser.add_argument("--skip-configured", action="store_true", help="fit only the --set variants")
    parser.add_argument("--train-rows", type=int, help="fit on this many of the training rows (a seeded draw)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_dir = Path(args.data)
    base = load_config(args.config).model_dump(mode="json")
    base["train"]["backbone"]["epochs"] = args.epochs
    config = parse_config(base, "base")
    (train_pixels, train_labels), heldout = _split(data_dir / "cifar10_train.parquet", config)
    if args.train_rows:
        chosen = np.sort(np.random.default_rng(0).choice(len(train_pixels), args.train_rows, replace=False))
        train_pixels, train_labels = train_pixels[chosen], train_labels[chosen]
    data = CachedShard(torch.from_numpy(train_pixels).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(train_labels))
    outliers, kinds = synthetic_outliers(train_pixels, train_labels, 200, seed=1)
    sets = {
        "heldout_id": heldout,
        "synthetic": (outliers, np.asarray(kinds)),
        "cifar10_val": _sample(data_dir / "cifar10_val.parquet"),
        **{name: _sample(data_dir / f"{file}.parquet", SWEEP_ROWS) for name, file in OOD_SETS.items()},
    }
    variants = {} if args.skip_configured else {"as configured": base}
    variants.update({assignment: _variant(base, assignment) for assignment in args.set})
    results = {}
    for name, variant in variants.items():
        results[name] = run(parse_config(variant, name), data, sets)
        print(json.dumps({name: results[name]}), flush=True)
    print(
        json.dumps(
            {"epochs": args.epochs, "train_images": len(data), "heldout_images": len(heldout[0]), "variants": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
