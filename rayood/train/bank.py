"""The multi-scale feature bank: region vectors of every ID training image, by Ray Data batch inference.

The forward passes run in an actor pool (GPU actors on a cluster), so they scale past one machine; the
bank itself, N x R x C float32, is gathered on the driver and stored in the bundle.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data
import torch

from rayood.config import ModelSettings, RayoodConfig
from rayood.data.decode import pixels_from_column
from rayood.detectors.multiscale import region_vectors
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.screen.scorer import pick_device


class RegionVectors:
    """``map_batches`` class: decoded rows -> a ``regions`` column of (R, C) float32 arrays."""

    def __init__(self, model: dict, num_classes: int, state: dict, device: str, cpu_threads: int = 1) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        self.settings = ModelSettings.model_validate(model)
        self.device = pick_device(device)
        self.backbone = build_backbone(self.settings.backbone, self.settings.preprocess, num_classes)
        self.backbone.load_state_dict(state)
        self.backbone.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels = pixels_from_column(batch.column("pixels"), self.settings.preprocess.native_size)
        images = uint8_to_unit(torch.from_numpy(pixels.copy()).to(self.device))
        last = self.backbone.features(images).stage_maps[-1]
        return {"regions": region_vectors(last, self.settings.multiscale).cpu().numpy()}


def build_bank(config: RayoodConfig, data: ray.data.Dataset, num_classes: int, state: dict) -> np.ndarray:
    screen = config.screen
    vectors = data.map_batches(
        RegionVectors,
        fn_constructor_kwargs={
            "model": config.model.model_dump(mode="json"), "num_classes": num_classes, "state": state,
            "device": screen.device, "cpu_threads": max(1, int(screen.cpus_per_actor)),
        },
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=screen.max_actors),
        num_gpus=screen.num_gpus_per_actor or None,
        num_cpus=screen.cpus_per_actor,
        batch_size=screen.batch_size,
        batch_format="pyarrow",
    )
    chunks = [batch["regions"] for batch in vectors.iter_batches(batch_size=None, batch_format="numpy")]
    return np.concatenate(chunks).astype(np.float32)
