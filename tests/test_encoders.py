"""Torchvision models as backbones: default taps, weights and their preprocessing, configuration errors before
any cluster work, and a frozen encoder fitted (feature pass once, linear head, DLSR) and screened."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from rayood.bundle import read_manifest
from rayood.config import BackboneSettings, ConfigError, PreprocessSettings, parse_config
from rayood.models.backbones import build_backbone, load_matching
from rayood.report.columns import STATUS_OK
from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from tests.conftest import NO_LAYERWISE, tiny_config

SMALL_INPUT = {"native_size": 32, "input_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _backbone(arch: str, size: int = 224, taps: tuple[str, ...] = ()):
    return build_backbone(
        BackboneSettings(arch=arch, taps=taps), PreprocessSettings(native_size=32, input_size=size), 10
    )


def test_default_taps_are_the_stage_ends_dlsr_reads():
    """EfficientNet-B4's five stage ends are the DLSR paper's 24 + 32 + 56 + 160 + 448 = 720 dimensions; the 1x1
    head (1,792 channels) is the penultimate map, not a tap. A ResNet taps its stem and its four stages."""
    b4 = _backbone("efficientnet_b4")
    assert b4.encoder.taps == ["features.1", "features.2", "features.3", "features.5", "features.7"]
    assert b4.stage_dims() == [24, 32, 56, 160, 448] and b4.fc.in_features == 1792
    assert _backbone("mobilenet_v2").stage_dims() == [16, 24, 32, 96, 320]
    resnet = _backbone("resnet34")
    assert (
        resnet.encoder.taps == ["relu", "layer1", "layer2", "layer3", "layer4"] and resnet.encoder.last_node == "layer4"
    )


def test_taps_from_the_config_and_the_maps_are_the_models_own():
    """A torchvision state_dict loads as it is (its ImageNet classifier left out), and the penultimate vector
    is the pooled map torchvision's own classifier reads."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2().eval()
    backbone = _backbone("mobilenet_v2", size=64, taps=("features.2", "features.18"))
    assert load_matching(backbone, net.state_dict()) == ["fc.bias", "fc.weight"]
    backbone.eval()
    images = torch.rand(2, 3, 32, 32)
    features = backbone.features(images)
    expected = net.features(backbone.prepare(images))
    torch.testing.assert_close(features.penultimate, expected.mean(dim=(2, 3)))
    assert [m.shape[1] for m in features.stage_maps] == [24, 1280]


def test_named_torchvision_weights_bring_their_preprocessing_unless_the_config_sets_it():
    weights = "MobileNet_V2_Weights.IMAGENET1K_V2"
    config = parse_config({"model": {"backbone": {"arch": "mobilenet_v2", "init_weights": weights}}})
    assert (config.model.preprocess.input_size, config.model.preprocess.mean) == (224, (0.485, 0.456, 0.406))
    own = parse_config(
        {
            "model": {
                "backbone": {"arch": "mobilenet_v2", "init_weights": weights},
                "preprocess": {"input_size": 96, "std": [0.5, 0.5, 0.5]},
            }
        }
    )
    assert (own.model.preprocess.input_size, own.model.preprocess.std) == (96, (0.5, 0.5, 0.5))
    assert own.model.preprocess.mean == (0.485, 0.456, 0.406)


@pytest.fixture
def no_cluster(monkeypatch):
    def refuse(_settings):
        raise AssertionError("cluster work started before the config was checked")

    monkeypatch.setattr("rayood.train.fit.init_ray", refuse)


@pytest.mark.parametrize(
    ("backbone", "field", "message"),
    [
        ({"arch": "mobilenet_v9"}, "model.backbone.arch", "neither a rayood backbone nor a torchvision"),
        ({"arch": "vit_b_16"}, "model.backbone.arch", "tokens, not"),
        ({"arch": "mobilenet_v2", "taps": ["features.1", "features.99"]}, "model.backbone.taps", "features.99"),
    ],
)
def test_an_unknown_model_or_node_is_a_config_error_before_any_cluster_work(
    no_cluster, demo_data, tmp_path, backbone, field, message
):
    config = tiny_config(
        model={"backbone": backbone, "preprocess": SMALL_INPUT},
        train={"data": [str(demo_data[0])], "bundle": str(tmp_path / "bundle")},
    )
    with pytest.raises(ConfigError, match=rf"{field}: .*{message}"):
        fit(config)


