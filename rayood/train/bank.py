"""Reference statistics of the ID training images, by Ray Data batch inference: the multi-scale bank
(region vectors, for KNN and MODE) and the Mahalanobis class statistics of the penultimate features.

The forward passes run in an actor pool (GPU actors on a cluster), so they scale past one machine; the
bank itself, N x R x C float32, streams batch by batch into a scratch file on the driver and from there into
the bundle, and the Gaussian statistics are accumulated as the batches stream in. With ``model.multiscale.bank_fraction`` below 1
the bank keeps that share of the training images (chosen by id hash); the statistics still see every row.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import ray.data
import torch

from rayood.config import ConfigError, ModelSettings, RayoodConfig
from rayood.data.decode import pixels_from_column
from rayood.detectors.mahalanobis import GaussianStatistics, mahalanobis_features
from rayood.detectors.multiscale import region_vectors, search_map
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.scoring.pool import actor_pool
from rayood.scoring.scorer import pick_device
from rayood.train.id_sample import in_sample


BANK_SALT = "bank"  # the bank's sample is independent of the calibration split


class RegionVectors:
    """``map_batches`` class: decoded rows -> region vectors (R, C), penultimate features, class index and
    whether the row is in the bank's sample (every row feeds the Mahalanobis statistics)."""

    def __init__(
        self, model: dict, class_names: list[str], label_column: str, state: dict, device: str, cpu_threads: int = 1,
        seed: int = 0,
    ) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        self.settings = ModelSettings.model_validate(model)
        self.device = pick_device(device)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.label_column = label_column
        self.seed = seed
        self.backbone = build_backbone(self.settings.backbone, self.settings.preprocess, len(class_names))
        self.backbone.load_state_dict(state)
        self.backbone.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels = pixels_from_column(batch.column("pixels"), self.settings.preprocess.native_size)
        images = uint8_to_unit(torch.from_numpy(pixels.copy()).to(self.device))
        features = self.backbone.features(images)
        mirror = self.backbone.features(images.flip(3)) if self.settings.multiscale.flip_average else None
        labels = batch.column(self.label_column).cast(pa.string()).to_pylist()
        fraction = self.settings.multiscale.bank_fraction
        return {
            "in_bank": np.array([in_sample(i, fraction, self.seed, BANK_SALT) for i in batch.column("id").to_pylist()]),
            "regions": region_vectors(search_map(features, mirror), self.settings.multiscale).cpu().numpy(),
            "penultimate": features.penultimate.cpu().numpy(),
            "class_index": np.array([self.class_index[label] for label in labels]),
        }


def build_references(
    config: RayoodConfig, data: ray.data.Dataset, class_names: list[str], state: dict, scratch: str
) -> tuple[np.ndarray, GaussianStatistics]:
    """The (N, R, C) bank and the Mahalanobis statistics of the training rows, in one pass. The bank's rows
    stream into a file in the ``scratch`` directory and come back memory-mapped: the driver never holds the
    bank (ImageNet at 224 px with a ResNet-50: tens of GB), only a batch at a time."""
    screen = config.screen
    vectors = data.map_batches(
        RegionVectors,
        fn_constructor_kwargs={
            "model": config.model.model_dump(mode="json"), "class_names": class_names,
            "label_column": config.corpus.label_column, "state": state,
            "device": screen.device, "cpu_threads": screen.actor_threads, "seed": config.train.seed,
        },
        **actor_pool(screen, min_actors=1),
    )
    path, rows, region_shape, statistics = os.path.join(scratch, "bank.f32"), 0, None, None
    with open(path, "wb") as sink:
        for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
            kept = batch["regions"][batch["in_bank"]].astype(np.float32)
            sink.write(kept.tobytes())
            rows, region_shape = rows + len(kept), batch["regions"].shape[1:]
            if statistics is None:
                statistics = GaussianStatistics(len(class_names), batch["penultimate"].shape[1])
            penultimate = mahalanobis_features(batch["penultimate"], config.model.mahalanobis.normalise)
            statistics.partial_fit(penultimate, batch["class_index"])
    search = config.model.multiscale
    if rows < max(search.k, search.knn_k):
        raise ConfigError(
            f"model.multiscale.bank_fraction={search.bank_fraction} leaves {rows} bank images, fewer than the "
            f"k of its searches ({max(search.k, search.knn_k)}): raise it"
        )
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, *region_shape)), statistics
