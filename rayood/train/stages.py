"""The Ray Train stages of a fit and what each one's result depends on.

The backbone and the frozen encoder's head are the fit's own stages; every other stage is declared by its detector
family (``DetectorSpec.stage`` in ``detectors/registry.py``), so ``fit.py`` runs the stages of the enabled families
in registry order and names none. A stage's run name carries a fingerprint of the settings it reads: tuning the
denoiser resumes the fitted backbone instead of refitting it, and a changed input never resumes a stale result.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from rayood.config import RayoodConfig
from rayood.detectors.registry import REGISTRY, StageSpec

SHARED_INPUTS = (  # what every stage's result depends on
    "corpus",
    "model.preprocess",
    "train.data",
    "train.seed",
    "train.calibration_fraction",
    "train.num_workers",
)
BACKBONE_STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # name -> (settings read, upstream stages)
    "backbone": (("model.backbone", "train.backbone", "train.augment"), ()),
    "head": (("model.backbone", "train.head"), ("backbone",)),
}
BACKBONE_TEST_TIME_ONLY = {"model.backbone": frozenset({"flip_tta"})}


def _reads_and_upstream(stage: str) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, frozenset[str]]]:
    if stage in BACKBONE_STAGES:
        reads, upstream = BACKBONE_STAGES[stage]
        return reads, upstream, BACKBONE_TEST_TIME_ONLY
    spec = family_stage(stage)
    return spec.reads, spec.upstream, {**BACKBONE_TEST_TIME_ONLY, **spec.test_time_only}


def family_stage(family: str) -> StageSpec:
    for spec in REGISTRY:
        if spec.family == family and spec.stage is not None:
            return spec.stage
    raise KeyError(f"no Ray Train stage named {family!r}")


def _settings_at(config: BaseModel, path: str, exclude: dict[str, frozenset[str]]) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude=set(exclude.get(path, ())))
    return value


def stage_fingerprint(config: RayoodConfig, stage: str) -> str:
    """A short stable hash of what one stage's result depends on: the shared inputs, its own settings less those
    only read at test time, and the fingerprints of the stages it reads."""
    reads, upstream, test_time_only = _reads_and_upstream(stage)
    payload = {path: _settings_at(config, path, test_time_only) for path in (*SHARED_INPUTS, *reads)}
    payload["upstream"] = [stage_fingerprint(config, name) for name in upstream]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
