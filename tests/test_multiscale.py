import numpy as np
import pytest
import torch

from rayood.config import BackboneSettings, MultiscaleSettings, PreprocessSettings
from rayood.detectors.knn import kth_neighbour_distance, normalise
from rayood.detectors.multiscale import MultiscaleDetector, global_vector, region_count, region_vectors, search_vectors
from rayood.models.alpa import LocalPropagation
from rayood.models.backbones import Features, build_backbone
from rayood.train.objectives import BackboneObjective, supervised_contrastive_loss


def brute_force_kth(queries, bank, k):
    distances = torch.cdist(queries.double(), bank.double())
    return distances.sort(dim=1).values[:, k - 1]


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_kth_neighbour_matches_brute_force_across_chunk_boundaries(k, chunk):
    generator = torch.Generator().manual_seed(k * 100 + chunk)
    bank = normalise(torch.randn(120, 16, generator=generator))
    queries = normalise(torch.randn(9, 16, generator=generator))
    got = kth_neighbour_distance(queries, bank, k, chunk)
    torch.testing.assert_close(got.double(), brute_force_kth(queries, bank, k), atol=1e-5, rtol=0)


def test_kth_neighbour_with_ties():
    bank = normalise(torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3))
    query = normalise(torch.tensor([[1.0, 0.0]]))
    for k, chunk in [(4, 3), (5, 2), (7, 1)]:
        expected = 0.0 if k <= 4 else 2**0.5
        assert kth_neighbour_distance(query, bank, k, chunk).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="k = 8"):
        kth_neighbour_distance(query, bank, 8, 4)


def test_region_vectors_on_a_4x4_map_are_global_quadrants_centre():
    feature_map = torch.rand(2, 3, 4, 4)
    vectors = region_vectors(feature_map, feature_map.mean((2, 3)), MultiscaleSettings())
    assert vectors.shape == (2, region_count(MultiscaleSettings()), 3) == (2, 6, 3)
    expected = [
        feature_map.mean((2, 3)),
        feature_map[:, :, :2, :2].mean((2, 3)),
        feature_map[:, :, :2, 2:].mean((2, 3)),
        feature_map[:, :, 2:, :2].mean((2, 3)),
        feature_map[:, :, 2:, 2:].mean((2, 3)),
        feature_map[:, :, 1:3, 1:3].mean((2, 3)),
    ]
    torch.testing.assert_close(vectors, normalise(torch.stack(expected, dim=1)))


@pytest.mark.parametrize("size", [(5, 5), (3, 7), (1, 1), (3, 3)])
def test_region_vectors_on_odd_maps(size):
    h, w = size
    feature_map = torch.rand(1, 4, h, w)
    vectors = region_vectors(feature_map, feature_map.mean((2, 3)), MultiscaleSettings(grid=2, centre=True))
    assert vectors.shape == (1, 6, 4)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(1, 6))
    if size == (5, 5):  # overlapping windows rows/cols 0:3 and 2:5; centre 1:4
        torch.testing.assert_close(vectors[0, 1], normalise(feature_map[0, :, :3, :3].mean((1, 2))))
        torch.testing.assert_close(vectors[0, 4], normalise(feature_map[0, :, 2:, 2:].mean((1, 2))))
        torch.testing.assert_close(vectors[0, 5], normalise(feature_map[0, :, 1:4, 1:4].mean((1, 2))))
    if size == (3, 3):  # cifar_fast's last map: the centre is the middle cell, not a repeat of a quadrant
        torch.testing.assert_close(vectors[0, 5], normalise(feature_map[0, :, 1, 1]))
    if size == (3, 7):
        torch.testing.assert_close(vectors[0, 5], normalise(feature_map[0, :, 1:2, 2:5].mean((1, 2))))


def _features(feature_map: torch.Tensor, pooled: torch.Tensor) -> Features:
    return Features(
        logits=torch.zeros(len(feature_map), 2), stage_maps=[feature_map], last_map=feature_map, penultimate=pooled
    )


def test_the_global_vector_is_what_the_classifier_reads_unless_a_bank_says_mean():
    feature_map = torch.rand(2, 4, 3, 3)
    maxed = _features(feature_map, feature_map.amax((2, 3)))  # a max-pooled classifier (cifar_fast's)
    mirror = _features(feature_map.flip(3) + 1, feature_map.flip(3).amax((2, 3)) + 1)
    settings = MultiscaleSettings()
    averaged_map = (feature_map + mirror.stage_maps[-1].flip(3)) / 2  # what search_map gives with the mirror
    torch.testing.assert_close(global_vector(maxed, None, feature_map, settings), feature_map.amax((2, 3)))
    torch.testing.assert_close(global_vector(maxed, mirror, averaged_map, settings), feature_map.amax((2, 3)) + 0.5)
    old = MultiscaleSettings(global_vector="mean")  # how banks were built before the setting existed
    torch.testing.assert_close(global_vector(maxed, None, feature_map, old), feature_map.mean((2, 3)))
    torch.testing.assert_close(global_vector(maxed, mirror, averaged_map, old), feature_map.mean((2, 3)) + 0.5)
    # the mirror is read only with flip_average; the regions come from the map either way
    vectors = search_vectors(maxed, mirror, settings)
    torch.testing.assert_close(vectors[:, 0], normalise(feature_map.amax((2, 3))))
    torch.testing.assert_close(vectors[:, 5], normalise(feature_map[:, :, 1, 1]))
    averaged = search_vectors(maxed, mirror, MultiscaleSettings(flip_average=True))
    torch.testing.assert_close(averaged[:, 5], normalise(feature_map[:, :, 1, 1] + 0.5))


