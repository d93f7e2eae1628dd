"""The accuracy table: fit a bundle on CIFAR-10 with a config, then evaluate it against the OOD sets.

    python benchmarks/cifar10_table.py --data ../cifar10-lossless [--config configs/cifar10.yaml] [--gpu]

``--data`` is the lossless CIFAR-10 benchmark folder (``../shared/data/lossless/README.md`` says how to build it
and where each file comes from): fitted on ``cifar10_train``, the ID test is ``cifar10_val`` (held-out training
images, never fitted, calibrated or chosen on), near-OOD Tiny-ImageNet and CIFAR-100, far-OOD MNIST and Textures.
``--gpu`` fits with ``train.use_gpu`` and scores in 1-GPU actors with the same epochs and models as the config:
same budget, different hardware. Writes WORKDIR/evaluation (metrics.csv, metrics.md, plots) and prints the stage
timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rayood.config import load_config, with_overrides
from rayood.evaluate import evaluate
from rayood.train.fit import fit

TRAIN_FILES = ("cifar10_train.parquet",)
ID_TEST = "cifar10_val.parquet"
OOD_SETS = {"tin": "tin32_val.parquet", "cifar100": "cifar100_32.parquet", "mnist": "mnist32_test.parquet",
            "textures": "dtd32.parquet"}
NEAR = {"tin", "cifar100"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the lossless CIFAR-10 benchmark")
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--workdir", default="rayood-bench/cifar10")
    args = parser.parse_args()
    data, workdir = Path(args.data), Path(args.workdir)
    config = load_config(args.config)
    bundle = str(workdir / "bundle")
    config = with_overrides(config, "train", data=tuple(str(data / name) for name in TRAIN_FILES), bundle=bundle, overwrite=True)
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
        config, bundle=bundle, id_uri=str(data / ID_TEST),
        oods={name: str(data / file) for name, file in OOD_SETS.items()}, near=NEAR,
        output=str(workdir / "evaluation"), overwrite=True,
    )
    timings["evaluate_s"] = round(time.perf_counter() - started, 1)
    manifest = json.loads((workdir / "bundle" / "manifest.json").read_text())
    print(markdown)
    print(json.dumps({"timings": timings, "training": manifest["training"]}, indent=2))


if __name__ == "__main__":
    main()
