import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from rayood.bundle import (
    BACKBONE_FILE,
    CALIBRATION_FILE,
    MANIFEST,
    BundleError,
    check_bundle_target,
    clear_bundle,
    new_manifest,
    write_calibration,
    write_file,
    write_manifest,
)
from rayood.bundle_files import state_dict_bytes
from rayood.bundle_models import load_bundle
from rayood.config import ConfigError, ModelSettings
from rayood.detectors import mahalanobis
from rayood.detectors.multiscale import write_bank
from rayood.detectors.registry import DDP_FILE, LAYERWISE_FILE, MAHALANOBIS_FILE
from rayood.manifest import CalibrationRecord
from rayood.models.backbones import build_backbone
from rayood.models.diffusion import build_denoiser
from rayood.models.unet import build_unet
from rayood.storage import resolve

SETTINGS = ModelSettings.model_validate(
    {
        "backbone": {"widths": [4, 8], "blocks": [1, 1]},
        "layerwise": {"num_blocks": 1, "time_embed_dim": 8},
        "ddp": {"base_channels": 8, "channel_mults": [1, 2]},
    }
)
SCORES = ["msp", "energy", "maxlogit", "mahalanobis", "layerwise_mse", "layerwise_mfsim", "knn", "multiscale", "ddp"]


def make_bundle(path, settings=SETTINGS, calibrated=True):
    """A bundle of untrained weights with every file its settings' families read, written the way a fit does."""
    backbone = build_backbone(settings.backbone, settings.preprocess, 3)
    dims = backbone.stage_dims()
    location = resolve(str(path))
    write_file(location, BACKBONE_FILE, state_dict_bytes(backbone.state_dict()))
    write_file(location, LAYERWISE_FILE, state_dict_bytes(build_denoiser(settings, sum(dims)).state_dict()))
    write_file(location, DDP_FILE, state_dict_bytes(build_unet(settings, 3).state_dict()))
    bank = np.random.default_rng(0).normal(size=(12, 6, dims[-1])).astype(np.float32)
    kind = write_bank(location, bank, settings.multiscale, seed=0)
    mahalanobis.write(location, np.zeros((3, dims[-1])), np.eye(dims[-1]))
    written = {p.name for p in path.iterdir()}
    facts = {"multiscale": {"bank_rows": 12, "regions": 6, "index": kind}}
    manifest = new_manifest(settings, ["a", "b", "c"], dims, dims[-1], written, facts)
    if calibrated:
        write_calibration(location, {name: np.arange(5.0) for name in manifest.scores})
        manifest = manifest.model_copy(update={"calibration": CalibrationRecord(file=CALIBRATION_FILE, rows=5)})
    write_manifest(location, manifest)
    return location, manifest


def with_settings(bundle, settings: ModelSettings):
    """The same loaded weights, scored under other settings."""
    return dataclasses.replace(bundle, manifest=bundle.manifest.model_copy(update={"model": settings}))


def test_round_trip(tmp_path):
    _, manifest = make_bundle(tmp_path)
    bundle = load_bundle(str(tmp_path))
    assert bundle.bundle_id == manifest.bundle_id and bundle.score_names == SCORES
    assert bundle.manifest == manifest
    np.testing.assert_array_equal(bundle.calibration["msp"], np.arange(5.0))
    assert torch.__version__.startswith(bundle.manifest.versions["torch"])  # the wheel's version, no build tag


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(str(tmp_path / "nothing"))


def test_uncalibrated_bundle_is_refused_for_screening(tmp_path):
    make_bundle(tmp_path, calibrated=False)
    with pytest.raises(BundleError, match="no calibration"):
        load_bundle(str(tmp_path))
    assert load_bundle(str(tmp_path), require_calibration=False).calibration is None


def test_weights_that_do_not_match_the_manifest_are_refused(tmp_path):
    location, manifest = make_bundle(tmp_path)
    other = ModelSettings.model_validate({**SETTINGS.model_dump(), "backbone": {"widths": [4, 16], "blocks": [1, 1]}})
    write_file(
        location, BACKBONE_FILE, state_dict_bytes(build_backbone(other.backbone, other.preprocess, 3).state_dict())
    )
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(str(tmp_path))


