"""A detector family with fitted state added through one module and one registry entry: the fit streams its
statistics in the feature pass and writes its file, the manifest records it, and screening scores with it (in
Ray's worker processes, which never saw the registry entry: they load what the manifest names)."""

from __future__ import annotations

import numpy as np
import pytest

from rayood.bundle import read_manifest
from rayood.detectors import registry
from rayood.evaluation.metrics import auroc
from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from tests import class_mean_family
from tests.conftest import NO_LAYERWISE, tiny_config
from tests.test_pipeline import read_report

pytestmark = pytest.mark.cluster


def test_a_fitted_family_from_one_module_and_one_registry_entry_fits_and_screens(
    ray_cluster, demo_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, class_mean_family.SPEC))
    fit_path, corpus = demo_data
    bundle = str(tmp_path / "bundle")
    fit(tiny_config(model=NO_LAYERWISE, train={"data": [str(fit_path)], "bundle": bundle}))

    manifest = read_manifest(bundle)
    record = manifest.family("class_mean")
    assert (record.module, record.scores, record.files) == (
        "tests.class_mean_family",
        (class_mean_family.SCORE,),
        (class_mean_family.MEANS_FILE,),
    )
    assert record.facts == {"rows": manifest.data["train_rows"]}, "every training row reached the streamed fit"
    means = np.load(f"{bundle}/{class_mean_family.MEANS_FILE}")["means"]
    assert means.shape == (5, manifest.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=0.5)  # means of unit vectors, not zeros

    output = tmp_path / "report"
    config = tiny_config(
        screen={
            "inputs": [str(corpus)],
            "output": str(output),
            "bundle": bundle,
            "passthrough_columns": ["group"],
            "decision": {"score": class_mean_family.SCORE, "alpha": 0.05},
        }
    )
    summary, _ = screen(config)
    report = read_report(output)
    ok = report.filter(np.asarray(report.column("status").to_pylist()) == "ok")
    scores = ok.column(f"score_{class_mean_family.SCORE}").to_numpy()
    assert ok.num_rows == summary["ok"] > 0 and np.isfinite(scores).all()
    is_ood = np.asarray(ok.column("group").to_pylist()) != "id"
    assert auroc(scores[~is_ood], scores[is_ood]) > 0.7, "the fitted means separate the demo's OOD digits and photos"


def test_a_family_that_needs_more_training_rows_than_there_are_is_refused_before_any_training(
    ray_cluster, demo_data, tmp_path
):
    from rayood.config import ConfigError

    config = tiny_config(
        model={"multiscale": {"knn_k": 10_000}},
        train={"data": [str(demo_data[0])], "bundle": str(tmp_path / "bundle")},
    )
    with pytest.raises(ConfigError, match=r"model\.multiscale k/knn_k = 10000 exceeds the \d+ training rows"):
        fit(config)
    assert not (tmp_path / "bundle-checkpoints").exists(), "no stage started"
