import numpy as np
import pytest
import torch

from rayood.config import LayerwiseSettings
from rayood.detectors.calibrate import conformal_pvalues, threshold
from rayood.detectors.classifier import classifier_scores
from rayood.detectors.layerwise import LayerwiseDetector, layer_features, mfsim_score, mse_score
from rayood.evaluation.metrics import auroc, detection_metrics, fpr_at_95_tpr
from rayood.models.diffusion import FeatureDenoiser


def test_layer_features_are_z_scored_per_sample_and_block():
    maps = [torch.randn(3, 4, 5, 5) * 7 + 2, torch.randn(3, 6, 2, 2) * 0.1]
    z0 = layer_features(maps)
    assert z0.shape == (3, 10)
    for block in z0.split([4, 6], dim=1):
        torch.testing.assert_close(block.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(block.std(1), torch.ones(3), atol=1e-3, rtol=0)


def test_reconstruction_scores():
    z0 = torch.randn(4, 6)
    assert torch.equal(mse_score(z0, z0), torch.zeros(4))
    torch.testing.assert_close(mfsim_score(z0, z0, [2, 4]), -torch.ones(4))
    torch.testing.assert_close(mfsim_score(z0, -z0, [2, 4]), torch.ones(4))
    assert mse_score(z0, torch.zeros_like(z0)).tolist() == pytest.approx(z0.pow(2).sum(1).tolist())


def test_layerwise_detector_scores_are_deterministic_per_id():
    settings = LayerwiseSettings(num_blocks=1, time_embed_dim=8)
    detector = LayerwiseDetector(FeatureDenoiser(6, 6, 1, 8), settings, [2, 4])
    maps = [torch.randn(3, 2, 4, 4), torch.randn(3, 4, 2, 2)]
    whole = detector.score_stages(maps, ["a", "b", "c"])
    alone = detector.score_stages([m[1:2] for m in maps], ["b"])
    for name in LayerwiseDetector.score_names:
        assert whole[name][1].item() == pytest.approx(alone[name][0].item(), rel=1e-5)


def test_classifier_scores_are_higher_for_less_confident_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8]])
    for name, values in classifier_scores(logits).items():
        assert values[1] > values[0], name


def test_conformal_pvalues_by_hand():
    calibration = np.array([1.0, 2.0, 3.0, 4.0])
    pvalues = conformal_pvalues(np.array([0.5, 2.0, 4.0, 9.0, np.nan]), calibration)
    np.testing.assert_allclose(pvalues[:4], [5 / 5, 4 / 5, 2 / 5, 1 / 5])
    assert np.isnan(pvalues[4])


def test_threshold_agrees_with_pvalues():
    rng = np.random.default_rng(0)
    calibration = np.round(rng.normal(size=199), 1)  # ties on purpose
    scores = np.round(rng.normal(size=2000) * 2, 1)
    for alpha in (0.01, 0.05, 0.2):
        cut = threshold(calibration, alpha)
        np.testing.assert_array_equal(conformal_pvalues(scores, calibration) <= alpha, scores > cut)
    assert threshold(calibration[:5], 0.05) == float("inf")


def test_flagging_rate_on_exchangeable_id_data_is_at_most_alpha():
    rng = np.random.default_rng(1)
    rates = [(conformal_pvalues(rng.normal(size=500), rng.normal(size=300)) <= 0.1).mean() for _ in range(40)]
    assert np.mean(rates) <= 0.1 + 0.01


def test_metrics_by_hand_and_direction():
    id_scores, ood_scores = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5, 0.6, 0.7])
    assert auroc(id_scores, ood_scores) == pytest.approx(15 / 16)
    assert auroc(-id_scores, -ood_scores) == pytest.approx(1 / 16)
    assert auroc(np.ones(3), np.ones(3)) == pytest.approx(0.5)  # ties count half
    # 95% of ID accepted needs the threshold above 0.4: OOD 0.35 is accepted too -> FPR 1/4
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(0.25)
    metrics = detection_metrics(id_scores, ood_scores)
    assert set(metrics) == {"auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out"}


def test_mahalanobis_streaming_statistics_equal_the_batch_computation():
    from rayood.detectors.mahalanobis import GaussianStatistics

    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(300, 5)) + np.arange(5), rng.integers(0, 3, 300)
    streamed = GaussianStatistics(3, 5)
    for start in range(0, 300, 37):
        streamed.partial_fit(features[start : start + 37], labels[start : start + 37])
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    centred = features - means[labels]
    np.testing.assert_allclose(streamed.means(), means, rtol=1e-10)
    np.testing.assert_allclose(streamed.covariance(), centred.T @ centred / 300, rtol=1e-8, atol=1e-10)


def test_mahalanobis_score_is_the_distance_to_the_closest_class():
    from rayood.detectors.mahalanobis import MahalanobisDetector

    detector = MahalanobisDetector(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.diag(torch.tensor([1.0, 4.0])), False)
    scores = detector.distance(torch.tensor([[0.0, 0.0], [9.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.0, 1.0, 4.0, 125.0]))


def test_normalised_mahalanobis_scores_directions_not_norms():
    """Mahalanobis++: a feature scaled up or down scores the same; only its direction counts."""
    from rayood.detectors.mahalanobis import GaussianStatistics, MahalanobisDetector, mahalanobis_features

    generator = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    directions = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]])
    features = directions[labels] * generator.uniform(0.2, 5.0, (400, 1)) + generator.normal(0, 0.05, (400, 3))
    statistics = GaussianStatistics(2, 3).partial_fit(mahalanobis_features(features, True), labels)
    detector = MahalanobisDetector(torch.from_numpy(statistics.means()), torch.from_numpy(statistics.precision()), True)
    probe = torch.tensor([[2.0, 0.4, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(detector.distance(probe), detector.distance(probe * 7))
    near, off = detector.distance(probe)
    assert near < 1.0 < off  # on a class direction at any norm vs a direction no class has
