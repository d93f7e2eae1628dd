"""The streaming fits: one pass of per-row arrays from the actors, taken batch by batch on the driver, gives the
same bank and Mahalanobis statistics as computing them on all rows at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from rayood.bundle import BACKBONE_FILE
from rayood.bundle_files import state_dict_bytes
from rayood.config import ModelSettings
from rayood.data.decode import pixels_to_column
from rayood.detectors.mahalanobis import GaussianStatistics, mahalanobis_features
from rayood.detectors.multiscale import search_vectors
from rayood.detectors.registry import BANK_FILE, MAHALANOBIS_FILE
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.storage import resolve
from rayood.train.references import FeatureRows, new_fit, streaming_fits

SETTINGS = ModelSettings.model_validate(
    {"backbone": {"widths": [4, 8], "blocks": [1, 1]}, "multiscale": {"k": 2, "knn_k": 2, "bank_fraction": 0.5}}
)


def test_streamed_batches_give_the_statistics_and_bank_of_all_rows_at_once(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(SETTINGS.backbone, SETTINGS.preprocess, 3).eval()
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = ["a", "b", "c", "a"] * 10
    ids = [f"row-{i}" for i in range(40)]
    (tmp_path / BACKBONE_FILE).write_bytes(state_dict_bytes(backbone.state_dict()))
    streaming = streaming_fits(SETTINGS)
    assert set(streaming) == {"mahalanobis", "multiscale"}
    actor = FeatureRows(
        SETTINGS.model_dump(mode="json"),
        ["a", "b", "c"],
        "label",
        str(tmp_path / BACKBONE_FILE),
        None,
        "cpu",
        streaming=streaming,
    )
    fits = {family: new_fit(path, SETTINGS, 0, 3, str(tmp_path)) for family, path in streaming.items()}
    in_bank = []
    for start in (0, 16, 32):  # uneven batches, as Ray Data hands them over
        batch = pa.table(
            {
                "pixels": pixels_to_column(pixels[start : start + 16]),
                "label": labels[start : start + 16],
                "id": ids[start : start + 16],
            }
        )
        rows = actor(batch)
        in_bank.append(rows["multiscale/in_bank"])
        for family, fit in fits.items():
            fit.partial_fit({k.split("/", 1)[1]: v for k, v in rows.items() if k.startswith(f"{family}/")})
    bundle = resolve(str(tmp_path / "bundle"))
    facts = {family: fit.finish(bundle) for family, fit in fits.items()}

    with torch.no_grad():
        features = backbone.features(uint8_to_unit(torch.from_numpy(pixels.copy())))
    kept = np.concatenate(in_bank)
    assert 0 < kept.sum() < 40  # bank_fraction 0.5 kept some rows, not all
    assert facts["multiscale"] == {"bank_rows": int(kept.sum()), "regions": 6, "index": "exact"}
    bank = np.load(tmp_path / "bundle" / BANK_FILE)
    np.testing.assert_allclose(
        bank, search_vectors(features, None, SETTINGS.multiscale).numpy()[kept], rtol=1e-5, atol=1e-6
    )
    whole = GaussianStatistics(3, 8).partial_fit(
        mahalanobis_features(features.penultimate.numpy(), True),
        np.array([{"a": 0, "b": 1, "c": 2}[x] for x in labels]),
    )
    stored = np.load(tmp_path / "bundle" / MAHALANOBIS_FILE)
    np.testing.assert_allclose(stored["means"], whole.means(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored["precision"], whole.precision(), rtol=1e-3, atol=1e-3)
    in_memory = fits["mahalanobis"].detector()  # what a benchmark scores with, without a bundle
    np.testing.assert_allclose(in_memory.means.numpy(), stored["means"], rtol=1e-6)
    np.testing.assert_allclose(in_memory.precision.numpy(), stored["precision"], rtol=1e-6)
