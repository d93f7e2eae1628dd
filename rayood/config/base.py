"""What every settings section shares: the error a configuration problem raises, and strictness."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class Strict(BaseModel):
    """A settings section: unknown keys are errors (a typo names its field), and settings never change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
