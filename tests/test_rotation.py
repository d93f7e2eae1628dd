"""Rotation prediction (``train.backbone.objective: rotation``) and its score: the turned copies a batch gets,
a backbone that learns turns from it in plain torch, the settings that must go together, and a Ray Train fit
whose bundle screens with the ``rotation`` score."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from rayood.bundle import read_manifest
from rayood.config import BackboneOptimSettings, ConfigError, ModelSettings, parse_config
from rayood.detectors.rotation import rotation_score
from rayood.detectors.synthetic import KINDS, evidence_kinds, synthetic_outliers
from rayood.evaluation.metrics import auroc
from rayood.models.backbones import build_backbone, quarter_turn
from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from rayood.train.objectives import BackboneObjective, with_turned_copies
from tests.conftest import NO_LAYERWISE, TINY_MODEL, tiny_config

ROTATION_MODEL = {"backbone": {**TINY_MODEL["backbone"], "rotation_head": True}}


@pytest.mark.parametrize("views", [1, 2, 3])
def test_each_turned_copy_is_its_image_turned_by_its_label(views):
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batch, turns = with_turned_copies(images, views, torch.Generator().manual_seed(1))
    assert batch.shape == (5 * (1 + views), 3, 8, 8) and turns.shape == (len(batch),)
    assert (turns[:5] == 0).all() and ((turns[5:] >= 1) & (turns[5:] <= 3)).all()
    for row in range(len(batch)):
        assert torch.equal(batch[row], quarter_turn(images[row % 5 : row % 5 + 1], int(turns[row]))[0])
    per_image = turns[5:].view(views, 5).T
    assert all(len(set(image_turns.tolist())) == views for image_turns in per_image)  # no turn twice


def _digits(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.from_numpy(digits.images[rows] / 16.0).float()[:, None].expand(-1, 3, -1, -1)
    return F.interpolate(images, size=32, mode="nearest"), torch.from_numpy(digits.target[rows]).long()


def test_a_backbone_fitted_with_rotation_prediction_scores_turned_images_as_out_of_distribution():
    torch.manual_seed(0)
    settings = ModelSettings.model_validate({**TINY_MODEL, **ROTATION_MODEL})
    backbone = build_backbone(settings.backbone, settings.preprocess, 10)
    model = BackboneObjective(backbone, "rotation")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    images, labels = _digits(slice(0, 600))
    generator = torch.Generator().manual_seed(2)
    for step in range(60):
        index = torch.randint(0, len(images), (64,), generator=generator)
        batch, turns = with_turned_copies(images[index], 1, generator)
        loss, logits = model(batch, labels[index], turns)
        assert logits.shape == (64, 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.eval()
    held_out, _ = _digits(slice(1200, 1500))
    with torch.no_grad():

        def score(batch: torch.Tensor) -> np.ndarray:
            features = backbone.features(batch)
            return rotation_score(backbone, batch, features.penultimate, features.logits).numpy()

        upright, turned = score(held_out), score(quarter_turn(held_out, 1))
    assert auroc(upright, turned) > 0.9, auroc(upright, turned)


def test_synthetic_rotations_are_no_evidence_about_a_rotation_trained_backbone():
    assert evidence_kinds(rotation_trained=False) == KINDS
    assert evidence_kinds(rotation_trained=True) == tuple(kind for kind in KINDS if kind != "rotate")
    pixels = np.zeros((20, 8, 8, 3), dtype=np.uint8)
    _, kinds = synthetic_outliers(pixels, np.arange(20) % 2, 5, seed=0, kinds_made=evidence_kinds(True))
    assert "rotate" not in kinds and len(kinds) == 5 * (len(KINDS) - 1)


def test_rotation_objective_and_head_go_together():
    with pytest.raises(ConfigError, match=r"objective rotation needs model\.backbone\.rotation_head"):
        parse_config({"train": {"backbone": {"objective": "rotation"}}})
    with pytest.raises(ConfigError, match=r"model\.backbone\.rotation_head is trained only by"):
        parse_config({"model": {"backbone": {"rotation_head": True}}})
    with pytest.raises(ConfigError, match="rotation_views"):
        parse_config({"train": {"backbone": {"rotation_views": 4}}})
    assert BackboneOptimSettings().rotation_views == 3  # the paper's: every turn of every image


def test_a_rotation_bundle_fits_with_ray_train_and_screens_the_rotation_score(ray_cluster, demo_data, tmp_path):
    fit_path, corpus = demo_data
    bundle = str(tmp_path / "rotation")
    config = tiny_config(
        model={**ROTATION_MODEL, **NO_LAYERWISE},
        train={
            "data": [str(fit_path)],
            "bundle": bundle,
            "backbone": {"objective": "rotation", "rotation_views": 1, "epochs": 2, "batch_size": 64, "lr": 0.05},
        },
        screen={
            "inputs": [str(corpus)],
            "output": str(tmp_path / "report"),
            "bundle": bundle,
            "decision": {"score": "rotation", "alpha": 0.05},
        },
    )
    fit(config)
    manifest = json.load(open(f"{bundle}/manifest.json"))
    scores = read_manifest(bundle).scores
    assert "rotation" in scores and scores.index("rotation") == 3  # after the classifier's
    assert manifest["fusion"]["kinds"] == sorted(set(KINDS) - {"rotate"})  # taught to it: no evidence
    summary, _ = screen(config)
    report = pads.dataset(f"{tmp_path}/report/rows").to_table()
    assert report.num_rows == summary["expected_rows"]
    assert report.column("score_rotation").null_count == report.column("pvalue_rotation").null_count == 0
    assert summary["decision"]["score"] == "rotation"