def test_weights_of_another_architecture_are_a_config_error_before_any_cluster_work(no_cluster, demo_data, tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = tiny_config(
        model={"backbone": {"arch": "mobilenet_v2", "init_weights": str(weights)}, "preprocess": SMALL_INPUT},
        train={"data": [str(demo_data[0])], "bundle": str(tmp_path / "bundle")},
    )
    with pytest.raises(
        ConfigError, match=r"model\.backbone\.init_weights: the weights do not fit mobilenet_v2: 312 of"
    ):
        fit(config)


def _self_made_mobilenet() -> torch.nn.Module:
    """Random MobileNetV2 weights with BatchNorm statistics measured on noise: at torchvision's initial
    statistics (mean 0, variance 1) the maps shrink ~30x per stage and the penultimate vector is ~1e-10."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches seen
    net.train()
    with torch.no_grad():
        net(torch.randn(64, 3, 64, 64))
    return net.eval()


def test_a_frozen_mobilenet_fits_from_one_feature_pass_and_screens(ray_cluster, demo_data, tmp_path):
    """A torchvision model outside rayood's own four, with self-made weights given as a state_dict file: the
    backbone is never trained, the feature pass runs it once over the training rows, and the linear head and
    the DLSR denoiser train on that cache."""
    weights = tmp_path / "mobilenet_v2.pt"
    net = _self_made_mobilenet()
    torch.save(net.state_dict(), weights)
    fit_path, corpus = demo_data
    bundle = str(tmp_path / "frozen")
    config = tiny_config(
        model={"backbone": {"arch": "mobilenet_v2", "init_weights": str(weights)}, "preprocess": SMALL_INPUT},
        train={
            "data": [str(fit_path)],
            "bundle": bundle,
            "backbone": {"epochs": 0},
            "head": {"epochs": 10, "batch_size": 64, "lr": 0.01, "checkpoint_every": 5},
        },
        screen={
            "inputs": [str(corpus)],
            "output": str(tmp_path / "report"),
            "bundle": bundle,
            "decision": {"score": "layerwise_mfsim", "alpha": 0.05},
        },
    )
    fit(config)
    manifest = json.load(open(f"{bundle}/manifest.json"))
    training, train_rows = manifest["training"], manifest["data"]["train_rows"]
    assert training["backbone"] == {"epoch": 0.0} and manifest["stage_dims"] == [16, 24, 32, 96, 320]
    assert training["features"]["rows"] == train_rows  # the backbone ran once per training row
    assert set(training["features"]["columns"]) == {"id", "class", "layers", "penultimate"}
    assert sum(training["head"]["worker_rows"]) == train_rows == sum(training["layerwise"]["worker_rows"])
    assert training["head"]["epoch"] == 10 and manifest["heldout_accuracy"] > 0.5  # 5 classes
    saved = torch.load(f"{bundle}/backbone.pt", weights_only=True)
    torch.testing.assert_close(saved["encoder.extractor.features.0.0.weight"], net.features[0][0].weight)

    summary, _ = screen(config)
    report = pads.dataset(f"{tmp_path}/report/rows").to_table()
    assert report.num_rows == summary["expected_rows"]
    assert set(report.column("status").to_pylist()) == {STATUS_OK}
    for name in ("msp", "energy", "mahalanobis", "knn", "multiscale", "layerwise_mfsim"):
        assert report.column(f"score_{name}").null_count == 0


def test_unlabelled_id_data_needs_a_frozen_encoder_and_no_predictions():
    unlabelled = {"backbone": {"arch": "mobilenet_v2", "classifier": False}}
    with pytest.raises(ConfigError, match=r"classifier false .* needs a frozen encoder: train.backbone.epochs 0"):
        parse_config({"model": unlabelled})
    with pytest.raises(ConfigError, match=r"screen.predictions needs model.backbone.classifier"):
        parse_config({"model": unlabelled, "train": {"backbone": {"epochs": 0}}, "screen": {"predictions": True}})


def test_a_frozen_encoder_fits_unlabelled_id_data_without_the_classifier_scores(ray_cluster, demo_data, tmp_path):
    """No label column at all: KNN, MODE, DLSR and a one-Gaussian Mahalanobis; no classifier scores, no
    held-out accuracy, and no class-mix synthetic outliers to choose the fused scores on."""
    fit_path, corpus = demo_data
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(pq.read_table(fit_path).drop_columns(["label"]), unlabelled)
    weights = tmp_path / "mobilenet_v2.pt"
    torch.save(_self_made_mobilenet().state_dict(), weights)
    bundle = str(tmp_path / "unlabelled-bundle")
    config = tiny_config(
        model={
            "backbone": {"arch": "mobilenet_v2", "init_weights": str(weights), "classifier": False},
            "preprocess": SMALL_INPUT,
            **NO_LAYERWISE,
        },
        train={"data": [str(unlabelled)], "bundle": bundle, "backbone": {"epochs": 0}},
        screen={
            "inputs": [str(corpus)],
            "output": str(tmp_path / "report"),
            "bundle": bundle,
            "decision": {"score": "knn", "alpha": 0.05},
        },
    )
    fit(config)
    manifest = json.load(open(f"{bundle}/manifest.json"))
    assert read_manifest(bundle).scores == ["mahalanobis", "knn", "multiscale"]
    assert (
        manifest["class_names"] == ["id"]
        and manifest["heldout_accuracy"] is None
        and "head" not in manifest["training"]
    )
    assert set(manifest["training"]["features"]["columns"]) == {"id", "class"}
    assert manifest["fusion"]["kinds"] == ["blur", "patch_shuffle", "pixel_permute", "rotate"]
    summary, _ = screen(config)
    report = pads.dataset(f"{tmp_path}/report/rows").to_table()
    assert report.num_rows == summary["expected_rows"] and "score_msp" not in report.column_names
    assert report.column("score_mahalanobis").null_count == 0