@pytest.mark.parametrize("name", [LAYERWISE_FILE, DDP_FILE, MAHALANOBIS_FILE])
def test_missing_weight_file_is_refused(tmp_path, name):
    make_bundle(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle(str(tmp_path))


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickles_are_never_unpickled(tmp_path):
    location, _ = make_bundle(tmp_path)
    buffer = io.BytesIO()
    torch.save({"conv": Payload()}, buffer)
    write_file(location, BACKBONE_FILE, buffer.getvalue())
    with pytest.raises(BundleError, match="not a readable state_dict"):
        load_bundle(str(tmp_path))


def test_bank_shape_is_checked(tmp_path):
    location, _ = make_bundle(tmp_path)
    write_bank(location, np.zeros((3, 6, 8), dtype=np.float32), SETTINGS.multiscale, seed=0)
    with pytest.raises(BundleError, match="shape"):
        load_bundle(str(tmp_path))


def test_format_version_is_checked(tmp_path):
    location, manifest = make_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest.model_dump(mode="json"), "format_version": 99}))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(str(tmp_path))


DAMAGED_MANIFESTS = {
    "missing key": lambda m: {k: v for k, v in m.items() if k != "stage_dims"},
    "zero channel multiplier": lambda m: {
        **m,
        "model": {**m["model"], "ddp": {**m["model"]["ddp"], "channel_mults": [0, -1]}},
    },
    "huge widths": lambda m: {**m, "model": {**m["model"], "backbone": {**m["model"]["backbone"], "widths": [10**7]}}},
    "a score in two families": lambda m: {**m, "detectors": [*m["detectors"], {**m["detectors"][0], "family": "x"}]},
    "a family without a module": lambda m: {**m, "detectors": [{**m["detectors"][0], "module": "../evil"}]},
    "unknown model field": lambda m: {**m, "model": {**m["model"], "surprise": 1}},
    "not an object": lambda m: [m],
}
DAMAGED_FILES = {
    "multiscale_bank.npy": b"\x93NUMPY garbage",
    "mahalanobis.npz": b"PK\x03\x04 not a zip",
    "calibration.parquet": b"PAR1 cut",
}


@pytest.mark.parametrize("damage", DAMAGED_MANIFESTS)
def test_a_damaged_manifest_is_one_clear_bundle_error(tmp_path, damage):
    location, manifest = make_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(DAMAGED_MANIFESTS[damage](manifest.model_dump(mode="json"))))
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(str(tmp_path))


@pytest.mark.parametrize("name", DAMAGED_FILES)
def test_a_damaged_array_file_is_one_clear_bundle_error(tmp_path, name):
    make_bundle(tmp_path)
    (tmp_path / name).write_bytes(DAMAGED_FILES[name])
    with pytest.raises(BundleError, match=f"{name} is not readable"):
        load_bundle(str(tmp_path))


