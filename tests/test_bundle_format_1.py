"""Bundles of format 1 keep working. ``fixtures/bundle_format_1`` is the tiny test bundle exactly as main at
2fccf18 (the last format 1 code) fitted it on the demo digits: read through the explicit migration
(``rayood.manifest.from_format_1``), loaded, and screened. ``fixtures/bundle_format_1_scores.json`` holds what
that code's Scorer gave for the images of ``_images()``: today's code must give the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from rayood.bundle import read_manifest
from rayood.bundle_models import load_bundle
from rayood.scoring.scorer import Scorer

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_format_1"
OLD_SCORES = Path(__file__).parent / "fixtures" / "bundle_format_1_scores.json"
FORMAT_1_SCORES = ["msp", "energy", "maxlogit", "mahalanobis", "layerwise_mse", "layerwise_mfsim", "knn", "multiscale"]


def _copy_with(tmp_path: Path, change) -> str:
    """The fixture with its manifest changed, as an older format 1 bundle would have it."""
    target = tmp_path / "bundle"
    shutil.copytree(FIXTURE, target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return str(target)


def test_a_format_1_manifest_is_migrated_into_family_records():
    raw = json.loads((FIXTURE / "manifest.json").read_text())
    assert raw["format_version"] == 1 and "detectors" not in raw
    manifest = read_manifest(str(FIXTURE))
    assert manifest.format_version == 2 and manifest.scores == FORMAT_1_SCORES == raw["scores"]
    assert [(r.family, r.module, r.files) for r in manifest.detectors] == [
        ("classifier", "rayood.detectors.classifier", ()),
        ("mahalanobis", "rayood.detectors.mahalanobis", ("mahalanobis.npz",)),
        ("layerwise", "rayood.detectors.layerwise", ("layerwise_denoiser.pt",)),
        ("multiscale", "rayood.detectors.multiscale", ("multiscale_bank.npy",)),
    ]
    assert manifest.family("multiscale").facts == {"bank_rows": 519, "regions": 6, "index": "exact"}
    assert manifest.num_classes == raw["num_classes"] and manifest.fusion.scores == tuple(raw["fusion"]["scores"])


def _images() -> tuple[np.ndarray, list[str]]:
    """16 of scikit-learn's digits, upsampled by repetition to 32 x 32 RGB, then two ramps, a checkerboard and a
    grey square: pure NumPy, so the pixels cannot drift with an image library."""
    digits = load_digits().images[:16]
    grey = np.repeat(np.repeat(np.round(digits * 255 / 16).astype(np.uint8), 4, axis=1), 4, axis=2)
    ramp = np.linspace(0, 255, 32).astype(np.uint8)
    patterns = [
        np.broadcast_to(ramp[None, :, None], (32, 32, 3)),
        np.broadcast_to(ramp[:, None, None], (32, 32, 3)),
        (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2),
        np.full((32, 32, 3), 128, np.uint8),
    ]
    pixels = np.concatenate([np.repeat(grey[..., None], 3, axis=3), np.stack(patterns)])
    return np.ascontiguousarray(pixels), [f"row-{i}" for i in range(len(pixels))]


def test_a_format_1_bundle_loads_and_scores_as_the_code_that_wrote_it_did():
    bundle = load_bundle(str(FIXTURE))
    assert list(bundle.detectors) == ["classifier", "mahalanobis", "layerwise", "multiscale"]
    assert bundle.report_scores == [*FORMAT_1_SCORES, "fused"] and set(bundle.calibration) == set(bundle.report_scores)
    pixels, ids = _images()
    old = json.loads(OLD_SCORES.read_text())
    assert old["ids"] == ids
    scored = Scorer(bundle, torch.device("cpu")).score(pixels, ids)
    assert list(scored.scores) == FORMAT_1_SCORES
    for name in FORMAT_1_SCORES:
        np.testing.assert_allclose(scored.scores[name], old["scores"][name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert scored.predicted.tolist() == old["predicted"]


def test_format_1_bundles_from_before_the_normalisation_setting_keep_raw_mahalanobis(tmp_path):
    uri = _copy_with(tmp_path, lambda manifest: manifest["model"].pop("mahalanobis"))
    assert load_bundle(uri).detectors["mahalanobis"].normalise is False
    assert load_bundle(str(FIXTURE)).detectors["mahalanobis"].normalise is True


def test_format_1_banks_from_before_the_global_vector_setting_keep_the_mean_global_vector(tmp_path):
    uri = _copy_with(tmp_path, lambda manifest: manifest["model"]["multiscale"].pop("global_vector"))
    assert load_bundle(uri).settings.multiscale.global_vector == "mean"
    assert load_bundle(str(FIXTURE)).settings.multiscale.global_vector == "penultimate"


@pytest.mark.cluster
def test_a_format_1_bundle_screens_the_demo_corpus(ray_cluster, demo_data, tmp_path):
    from rayood.screen.pipeline import screen
    from tests.conftest import tiny_config

    config = tiny_config(
        screen={
            "inputs": [str(demo_data[1])],
            "output": str(tmp_path / "report"),
            "bundle": str(FIXTURE),
            "passthrough_columns": ["group"],
            "truth": {"column": "group", "id_values": ["id"]},
        }
    )
    summary, _ = screen(config)
    assert summary["ok"] == summary["rows"] > 1000 and summary["bundle_id"] == read_manifest(str(FIXTURE)).bundle_id
    aurocs = {name: scores["auroc"] for name, scores in summary["evaluation"]["scores"].items()}
    assert set(aurocs) == {*FORMAT_1_SCORES, "fused"}
    assert np.isfinite(list(aurocs.values())).all() and aurocs["fused"] > 0.9, aurocs  # 0.9445 when recorded
