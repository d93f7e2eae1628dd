"""The Ray Train stages detectors declare: which family needs one, its loop, its optimiser settings, what the
loop reads beyond the shared inputs, whether it trains on the feature cache or on pixels, and the bundle file its
result (the EMA weights) becomes. ``fit.py`` runs the stages of the enabled families in registry order after the
backbone stage and the feature pass; a detector with a trained model adds one entry here (and its loop), and
nothing in ``fit.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from rayood.bundle import DDPM_FILE, LAYERWISE_FILE
from rayood.config import RayoodConfig, TrainSettings
from rayood.train.loops import ddpm_loop, layerwise_loop


@dataclass(frozen=True)
class FittedBackbone:
    """What the detector stages may read of the backbone stage's result."""

    stage_dims: list[int]


@dataclass(frozen=True)
class DetectorStage:
    name: str  # the run name's and the manifest's ``training`` key; ``RayoodConfig.stage_fingerprint`` knows it
    loop: Callable[[dict], None]
    optim: Callable[[TrainSettings], BaseModel]
    inputs: Callable[[RayoodConfig, FittedBackbone], dict]  # LoopConfig fields its loop reads beyond the shared
    file: str
    reads_features: bool  # trains on the fit's feature cache (``references.py``), not on decoded pixels


STAGES: dict[str, DetectorStage] = {  # by detector family (``detectors/registry.py``)
    "layerwise": DetectorStage(
        "layerwise",
        layerwise_loop,
        lambda train: train.layerwise,
        lambda config, backbone: {"stage_dims": tuple(backbone.stage_dims)},
        LAYERWISE_FILE,
        reads_features=True,
    ),
    "ddp": DetectorStage(
        "ddpm",
        ddpm_loop,
        lambda train: train.ddpm,
        lambda config, backbone: {"augment": tuple(config.train.augment)},
        DDPM_FILE,
        reads_features=False,
    ),
}