def test_cross_scale_decision_takes_the_best_matching_region():
    settings = MultiscaleSettings(k=1, knn_k=1)
    train_maps = torch.rand(10, 8, 4, 4)
    vectors = region_vectors(train_maps, train_maps.mean((2, 3)), settings)
    detector = MultiscaleDetector.exact(vectors, settings)
    scores = detector.score_vectors(vectors[:3])
    torch.testing.assert_close(scores["multiscale"], torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(scores["knn"], torch.zeros(3), atol=1e-3, rtol=0)
    far = detector.score_vectors(region_vectors(-train_maps[:3] - 5, -train_maps[:3].mean((2, 3)) - 5, settings))
    assert (far["multiscale"] > scores["multiscale"]).all() and (far["knn"] > scores["knn"]).all()


def test_alpa_similarity_is_symmetric_and_bounded():
    alpa = LocalPropagation(channels=6, dim=5)
    similarity = alpa.similarity(torch.randn(4, 6, 3, 3))
    assert similarity.shape == (4, 4)
    torch.testing.assert_close(similarity, similarity.T)
    assert similarity.abs().max() <= 2 + 1e-5


def test_supcon_uses_only_same_class_positives():
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.zeros(4, 4)
    logits[0, 1] = logits[1, 0] = logits[2, 3] = logits[3, 2] = 5.0
    good = supervised_contrastive_loss(logits, labels)
    swapped = supervised_contrastive_loss(logits, torch.tensor([0, 1, 0, 1]))
    assert good < swapped
    # self-similarity must not count: a huge diagonal changes nothing
    torch.testing.assert_close(supervised_contrastive_loss(logits + 100 * torch.eye(4), labels), good)


@pytest.mark.parametrize("objective", ["supcon", "alpa_train", "alpa_finetune"])
def test_contrastive_objectives_reach_every_head(objective):
    backbone = build_backbone(
        BackboneSettings(widths=(4, 8), blocks=(1, 1)), PreprocessSettings(native_size=8, input_size=8), 3
    )
    model = BackboneObjective(backbone, objective, alpa_dim=5, projection_dim=4)
    loss, logits = model(torch.rand(6, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert logits.shape == (6, 3)
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    if model.alpa is not None:
        assert model.alpa.query[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["supcon", "alpa_finetune"])
def test_the_contrastive_objectives_probe_is_the_classifier_scoring_uses(objective):
    """The linear probe trains on the vector the classifier reads when scoring: cifar_fast's is max-pooled (the
    probe was once fitted on the map's average and scored on its maximum)."""
    settings = BackboneSettings(arch="cifar_fast", widths=(8, 16, 16), classifier_pool="max")
    backbone = build_backbone(settings, PreprocessSettings(native_size=32, input_size=32), 3).eval()
    images = torch.rand(4, 3, 32, 32)
    _, logits = BackboneObjective(backbone, objective, alpa_dim=5, projection_dim=4)(images, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(logits, backbone(images))


def _clustered(rows: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    members = torch.randint(0, clusters, (rows,), generator=generator)
    return normalise(centres[members] + 0.3 * torch.randn(rows, dim, generator=generator))


def test_ivf_search_agrees_with_exact_search():
    """The approximate index's k-th distances match brute force for most queries, and the scores order ID
    against OOD queries the same way (tolerance stated: 90% exact, AUROC within 0.01)."""
    from sklearn.metrics import roc_auc_score

    from rayood.detectors.knn import ExactSearch, IvfSearch, build_ivf

    bank = _clustered(20_000, 32, 50, seed=0)
    id_queries = _clustered(500, 32, 50, seed=0)[:500] + 0.05 * torch.randn(500, 32)
    ood_queries = normalise(torch.randn(500, 32))
    queries = normalise(torch.cat([id_queries, ood_queries]))
    exact = ExactSearch(bank.numpy(), chunk_rows=4096).kth_distance(queries, 10)
    approximate = IvfSearch(build_ivf(bank.numpy(), lists=64), probe=8).kth_distance(queries, 10)
    assert (approximate >= exact - 1e-4).all()  # an approximate search only ever misses neighbours
    assert ((approximate - exact).abs() < 1e-4).float().mean() >= 0.9
    truth = [0] * 500 + [1] * 500
    assert abs(roc_auc_score(truth, approximate) - roc_auc_score(truth, exact)) < 0.01


def test_exact_search_reads_a_memory_mapped_bank_in_chunks(tmp_path):
    from rayood.detectors.knn import ExactSearch

    bank = _clustered(1000, 16, 5, seed=1)
    np.save(tmp_path / "bank.npy", bank.numpy())
    mapped = np.load(tmp_path / "bank.npy", mmap_mode="c")
    queries = normalise(torch.randn(7, 16))
    got = ExactSearch(mapped, chunk_rows=300).kth_distance(queries, 5)
    torch.testing.assert_close(got.double(), brute_force_kth(queries, bank, 5), atol=1e-5, rtol=0)


def test_auto_index_is_exact_up_to_the_threshold():
    settings = MultiscaleSettings(exact_max_vectors=1000)
    assert settings.index_for(1000) == "exact" and settings.index_for(1001) == "ivf"
    assert MultiscaleSettings(index="ivf").index_for(10) == "ivf"
    assert MultiscaleSettings(index="exact").index_for(10**9) == "exact"
