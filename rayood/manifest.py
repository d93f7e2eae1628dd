"""A bundle's manifest, typed and frozen: what a fit recorded and everything that reads a bundle relies on.

Reading checks it before anything is built from it, so a crafted or damaged manifest is one clear error, and its
model settings pass the same strict checks and bounds as a config. Each detector family has a record: the module
that loads it, its scores (in report column order), the files the bundle holds for it and the facts its fitting
recorded, so scoring loads what the bundle holds whatever the registry of the reading code says.

Format 2 (this one) added the family records. Format 1 manifests are read through ``from_format_1``, an explicit
migration: its families follow from its settings, the way format 1 code derived them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayood.config import ModelSettings
from rayood.detectors.fusion import FUSED
from rayood.detectors.registry import (
    BANK_FILE,
    CLASSIFIER,
    KNN_INDEX_FILE,
    LAYERWISE,
    LAYERWISE_FILE,
    MAHALANOBIS,
    MAHALANOBIS_FILE,
    MULTISCALE,
    MULTISCALE_INDEX_FILE,
    ROTATION,
)

FORMAT_VERSION = 2
MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FamilyRecord(_Frozen):
    """One detector family in a bundle. ``module`` names installed code (``load(files)``): a bundle carries no code."""

    family: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    module: str = Field(pattern=MODULE_NAME)
    scores: tuple[str, ...] = Field(min_length=1)
    files: tuple[str, ...] = ()
    facts: dict[str, Any] = {}


class FusionRecord(_Frozen):
    """``fused``: which scores, by which rule, and the synthetic-outlier evidence they were chosen on."""

    rule: Literal["cauchy", "fisher"]
    scores: tuple[str, ...] = Field(min_length=1)
    kinds: tuple[str, ...] | None = None
    single_mean_auroc: dict[str, float] | None = None
    steps: list[dict[str, Any]] | None = None
    synthetic_outliers: int | None = None


class CalibrationRecord(_Frozen):
    file: str
    rows: int = Field(ge=1)


class Manifest(_Frozen):
    format_version: Literal[2] = FORMAT_VERSION
    bundle_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    created: str
    model: ModelSettings
    class_names: tuple[str, ...] = Field(min_length=1, max_length=100_000)  # 1: unlabelled ID data
    stage_dims: tuple[Annotated[int, Field(ge=1, le=65_536)], ...] = Field(min_length=2, max_length=16)
    feature_dim: int = Field(ge=1, le=65_536)  # the penultimate vector's and the last map's regions' dimension
    detectors: tuple[FamilyRecord, ...] = Field(min_length=1)
    fusion: FusionRecord | None = None
    calibration: CalibrationRecord | None = None  # None until the fit has scored its held-out rows
    heldout_accuracy: float | None = None
    data: dict[str, Any] = {}
    training: dict[str, Any] = {}
    versions: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(set(self.scores)) != len(self.scores):
            raise ValueError(f"a score is reported by two families: {list(self.scores)}")
        if len({record.family for record in self.detectors}) != len(self.detectors):
            raise ValueError("a family is recorded twice")
        if self.fusion and not set(self.fusion.scores) <= set(self.scores):
            raise ValueError(f"fusion.scores {list(self.fusion.scores)} are not all scores of this bundle")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def scores(self) -> list[str]:
        """The detectors' scores, in report column order."""
        return [name for record in self.detectors for name in record.scores]

    @property
    def report_scores(self) -> list[str]:
        """The scores a report has: the detectors', then ``fused`` when configured."""
        return [*self.scores, *([FUSED] if self.fusion else [])]

    def family(self, name: str) -> FamilyRecord:
        return next(record for record in self.detectors if record.family == name)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


# format 1: which family reported which scores, and the keys of its ``files`` map
_FORMAT_1_FAMILIES = (
    ("classifier", "rayood.detectors.classifier", CLASSIFIER, ()),
    ("rotation", "rayood.detectors.rotation", ROTATION, ()),
    ("mahalanobis", "rayood.detectors.mahalanobis", MAHALANOBIS, ("mahalanobis",)),
    ("layerwise", "rayood.detectors.layerwise", LAYERWISE, ("layerwise",)),
    ("multiscale", "rayood.detectors.multiscale", MULTISCALE, ("multiscale_bank", "multiscale_index", "knn_index")),
)
_FORMAT_1_DEFAULT_FILES = {
    "mahalanobis": MAHALANOBIS_FILE,
    "layerwise": LAYERWISE_FILE,
    "multiscale_bank": BANK_FILE,
    "multiscale_index": MULTISCALE_INDEX_FILE,
    "knn_index": KNN_INDEX_FILE,
    "ddpm": "ddpm.pt",
}
FORMAT_1_FILES = frozenset({"ddpm.pt"})  # file names format 1 used that no family writes any more


def from_format_1(old: dict) -> dict:
    """A format 1 manifest as format 2, from what it holds (it named no families: their scores and files say):

    - settings added since, at the values those bundles were fitted with: ``mahalanobis.normalise`` false (raw
      features) and ``multiscale.global_vector`` mean (the map's mean);
    - the family records, from its ``scores``, ``files`` and ``multiscale`` bank facts;
    - ``feature_dim``, where it predates torchvision encoders: the last map's channels."""
    new = {key: value for key, value in old.items() if key not in ("files", "multiscale", "scores", "num_classes")}
    new["format_version"] = FORMAT_VERSION
    if isinstance(old.get("model"), dict):
        model = new["model"] = {**old["model"]}
        model.setdefault("mahalanobis", {"normalise": False})
        if isinstance(model.get("multiscale"), dict):
            model["multiscale"] = {"global_vector": "mean", **model["multiscale"]}
    if not new.get("feature_dim") and isinstance(old.get("stage_dims"), list) and old["stage_dims"]:
        new["feature_dim"] = old["stage_dims"][-1]
    scores, files = list(old.get("scores") or []), dict(old.get("files") or {})
    records = []
    for family, module, names, file_keys in _FORMAT_1_FAMILIES:
        if set(names) <= set(scores):
            held = [files.get(key) or _FORMAT_1_DEFAULT_FILES[key] for key in file_keys if key in files]
            records.append({"family": family, "module": module, "scores": list(names), "files": held})
    ddp = [name for name in scores if name == "ddp" or name.startswith("ddp_t")]
    if ddp:
        records.append(
            {"family": "ddp", "module": "rayood.detectors.ddp", "scores": ddp, "files": [files.get("ddpm", "ddpm.pt")]}
        )
    bank = old.get("multiscale")
    for record in records:
        if record["family"] == "multiscale" and isinstance(bank, dict):
            record["facts"] = {**bank, "index": "ivf" if "multiscale_index" in files else "exact"}
    new["detectors"] = records
    return new
