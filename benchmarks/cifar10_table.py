"""The accuracy table: fit a bundle on CIFAR-10 with a config, then evaluate it against the OOD sets.

    python benchmarks/cifar10_table.py --data ../cifar10-lossless [--config configs/cifar10.yaml] [--gpu]
        [--train-rows N] [--eval-rows M]

``--data`` is the lossless CIFAR-10 benchmark folder (``../shared/data/lossless/README.md`` says how to build it
and where each file comes from): fitted on ``cifar10_train``, the ID test is ``cifar10_val`` (held-out training
images, never fitted, calibrated or chosen on), near-OOD Tiny-ImageNet and CIFAR-100, far-OOD MNIST and Textures.
``--gpu`` fits with ``train.use_gpu`` and scores in 1-GPU actors with the same epochs and models as the config:
same budget, different hardware. ``--train-rows`` / ``--eval-rows`` fit on a seeded draw of N training rows and
evaluate on M rows of each test set (written to WORKDIR/subsets): a 224 px encoder on 2 cores cannot take them
all. Writes WORKDIR/evaluation (metrics.csv, metrics.md, plots) and prints the stage
timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rayood.config import load_config, with_overrides
from rayood.evaluate import evaluate
from rayood.train.fit import fit

TRAIN_FILES = ("cifar10_train.parquet",)
ID_TEST = "cifar10_val.parquet"
OOD_SETS = {
    "tin": "tin32_val.parquet",
    "cifar100": "cifar100_32.parquet",
    "mnist": "mnist32_test.parquet",
    "textures": "dtd32.parquet",
}
NEAR = {"tin", "cifar100"}


def _subset(path: Path, rows: int | None, workdir: Path) -> str:
    """``path`` itself, or a seeded draw of ``rows`` of its rows written under WORKDIR/subsets."""
    table = pq.read_table(path)
    if not rows or rows >= table.num_rows:
        return str(path)
    chosen = np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False))
    target = workdir / "subsets" / f"{path.stem}-{rows}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(chosen), target)
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the lossless CIFAR-10 benchmark")
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--workdir", default="rayood-bench/cifar10")
    parser.add_argument("--train-rows", type=int, help="fit on a seeded draw of this many training rows")
    parser.add_argument("--eval-rows", type=int, help="evaluate on a seeded draw of this many rows of each test set")
    args = parser.parse_args()
    data, workdir = Path(args.data), Path(args.workdir)
    config = load_config(args.config)
    bundle = str(workdir / "bundle")
    train_files = [_subset(data / name, args.train_rows, workdir) for name in TRAIN_FILES]
    config = with_overrides(config, "train", data=tuple(train_files), bundle=bundle, overwrite=True)
    if args.gpu:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": None})})
        config = with_overrides(config, "train", use_gpu=True, cpus_per_worker=4)
        config = with_overrides(config, "screen", device="cuda", num_gpus_per_actor=1, cpus_per_actor=2)
    timings = {}
    started = time.perf_counter()
    fit(config)
    timings["fit_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    _, markdown = evaluate(
        config,
        bundle=bundle,
        id_uri=_subset(data / ID_TEST, args.eval_rows, workdir),
        oods={name: _subset(data / file, args.eval_rows, workdir) for name, file in OOD_SETS.items()},
        near=NEAR,
        output=str(workdir / "evaluation"),
        overwrite=True,
    )
    timings["evaluate_s"] = round(time.perf_counter() - started, 1)
    manifest = json.loads((workdir / "bundle" / "manifest.json").read_text())
    print(markdown)
    print(json.dumps({"timings": timings, "training": manifest["training"]}, indent=2))


if __name__ == "__main__":
    main()
