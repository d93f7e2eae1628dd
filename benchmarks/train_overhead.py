"""Training overhead: the backbone stage under Ray Train (1 worker) vs a plain PyTorch loop.

    python benchmarks/train_overhead.py --data ../shared/data/cifar10_train.parquet [--config configs/cifar10.yaml]
        [--epochs 3] [--gpu]

Both fit the config's backbone with the same objective, augmentation, optimiser, epochs and batch size on the
same decoded images, through the same epoch code (``BackboneEpoch``). The plain loop gets the pixels as one
in-memory tensor; Ray Train gets them the way ``jobs/train.py`` does (a materialised Ray Dataset that the
worker reads once into its cache; checkpoints to local storage), and its time includes starting the worker
group, reading the shard and checkpointing. Prints both wall times and plain / Ray Train (target >= 0.9),
measured in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

from rayood.config import load_config, with_overrides
from rayood.data.sources import plan_sources
from rayood.runtime import init_ray
from rayood.storage import resolve
from rayood.train.augment import Augmenter, two_crop_transform
from rayood.train.cache import CachedShard
from rayood.train.fit import _fit_stage, _read_id_corpus
from rayood.train.loops import BackboneEpoch, backbone_loop, new_backbone_objective
from rayood.train.recipe import Lookahead


def plain_loop(config, data: CachedShard, device: torch.device) -> float:
    """The backbone loop's arithmetic (``BackboneEpoch``) without Ray: returns wall seconds."""
    optim, settings = config.train.backbone, config.model
    torch.manual_seed(config.train.seed)
    model, optimizer = new_backbone_objective(settings, optim, int(data.labels.max()) + 1, data, None)
    model = model.to(device, memory_format=torch.channels_last)
    lookahead = Lookahead(model) if optim.lookahead else None
    augmenter = Augmenter(list(config.train.augment), len(data), config.train.seed)
    views = two_crop_transform(settings.preprocess.native_size, optim.crop_scale_min, "flip" in config.train.augment)
    steps = math.ceil(len(data) / optim.batch_size)
    epoch_run = BackboneEpoch(model, optimizer, lookahead, data, augmenter, views, optim, steps, device)
    started = time.perf_counter()
    step = 0
    for epoch in range(optim.epochs):
        _, _, _, step = epoch_run(epoch, step, torch.Generator().manual_seed(epoch))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    backbone = config.train.backbone.model_copy(update={"epochs": args.epochs, "checkpoint_every": args.epochs})
    config = with_overrides(config, "train", data=(args.data,), backbone=backbone.model_dump(), use_gpu=args.gpu)
    if args.gpu:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": None})})
    threads = config.train.torch_threads
    if threads:
        torch.set_num_threads(threads)
    init_ray(config.ray)
    corpus = _read_id_corpus(config, plan_sources(config.train.data, config.corpus, extra_columns=("label",)))
    train_rows = corpus.training_dataset()
    names = corpus.class_names
    data = CachedShard.load(train_rows, config.model.preprocess.native_size, "label", names, config.train.cache_max_bytes)

    with tempfile.TemporaryDirectory() as checkpoints:
        base = {"model": config.model.model_dump(mode="json"), "class_names": names, "seed": config.train.seed,
                "label_column": "label", "torch_threads": threads, "cache_max_bytes": config.train.cache_max_bytes}
        started = time.perf_counter()
        _fit_stage(config, resolve(checkpoints), "backbone", backbone_loop,
                   {**base, "optim": config.train.backbone.model_dump(), "augment": list(config.train.augment),
                    "init_state": None}, train_rows)
        ray_s = time.perf_counter() - started
    plain_s = plain_loop(config, data, torch.device("cuda" if args.gpu else "cpu"))
    print(json.dumps({
        "images": len(data), "epochs": args.epochs, "batch_size": config.train.backbone.batch_size,
        "device": "cuda" if args.gpu else "cpu", "torch_threads": torch.get_num_threads(),
        "plain_s": round(plain_s, 1), "ray_train_s": round(ray_s, 1), "ratio_plain_over_ray": round(plain_s / ray_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