def test_a_fit_never_writes_over_data_that_is_not_a_bundle(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "precious.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="not part of a rayood bundle"):
        check_bundle_target(resolve(str(data)), overwrite=True)
    assert (data / "sub" / "precious.jpg").read_bytes() == b"x"
    check_bundle_target(resolve(str(tmp_path / "new")), overwrite=False)  # missing: fine
    location, _ = make_bundle(tmp_path / "bundle")
    with pytest.raises(BundleError, match="--overwrite"):
        check_bundle_target(location, overwrite=False)
    check_bundle_target(location, overwrite=True)
    location.join(MANIFEST).fs.delete_file(location.join(MANIFEST).path)  # a fit that died before its manifest
    check_bundle_target(location, overwrite=False)
    (tmp_path / "bundle" / "notes.txt").write_text("mine")
    clear_bundle(location)
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == ["notes.txt"], "only bundle files are deleted"


def test_train_job_refuses_a_foreign_output_before_any_cluster_work(demo_data, tmp_path):
    from rayood.train.fit import fit
    from tests.conftest import tiny_config

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    config = tiny_config(train={"data": [str(demo_data[0])], "bundle": str(tmp_path / "photos"), "overwrite": True})
    with pytest.raises(ConfigError, match="not part of a rayood bundle"):
        fit(config)
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def test_flip_tta_averages_the_classifier_logits_over_the_mirror_and_leaves_the_features_alone(tmp_path):
    from rayood.detectors.classifier import classifier_scores
    from rayood.scoring.scorer import Scorer

    small_k = ModelSettings.model_validate({**SETTINGS.model_dump(), "multiscale": {"k": 3, "knn_k": 3}})
    flipped = ModelSettings.model_validate(
        {**small_k.model_dump(), "backbone": {**small_k.backbone.model_dump(), "flip_tta": True}}
    )
    make_bundle(tmp_path, flipped)
    bundle = load_bundle(str(tmp_path))
    plain = Scorer(with_settings(load_bundle(str(tmp_path)), small_k), torch.device("cpu"))
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    ids = [f"i{n}" for n in range(4)]
    scored = Scorer(bundle, torch.device("cpu")).score(pixels, ids)
    with torch.no_grad():
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        mean_logits = (bundle.backbone(images) + bundle.backbone(images.flip(3))) / 2
    np.testing.assert_allclose(scored.scores["msp"], classifier_scores(mean_logits)["msp"].double().numpy(), rtol=1e-5)
    np.testing.assert_array_equal(scored.predicted, mean_logits.argmax(1).numpy())
    unflipped = plain.score(pixels, ids)
    assert not np.allclose(scored.scores["msp"], unflipped.scores["msp"])
    np.testing.assert_allclose(scored.scores["layerwise_mse"], unflipped.scores["layerwise_mse"], rtol=1e-5)
    np.testing.assert_allclose(scored.embedding, unflipped.embedding, rtol=1e-5)


def test_flip_average_gives_an_image_and_its_mirror_the_same_knn_and_mode_scores_in_bank_and_queries(tmp_path):
    """The averaged map of a mirror image is the averaged map of the image flipped: the global vector is the same,
    the grid regions swap sides and the centre stays, so KNN and MODE cannot tell an image from its mirror."""
    import pyarrow as pa

    from rayood.data.decode import pixels_to_column
    from rayood.scoring.scorer import Scorer
    from rayood.train.references import FeatureRows, streaming_fits

    plain = ModelSettings.model_validate({**SETTINGS.model_dump(), "multiscale": {"k": 3, "knn_k": 3}})
    averaged = ModelSettings.model_validate(
        {**plain.model_dump(), "multiscale": {"k": 3, "knn_k": 3, "flip_average": True}}
    )
    location, manifest = make_bundle(tmp_path, averaged)
    bank = np.random.default_rng(0).normal(size=(12, 6, manifest.feature_dim)).astype(np.float32)
    write_bank(
        location, bank / np.linalg.norm(bank, axis=-1, keepdims=True), averaged.multiscale, seed=0
    )  # unit rows, as fitted
    bundle = load_bundle(str(tmp_path))
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    pixels = np.concatenate([pixels, pixels[:, :, ::-1]])  # each image, then its mirror
    ids = [f"i{n}" for n in range(6)]
    scored = Scorer(bundle, torch.device("cpu")).score(pixels, ids)
    for name in ("knn", "multiscale"):
        np.testing.assert_allclose(scored.scores[name][:3], scored.scores[name][3:], rtol=1e-5)
    unaveraged_bundle = with_settings(load_bundle(str(tmp_path)), plain)
    unaveraged_bundle.detectors["multiscale"].settings = plain.multiscale  # the same bank, searched without the mirror
    unaveraged = Scorer(unaveraged_bundle, torch.device("cpu")).score(pixels, ids)
    assert not np.allclose(unaveraged.scores["knn"][:3], unaveraged.scores["knn"][3:], rtol=1e-5)
    np.testing.assert_allclose(
        scored.scores["msp"], unaveraged.scores["msp"], rtol=1e-5
    )  # the classifier sees the image alone

    batch = pa.table({"pixels": pixels_to_column(pixels), "label": ["a", "b", "c"] * 2, "id": ids})
    backbone_file = str(tmp_path / BACKBONE_FILE)
    regions = {
        name: FeatureRows(
            settings.model_dump(mode="json"),
            ["a", "b", "c"],
            "label",
            backbone_file,
            None,
            "cpu",
            streaming=streaming_fits(settings),
        )(batch)["multiscale/regions"]
        for name, settings in (("averaged", averaged), ("plain", plain))
    }
    np.testing.assert_allclose(regions["averaged"][:3, 0], regions["averaged"][3:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.sort(regions["averaged"][:3], axis=1), np.sort(regions["averaged"][3:], axis=1), rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(regions["plain"][:3, 0], regions["plain"][3:, 0], rtol=1e-5)


def test_files_a_manifest_records_for_a_family_this_code_lacks_are_bundle_files_but_only_inside_it(tmp_path):
    """A bundle fitted with a plugin family holds its files; a fit without the plugin may replace that bundle,
    deleting them, and a crafted record cannot point the deletion outside the bundle."""
    location, manifest = make_bundle(tmp_path / "bundle")
    raw = manifest.model_dump(mode="json")
    plugin = {"family": "plugin", "module": "somewhere.plugin", "scores": ["plugin"], "files": ["plugin_state.npz"]}
    crafted = {**plugin, "family": "crafted", "scores": ["crafted"], "files": ["../precious.txt", "/etc/hostname"]}
    raw["detectors"] = [*raw["detectors"], plugin, crafted]
    (tmp_path / "bundle" / "manifest.json").write_text(json.dumps(raw))
    (tmp_path / "bundle" / "plugin_state.npz").write_bytes(b"state")
    (tmp_path / "precious.txt").write_text("mine")
    check_bundle_target(location, overwrite=True)
    clear_bundle(location)
    assert list((tmp_path / "bundle").iterdir()) == [] and (tmp_path / "precious.txt").read_text() == "mine"
