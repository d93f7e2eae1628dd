"""Typed configuration for the rayood jobs.

One YAML file describes a whole run (reading, model, fitting, screening). Every section is a pydantic
model that forbids unknown keys, so a typo is an error that names the field and the file instead of a
setting that is silently ignored. Credentials never live here: S3 keys come from the standard AWS
environment variables (or the cluster's instance role).

One module per concern: ``io`` (the cluster, S3, the corpus layout), ``model`` (preprocessing, backbone and the
detector families), ``train`` (fitting), ``screen`` (screening), ``loading`` (the whole file, its cross-section
checks, YAML and command-line overrides). The settings sit below everything else in rayood and import none of it
but the report's column names.
"""

from rayood.config.base import ConfigError
from rayood.config.io import IMAGE_EXTENSIONS, CorpusSettings, RaySettings, S3Settings
from rayood.config.loading import DemoSettings, RayoodConfig, load_config, parse_config, with_overrides
from rayood.config.model import (
    RAYOOD_ARCHS,
    TORCHVISION_WEIGHTS,
    BackboneSettings,
    DDPSettings,
    FusionSettings,
    LayerwiseSettings,
    MahalanobisSettings,
    ModelSettings,
    MultiscaleSettings,
    NoiseScheduleSettings,
    PreprocessSettings,
)
from rayood.config.screen import DecisionSettings, ScreenSettings, TruthSettings
from rayood.config.train import (
    BackboneOptimSettings,
    DiffusionOptimSettings,
    EmaOptimSettings,
    OptimSettings,
    TrainSettings,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "RAYOOD_ARCHS",
    "TORCHVISION_WEIGHTS",
    "BackboneOptimSettings",
    "BackboneSettings",
    "ConfigError",
    "CorpusSettings",
    "DDPSettings",
    "DecisionSettings",
    "DemoSettings",
    "DiffusionOptimSettings",
    "EmaOptimSettings",
    "FusionSettings",
    "LayerwiseSettings",
    "MahalanobisSettings",
    "ModelSettings",
    "MultiscaleSettings",
    "NoiseScheduleSettings",
    "OptimSettings",
    "PreprocessSettings",
    "RaySettings",
    "RayoodConfig",
    "S3Settings",
    "ScreenSettings",
    "TrainSettings",
    "TruthSettings",
    "load_config",
    "parse_config",
    "with_overrides",
]
