"""The Ray Train stages detectors declare: which family needs one, its loop, its optimiser settings, what the
loop reads beyond the shared inputs, and the bundle file its result (the EMA weights) becomes. ``fit.py`` runs
the stages of the enabled families in registry order after the backbone stage; a detector with a trained model
adds one entry here (and its loop), and nothing in ``fit.py``."""

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

    state: dict
    stage_dims: list[int]


@dataclass(frozen=True)
class DetectorStage:
    name: str  # the run name's and the manifest's ``training`` key; ``RayoodConfig.stage_fingerprint`` knows it
    loop: Callable[[dict], None]
    optim: Callable[[TrainSettings], BaseModel]
    inputs: Callable[[RayoodConfig, FittedBackbone], dict]
    file: str


STAGES: dict[str, DetectorStage] = {  # by detector family (``detectors/registry.py``)
    "layerwise": DetectorStage(
        "layerwise", layerwise_loop, lambda train: train.layerwise,
        lambda config, backbone: {"backbone_state": backbone.state, "stage_dims": backbone.stage_dims,
                                  "feature_batch_size": 256},
        LAYERWISE_FILE,
    ),
    "ddp": DetectorStage(
        "ddpm", ddpm_loop, lambda train: train.ddpm, lambda config, backbone: {"augment": list(config.train.augment)},
        DDPM_FILE,
    ),
}
