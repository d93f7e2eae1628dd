"""Screening a corpus (``screen.*``): inputs, the report, the decision and the scoring actors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayood.config.base import Strict
from rayood.report.columns import COMPUTED_COLUMNS, COMPUTED_PREFIXES


class DecisionSettings(Strict):
    score: str = "layerwise_mfsim"
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level of is_ood")


class TruthSettings(Strict):
    """A ground-truth column for demo and evaluation corpora: rows whose value is in ``id_values`` are ID."""

    column: str
    id_values: tuple[str, ...]


class ScreenSettings(Strict):
    inputs: tuple[str, ...] = ()
    output: str | None = None
    bundle: str | None = None
    overwrite: bool = Field(default=False, description="replace a finished report at the output")
    fit_if_missing: bool = Field(default=False, description="fit the bundle first when it does not exist")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=256, ge=1)
    decode_batch_size: int = Field(default=64, ge=1)
    min_actors: int = Field(
        default=1,
        ge=1,
        description="scoring actors started first; min_actors x cpus_per_actor must leave a CPU for reading and "
        "decoding (a local cluster refuses a pool that would not, since it would wait for ever)",
    )
    max_actors: int = Field(default=1, ge=1, description="the pool grows to this many where CPUs (or GPUs) are free")
    num_gpus_per_actor: float = Field(default=0, ge=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per scoring actor (default: the floor of cpus_per_actor); on a CPU-only machine "
        "the core count lets the actor use the cores that decoding leaves idle",
    )
    passthrough_columns: tuple[str, ...] = ()
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="larger encoded files are error rows; default: the bundle's model.preprocess.max_bytes",
    )
    max_pixels: int | None = Field(
        default=None, ge=1, description="larger images are error rows (decompression bombs); default: the bundle's"
    )
    embedding: bool = Field(default=False, description="add the penultimate features as a float16 column")
    predictions: bool = Field(default=False, description="add the classifier's ID class as predicted_class")
    decision: DecisionSettings = DecisionSettings()
    truth: TruthSettings | None = None
    progress_every_s: float = Field(
        default=30, ge=0, description="log the rows screened so far, their rate and an ETA this often (0: never)"
    )
    report_thumbnails: int = Field(
        default=24, ge=0, le=200, description="most out-of-distribution images shown in report.html (0: none)"
    )

    @property
    def actor_threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_actor))

    @model_validator(mode="after")
    def _pool(self) -> ScreenSettings:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        if self.truth and self.truth.column not in self.passthrough_columns:
            raise ValueError(f"truth.column {self.truth.column!r} must also be in passthrough_columns")
        clashes = [c for c in self.passthrough_columns if c in COMPUTED_COLUMNS or c.startswith(COMPUTED_PREFIXES)]
        if clashes:
            raise ValueError(
                f"passthrough_columns {clashes} would overwrite columns that screening computes "
                f"({', '.join(COMPUTED_COLUMNS)}, {'*, '.join(COMPUTED_PREFIXES)}*): rename them in the input"
            )
        return self


# Report columns that screening writes itself; an input column passed through under one of these names would
# replace the computed value (a row with status "ok" and garbage bytes would stay "ok").
