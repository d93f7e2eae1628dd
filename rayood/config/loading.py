"""A whole run's configuration: the sections together, the checks that span them, and reading it from YAML and
the command line."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError, model_validator

from rayood.config.base import ConfigError, Strict
from rayood.config.io import CorpusSettings, RaySettings, S3Settings
from rayood.config.model import ModelSettings
from rayood.config.screen import ScreenSettings
from rayood.config.train import TrainSettings


class DemoSettings(Strict):
    """Build the bundled demo corpora (scikit-learn digits and photos) under ``root`` when missing."""

    root: str = "rayood-demo"
    seed: int = 0


class RayoodConfig(Strict):
    ray: RaySettings = RaySettings()
    s3: S3Settings = S3Settings()
    corpus: CorpusSettings = CorpusSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    screen: ScreenSettings = ScreenSettings()
    demo: DemoSettings | None = None

    @model_validator(mode="after")
    def _finetune_has_a_start(self) -> RayoodConfig:
        if self.train.backbone.objective == "alpa_finetune" and not self.model.backbone.init_weights:
            raise ValueError(
                "train.backbone.objective alpa_finetune needs model.backbone.init_weights (a fitted backbone.pt)"
            )
        return self

    @model_validator(mode="after")
    def _unlabelled_needs_a_frozen_encoder(self) -> RayoodConfig:
        """Without ID labels nothing can train a backbone or a head, and there is no class to predict."""
        if self.model.backbone.classifier:
            return self
        if self.train.backbone.epochs > 0:
            raise ValueError(
                "model.backbone.classifier false (unlabelled ID data) needs a frozen encoder: "
                "train.backbone.epochs 0 (training a backbone needs labels)"
            )
        if self.model.backbone.rotation_head:
            raise ValueError("model.backbone.classifier false leaves no trained rotation_head")
        if self.screen.predictions:
            raise ValueError("screen.predictions needs model.backbone.classifier (there are no ID classes to predict)")
        return self

    @model_validator(mode="after")
    def _rotation_head_is_trained(self) -> RayoodConfig:
        """The rotation objective needs the head; a head nothing trains would score noise (unless it is loaded)."""
        rotation, head = self.train.backbone.objective == "rotation", self.model.backbone.rotation_head
        if rotation and not head:
            raise ValueError("train.backbone.objective rotation needs model.backbone.rotation_head: true")
        if head and not rotation and not self.model.backbone.init_weights:
            raise ValueError(
                "model.backbone.rotation_head is trained only by train.backbone.objective rotation "
                "(or loaded with model.backbone.init_weights from a backbone that has one)"
            )
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> RayoodConfig:
    """Validate a mapping; errors name every bad field and ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return RayoodConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path) -> RayoodConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(data, str(path))


def with_overrides(config: RayoodConfig, section: str, **values: object) -> RayoodConfig:
    """Apply command-line overrides (``None`` means not given) and validate again."""
    given = {key: value for key, value in values.items() if value is not None}
    if not given:
        return config
    data = config.model_dump(mode="python")
    data[section].update(given)
    return parse_config(data, "the command line")
