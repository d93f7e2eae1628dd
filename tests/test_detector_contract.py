"""The detector contract: every registered family loads from a bundle and scores a shared view; a new family
needs one module and one registry line, nothing else in the scorer or the bundle reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayood.bundle_files import BundleFiles
from rayood.bundle_models import load_bundle
from rayood.config import ModelSettings
from rayood.detectors import registry
from rayood.detectors.contract import ScoringView
from rayood.scoring.scorer import Scorer
from tests.test_bundle import SETTINGS, make_bundle

_SMALL_K = {**SETTINGS.model_dump(), "multiscale": {"k": 3, "knn_k": 3}}
WITH_DDP = ModelSettings.model_validate(
    {  # every family on: DDP, and the rotation head for the rotation score
        **_SMALL_K,
        "ddp": {**SETTINGS.ddp.model_dump(), "enabled": True},
        "backbone": {**SETTINGS.backbone.model_dump(), "rotation_head": True},
    }
)
SMALL_K = ModelSettings.model_validate({**_SMALL_K, "ddp": {**SETTINGS.ddp.model_dump(), "enabled": False}})
NO_LAYERWISE = ModelSettings.model_validate(
    {**SMALL_K.model_dump(), "layerwise": {**SETTINGS.layerwise.model_dump(), "enabled": False}}
)


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_every_registered_family_loads_and_scores_exactly_its_names(tmp_path):
    make_bundle(tmp_path, WITH_DDP)
    bundle = load_bundle(str(tmp_path))
    assert list(bundle.detectors) == [spec.family for spec in registry.REGISTRY]
    view = ScoringView.of(bundle.backbone, torch.rand(4, 3, 32, 32), ["a", "b", "c", "d"], bundle.settings)
    for spec in registry.REGISTRY:
        detector = bundle.detectors[spec.family]
        assert list(detector.score_names) == list(spec.score_names(WITH_DDP))
        scores = detector.score(view)
        assert sorted(scores) == sorted(spec.score_names(WITH_DDP)), spec.family
        for name, values in scores.items():
            assert values.shape == (4,) and torch.isfinite(values).all(), name


@pytest.mark.parametrize("settings, family", [(SMALL_K, "ddp"), (NO_LAYERWISE, "layerwise"), (SMALL_K, "rotation")])
def test_a_family_the_settings_disable_is_neither_loaded_nor_named(tmp_path, settings, family):
    make_bundle(tmp_path, settings)
    bundle = load_bundle(str(tmp_path))
    assert family not in bundle.detectors and family not in [record.family for record in bundle.manifest.detectors]
    assert not any(name.startswith(family) for name in registry.score_names(settings))
    view = ScoringView.of(bundle.backbone, torch.rand(2, 3, 32, 32), ["a", "b"], bundle.settings)
    assert {name for detector in bundle.detectors.values() for name in detector.score(view)} == set(
        bundle.manifest.scores
    )


class FeatureNorm:
    """A post-hoc score written against the contract alone: minus the penultimate feature's L2 norm."""

    score_names = ("feature_norm",)

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return {"feature_norm": -view.features.penultimate.norm(dim=1)}

    def to(self, device: torch.device) -> FeatureNorm:
        return self


def load(files: BundleFiles) -> FeatureNorm:
    assert files.settings == SMALL_K  # the loader sees the bundle's own settings
    return FeatureNorm()


def test_a_new_detector_needs_one_module_and_one_registry_line(tmp_path, monkeypatch):
    line = registry.DetectorSpec("feature_norm", __name__, lambda settings: FeatureNorm.score_names)
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, line))
    names = registry.score_names(SMALL_K)
    assert names[-1] == "feature_norm"
    make_bundle(tmp_path, SMALL_K)
    bundle = load_bundle(str(tmp_path))
    pixels = _pixels(3)
    scored = Scorer(bundle, torch.device("cpu")).score(pixels, ["a", "b", "c"])
    assert list(scored.scores) == names
    expected = -np.linalg.norm(scored.embedding, axis=1)
    np.testing.assert_allclose(scored.scores["feature_norm"], expected, rtol=1e-5)


def test_a_registry_module_without_a_loader_fails_loudly(tmp_path, monkeypatch):
    line = registry.DetectorSpec("broken", "rayood.detectors.knn", lambda settings: ("broken",))
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, line))
    make_bundle(tmp_path, SMALL_K)
    with pytest.raises(AttributeError, match="load"):
        load_bundle(str(tmp_path))
