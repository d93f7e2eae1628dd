"""MODE end to end: SupCon + ALPA backbone training with Ray Train, the bank (as faiss IVF indexes, the
storage large banks get; the shared fixture's bundle covers the exact one), and screening with it."""

import json
import logging
import os

import faiss
import numpy as np
import pyarrow.dataset as pads
import pytest

from rayood.bundle import read_manifest
from rayood.config import ConfigError, parse_config
from rayood.detectors.registry import BANK_FILE, KNN_INDEX_FILE, MULTISCALE_INDEX_FILE
from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from tests.conftest import NO_LAYERWISE, tiny_config


def test_alpa_train_fits_builds_a_bank_and_screens(ray_cluster, demo_data, tmp_path, caplog):
    """Also: the console shows each stage's epochs without --verbose, the bank takes the mirror-averaged maps, and
    the last epoch recomputes the BatchNorm statistics on clean images (``test_batch_norm_statistics.py``)."""
    fit_path, corpus = demo_data
    bundle = str(tmp_path / "alpa")
    config = tiny_config(
        model={"multiscale": {"index": "ivf", "ivf_lists": 4, "ivf_probe": 4, "flip_average": True}, **NO_LAYERWISE},
        train={
            "data": [str(fit_path)],
            "bundle": bundle,
            "backbone": {"objective": "alpa_train", "epochs": 2, "batch_size": 32, "lr": 0.01, "alpa_dim": 16},
        },
        screen={
            "inputs": [str(corpus)],
            "output": str(tmp_path / "report"),
            "bundle": bundle,
            "decision": {"score": "multiscale", "alpha": 0.05},
        },
    )
    with caplog.at_level(logging.INFO, logger="rayood.train.progress"):
        fit(config)
    assert "backbone: epoch 1 of 2, loss" in caplog.text and "train accuracy" in caplog.text
    assert "s per epoch, about" in caplog.text and "backbone: epoch 2 of 2, loss" in caplog.text
    manifest = json.load(open(f"{bundle}/manifest.json"))
    assert manifest["training"]["backbone"]["epoch"] == 2
    assert manifest["training"]["backbone"]["batch_norm_recomputed_s"] >= 0
    assert "layerwise" not in manifest["training"] and not any(
        s.startswith("layerwise") for s in read_manifest(bundle).scores
    )
    assert not os.path.exists(f"{bundle}/{BANK_FILE}")
    for name, vectors in ((MULTISCALE_INDEX_FILE, 6), (KNN_INDEX_FILE, 1)):
        index = faiss.read_index(f"{bundle}/{name}")
        assert (index.ntotal, index.d) == (manifest["data"]["train_rows"] * vectors, manifest["stage_dims"][-1])
        index.make_direct_map()
        np.testing.assert_allclose(np.linalg.norm(index.reconstruct_n(0, 10), axis=1), 1.0, rtol=1e-4)
    summary, _ = screen(config)
    report = pads.dataset(f"{tmp_path}/report/rows").to_table()
    assert report.num_rows == summary["expected_rows"]
    for name in ("knn", "multiscale"):
        assert report.column(f"score_{name}").null_count == 0
    assert summary["decision"]["score"] == "multiscale"


def test_alpa_finetune_needs_a_starting_backbone():
    with pytest.raises(ConfigError, match="init_weights"):
        parse_config({"train": {"backbone": {"objective": "alpa_finetune"}}})


def test_an_unknown_torchvision_weights_name_is_refused_before_any_cluster_work(demo_data, tmp_path, monkeypatch):
    def no_cluster(_settings):
        raise AssertionError("cluster work started before the config was checked")

    monkeypatch.setattr("rayood.train.fit.init_ray", no_cluster)
    fit_path, _ = demo_data
    config = tiny_config(
        model={"backbone": {"arch": "resnet18", "cifar_stem": True, "init_weights": "ResNet18_Weights.NO_SUCH"}},
        train={"data": [str(fit_path)], "bundle": str(tmp_path / "bundle")},
    )
    with pytest.raises(ConfigError, match=r"model\.backbone\.init_weights: 'ResNet18_Weights\.NO_SUCH' is not"):
        fit(config)
