"""Training overhead: the backbone stage under Ray Train (1 worker) vs a plain PyTorch loop.

    python benchmarks/train_overhead.py --data ../shared/data/cifar10_train.parquet [...] \
        [--config configs/cifar10.yaml]
        [--epochs 3] [--gpu]

Both fit the config's backbone with the same objective, augmentation, optimiser, epochs and batch size on the
same decoded images, through the same epoch code (``BackboneEpoch``). The plain loop gets the pixels as one
in-memory tensor; Ray Train gets them the way ``jobs/train.py`` does (a materialised Ray Dataset that the
worker reads once into its cache; checkpoints to local storage), and its time includes starting the worker
group, reading the shard and checkpointing. Prints both wall times and plain / Ray Train (target >= 0.9),
measured in one run, and splits the difference: Ray Train's fixed start-up (the stage's wall time minus its
epochs) and the ratio of the last epoch's time (the steady state, where Ray's helper processes share the
cores with the worker). From these it projects the ratio for the config's own epoch count, which a short run
understates. ``ray_train_cpu_s`` splits the Ray Train side's CPU seconds by process (``process_cpu.py``): the
training worker, Ray Train's and Ray Data's helper actors, and Ray's own daemons.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from plain_fit import plain_fit
from process_cpu import cpu_by_title, cpu_seconds

from rayood.config import load_config, with_overrides
from rayood.data.sources import plan_sources
from rayood.runtime import init_ray
from rayood.storage import resolve
from rayood.train.cache import CachedShard
from rayood.train.fit import _fit_stage, _read_id_corpus
from rayood.train.harness import LoopConfig
from rayood.train.loops import backbone_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="ID Parquet file(s)")
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    backbone = config.train.backbone.model_copy(update={"epochs": args.epochs, "checkpoint_every": args.epochs})
    config = with_overrides(config, "train", data=tuple(args.data), backbone=backbone.model_dump(), use_gpu=args.gpu)
    if args.gpu:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": None})})
    threads = config.train.torch_threads
    if threads:
        torch.set_num_threads(threads)
    config_epochs = load_config(args.config).train.backbone.epochs
    init_ray(config.ray)
    corpus = _read_id_corpus(config, plan_sources(config.train.data, config.corpus, extra_columns=("label",)))
    train_rows = corpus.training_dataset()
    names = corpus.class_names
    data = CachedShard.load(
        train_rows, config.model.preprocess.native_size, "label", names, config.train.cache_max_bytes
    )

    with tempfile.TemporaryDirectory() as checkpoints:
        loop_config = LoopConfig(
            model=config.model,
            class_names=tuple(names),
            seed=config.train.seed,
            label_column="label",
            torch_threads=threads,
            cache_max_bytes=config.train.cache_max_bytes,
            optim=config.train.backbone,
            augment=tuple(config.train.augment),
        )
        started, cpu_before = time.perf_counter(), cpu_seconds()
        result = _fit_stage(
            config,
            resolve(checkpoints),
            "backbone",
            backbone_loop,
            loop_config,
            train_rows,
        )
        ray_s = time.perf_counter() - started
        ray_cpu = cpu_by_title(cpu_before, cpu_seconds())
    plain_epochs = plain_fit(config, data, torch.device("cuda" if args.gpu else "cpu"))[1]
    plain_s = sum(plain_epochs)
    start_up_s = ray_s - result.metrics["epochs_s"]
    steady = plain_epochs[-1] / result.metrics["epoch_s"]
    projected = config_epochs * plain_epochs[-1] / (start_up_s + config_epochs * result.metrics["epoch_s"])
    print(
        json.dumps(
            {
                "images": len(data),
                "epochs": args.epochs,
                "batch_size": config.train.backbone.batch_size,
                "device": "cuda" if args.gpu else "cpu",
                "torch_threads": torch.get_num_threads(),
                "plain_s": round(plain_s, 1),
                "ray_train_s": round(ray_s, 1),
                "ratio_plain_over_ray": round(plain_s / ray_s, 3),
                "ray_start_up_s": round(start_up_s, 1),
                "last_epoch_plain_s": round(plain_epochs[-1], 1),
                "last_epoch_ray_s": result.metrics["epoch_s"],
                "steady_ratio": round(steady, 3),
                "config_epochs": config_epochs,
                "projected_ratio_at_config_epochs": round(projected, 3),
                "ray_train_cpu_s": ray_cpu,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
