"""Why DLSR does or does not beat feature distances on a fitted bundle: the AUROC of each stage's reconstruction,
of the denoiser at its earlier checkpoints, and of a KNN on the very layer features DLSR reconstructs.

    python benchmarks/layerwise_diagnosis.py --bundle B [--checkpoints B-checkpoints] --train TRAIN.parquet \
        --id ID.parquet --ood tin=TIN.parquet --ood cifar100=C100.parquet --near tin --near cifar100 \
        --ood mnist=MNIST.parquet --ood textures=DTD.parquet [--train-rows 5000] [--rows 2000]

One process, no Ray: every set is decoded and run through the bundle's backbone once (``--rows`` per set, a
seeded draw; ``--train-rows`` training images for the KNN reference), then scored from those features:
- ``mse`` / ``mfsim`` with the bundle's denoiser and with each checkpoint the layerwise run kept (is it
  under-trained?);
- ``stage<i>``: minus the cosine of stage i's block alone (which stages carry the signal?);
- ``knn_layers``: the distance to the 50th nearest training z0 (cosine), the feature-distance baseline on DLSR's
  own input; ``knn_penultimate`` the same on the penultimate vector (rayood's ``knn``, on this reference).
Prints one Markdown table of AUROC per set and the near / far means.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from rayood.bundle_models import load_bundle
from rayood.data.decode import decode_images
from rayood.detectors.layerwise import LayerwiseDetector, layer_features
from rayood.evaluation.metrics import auroc
from rayood.models.backbones import uint8_to_unit

KNN_K = 50


def features(bundle, path: str, rows: int, batch: int = 64) -> dict[str, object]:
    """z0, penultimate and ids of a seeded draw of ``rows`` rows of a Parquet corpus (image bytes, id)."""
    table = pq.read_table(path, columns=["image", "id"])
    if rows < table.num_rows:
        table = table.take(np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False)))
    size = bundle.settings.preprocess.native_size
    images = decode_images(table.column("image").to_pylist(), size)
    z0, penultimate = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = torch.from_numpy(images[start : start + batch])
            out = bundle.backbone.features(uint8_to_unit(pixels))
            z0.append(layer_features(out.stage_maps))
            penultimate.append(out.penultimate.float())
    return {
        "z0": torch.cat(z0),
        "penultimate": torch.cat(penultimate),
        "ids": [str(i) for i in table.column("id").to_pylist()],
    }


def kth_distance(queries: torch.Tensor, reference: torch.Tensor, k: int = KNN_K) -> np.ndarray:
    similarity = F.normalize(queries, dim=1) @ F.normalize(reference, dim=1).T
    return (1 - similarity.topk(k, dim=1).values[:, -1]).numpy()


def detectors(bundle, checkpoints: Path | None) -> dict[str, LayerwiseDetector]:
    final = bundle.detectors["layerwise"]
    found = {"final": final}
    runs = sorted(checkpoints.glob("*-layerwise-*")) if checkpoints else []
    for run in runs:
        for directory in sorted(p for p in run.glob("checkpoint_*") if (p / "state.pt").exists()):
            state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
            denoiser = copy.deepcopy(final.denoiser)
            denoiser.load_state_dict(state["ema"])
            found[f"epoch {int(state['epoch'])}"] = LayerwiseDetector(
                denoiser, bundle.settings.layerwise, final.block_dims
            )
    return found


def scores(bundle, found: dict[str, LayerwiseDetector], data: dict, train: dict) -> dict[str, np.ndarray]:
    z0, result = data["z0"], {}
    for name, detector in found.items():
        z0_hat = detector.reconstruct(z0, data["ids"])
        result[f"mse ({name})"] = (z0 - z0_hat).pow(2).sum(1).numpy()
        cosines = [
            F.cosine_similarity(a, b, dim=1)
            for a, b in zip(z0.split(detector.block_dims, 1), z0_hat.split(detector.block_dims, 1))
        ]
        result[f"mfsim ({name})"] = (-torch.stack(cosines, 1).mean(1)).numpy()
        if name == "final":
            for index, cosine in enumerate(cosines):
                result[f"stage{index} ({detector.block_dims[index]}-d)"] = (-cosine).numpy()
    result["knn_layers"] = kth_distance(z0, train["z0"])
    result["knn_penultimate"] = kth_distance(data["penultimate"], train["penultimate"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--checkpoints", help="the fit's checkpoint folder (default: <bundle>-checkpoints)")
    parser.add_argument("--train", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ood", action="append", default=[], help="NAME=URI")
    parser.add_argument("--near", action="append", default=[])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--train-rows", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle)
    checkpoints = Path(args.checkpoints or f"{args.bundle.rstrip('/')}-checkpoints")
    found = detectors(bundle, checkpoints if checkpoints.exists() else None)
    train = features(bundle, args.train, args.train_rows)
    id_scores = scores(bundle, found, features(bundle, args.id, args.rows), train)
    oods = dict(item.split("=", 1) for item in args.ood)
    table = {name: scores(bundle, found, features(bundle, uri, args.rows), train) for name, uri in oods.items()}
    near = [n for n in oods if n in args.near]
    far = [n for n in oods if n not in args.near]
    print("| score | " + " | ".join(oods) + " | near | far |")
    print("|---|" + "---:|" * (len(oods) + 2))
    for score in id_scores:
        values = {name: 100 * auroc(id_scores[score], table[name][score]) for name in oods}
        means = [np.mean([values[n] for n in group]) if group else float("nan") for group in (near, far)]
        print(f"| {score} | " + " | ".join(f"{values[n]:.2f}" for n in oods) + f" | {means[0]:.2f} | {means[1]:.2f} |")


if __name__ == "__main__":
    main()
