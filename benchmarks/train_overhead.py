"""Training overhead: the backbone stage under Ray Train (1 worker) vs a plain PyTorch loop.

    python benchmarks/train_overhead.py --data ../shared/data/cifar10_train.parquet [--config configs/cifar10.yaml]
        [--epochs 3] [--gpu]

Both fit the config's backbone with the same objective, augmentation, optimiser, epochs and batch size on the
same decoded images. The plain loop gets the pixels as one in-memory tensor; Ray Train gets them the way
``jobs/train.py`` does (a materialised Ray Dataset streamed to the worker, checkpoints to local storage).
Prints both wall times and plain / Ray Train (target >= 0.9), measured in one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

from rayood.config import load_config, with_overrides
from rayood.data.decode import pixels_from_column
from rayood.data.sources import plan_sources
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.runtime import init_ray
from rayood.storage import resolve
from rayood.train.fit import _fit_stage, _read_id_corpus
from rayood.train.loops import augment, backbone_loop
from rayood.train.objectives import BackboneObjective


def plain_loop(config, pixels: np.ndarray, labels: np.ndarray, device: torch.device) -> float:
    """The backbone loop's arithmetic without Ray: returns wall seconds."""
    optim, settings = config.train.backbone, config.model
    torch.manual_seed(config.train.seed)
    backbone = build_backbone(settings.backbone, settings.preprocess, int(labels.max()) + 1)
    model = BackboneObjective(backbone, optim.objective, optim.alpa_weight, optim.projection_dim, optim.alpa_dim).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=0.9, nesterov=True, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, optim.epochs))
    generator = torch.Generator().manual_seed(config.train.seed)
    images_all, labels_all = torch.from_numpy(pixels), torch.from_numpy(labels)
    started = time.perf_counter()
    for _ in range(optim.epochs):
        model.train()
        order = torch.randperm(len(labels_all), generator=generator)
        for start in range(0, len(order), optim.batch_size):
            index = order[start : start + optim.batch_size]
            images = augment(uint8_to_unit(images_all[index].to(device)), config.train.augment, generator)
            loss, _ = model(images, labels_all[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
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
    train_rows = corpus.training_dataset(config.train.seed)
    table = pa.concat_tables([batch for batch in train_rows.iter_batches(batch_format="pyarrow", batch_size=4096)])
    pixels = pixels_from_column(table.column("pixels"), config.model.preprocess.native_size)
    names = corpus.class_names
    labels = np.array([names.index(str(v)) for v in table.column("label").to_pylist()], dtype=np.int64)

    with tempfile.TemporaryDirectory() as checkpoints:
        base = {"model": config.model.model_dump(mode="json"), "class_names": names, "seed": config.train.seed,
                "label_column": "label", "torch_threads": threads}
        started = time.perf_counter()
        _fit_stage(config, resolve(checkpoints), "backbone", backbone_loop,
                   {**base, "optim": config.train.backbone.model_dump(), "augment": list(config.train.augment),
                    "init_state": None}, train_rows)
        ray_s = time.perf_counter() - started
    plain_s = plain_loop(config, pixels, labels, torch.device("cuda" if args.gpu else "cpu"))
    print(json.dumps({
        "images": len(labels), "epochs": args.epochs, "batch_size": config.train.backbone.batch_size,
        "device": "cuda" if args.gpu else "cpu", "torch_threads": torch.get_num_threads(),
        "plain_s": round(plain_s, 1), "ray_train_s": round(ray_s, 1), "ratio_plain_over_ray": round(plain_s / ray_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
