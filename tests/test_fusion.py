"""Score fusion on synthetic scores where the truth is known."""

import numpy as np
import pytest

from rayood.detectors.calibrate import ConformalReference
from rayood.detectors.fusion import FusedScore, combine
from rayood.evaluation.metrics import auroc


def test_rules_on_hand_computed_pvalues():
    pvalues = np.array([[0.5, 0.5], [0.25, 0.75], [0.01, 0.5]])
    assert combine(pvalues, "cauchy") == pytest.approx([0.0, 0.0, np.tan(0.49 * np.pi) / 2])
    assert combine(pvalues, "fisher") == pytest.approx(-2 * np.log(pvalues).sum(axis=1))
    with pytest.raises(ValueError, match="unknown fusion rule"):
        combine(pvalues, "max")


def _scores(
    rng: np.random.Generator, n: int, shift: tuple[float, float, float], shared: float
) -> dict[str, np.ndarray]:
    """Three detectors whose noise shares a common part (``shared``), as detectors on one backbone do."""
    common = rng.normal(size=n)
    return {
        name: np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.normal(size=n) + delta
        for name, delta in zip(("a", "b", "c"), shift)
    }


@pytest.mark.parametrize("rule", ["cauchy", "fisher"])
def test_fused_pvalues_are_valid_on_id_data_even_with_dependent_scores(rule):
    rng = np.random.default_rng(0)
    fused = FusedScore(_scores(rng, 2000, (0, 0, 0), shared=0.8), ["a", "b", "c"], rule)
    reference = ConformalReference(fused.calibration)
    pvalues = reference.pvalues(fused.statistic(_scores(rng, 20_000, (0, 0, 0), shared=0.8)))
    # P(p <= alpha) <= alpha up to the calibration's own randomness (1,000 reference rows: SE ~0.007 at 0.1)
    for alpha in (0.01, 0.05, 0.1):
        assert np.mean(pvalues <= alpha) == pytest.approx(alpha, abs=3 * np.sqrt(alpha * (1 - alpha) / 1000) + 0.002)


@pytest.mark.parametrize("rule", ["cauchy", "fisher"])
def test_fusion_beats_each_single_score_when_the_evidence_is_spread(rule):
    rng = np.random.default_rng(1)
    fused = FusedScore(_scores(rng, 2000, (0, 0, 0), shared=0.0), ["a", "b", "c"], rule)
    id_scores, ood_scores = _scores(rng, 3000, (0, 0, 0), 0.0), _scores(rng, 3000, (1, 1, 1), 0.0)
    single = max(auroc(id_scores[name], ood_scores[name]) for name in "abc")
    combined = auroc(fused.statistic(id_scores), fused.statistic(ood_scores))
    assert combined > single + 0.05


def test_cauchy_follows_one_confident_detector_among_useless_ones():
    rng = np.random.default_rng(2)
    fused = FusedScore(_scores(rng, 2000, (0, 0, 0), shared=0.0), ["a", "b", "c"], "cauchy")
    id_scores, ood_scores = _scores(rng, 3000, (0, 0, 0), 0.0), _scores(rng, 3000, (4, 0, 0), 0.0)
    assert auroc(fused.statistic(id_scores), fused.statistic(ood_scores)) > 0.95


def test_unscored_rows_stay_unscored_and_p_of_one_is_finite():
    rng = np.random.default_rng(3)
    fused = FusedScore(_scores(rng, 100, (0, 0, 0), 0.0), ["a", "b"], "cauchy")
    statistic = fused.statistic({"a": np.array([np.nan, -100.0, 0.0]), "b": np.array([0.0, -100.0, 0.0])})
    assert np.isnan(statistic[0]) and np.isfinite(statistic[1:]).all()
    assert statistic[1] < statistic[2]  # scores below every reference row: the most ID-like


def test_synthetic_outliers_keep_what_each_kind_promises():
    from rayood.detectors.synthetic import KINDS, synthetic_outliers

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.array(["a", "b"]), 20)
    outliers, kinds = synthetic_outliers(images, labels, per_kind=10, seed=1)
    assert outliers.shape == (50, 32, 32, 3) and outliers.dtype == np.uint8
    assert [kinds.count(kind) for kind in KINDS] == [10] * 5
    kinds = np.array(kinds)
    originals = {image.tobytes() for image in images}
    for image in outliers[kinds == "pixel_permute"]:  # same colours, new places
        sorted_pixels = np.sort(image.reshape(-1, 3).view("V3").ravel())
        assert any(np.array_equal(sorted_pixels, np.sort(o.reshape(-1, 3).view("V3").ravel())) for o in images)
        assert image.tobytes() not in originals
    for image in outliers[kinds == "rotate"]:
        assert any(np.array_equal(np.rot90(image, -k, axes=(0, 1)), o) for o in images for k in (1, 2, 3))
    for image in outliers[kinds == "patch_shuffle"]:  # the same 16 patches of 8 x 8
        patches = sorted(image[y : y + 8, x : x + 8].tobytes() for y in range(0, 32, 8) for x in range(0, 32, 8))
        assert any(
            patches == sorted(o[y : y + 8, x : x + 8].tobytes() for y in range(0, 32, 8) for x in range(0, 32, 8))
            for o in images
        )
    blurred = outliers[kinds == "blur"].astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.2 * np.abs(np.diff(images.astype(float), axis=1)).mean()


def test_fusion_choice_keeps_complementary_scores_and_drops_useless_ones():
    """Each score sees every kind, one of them better: fused, they beat either alone on every kind."""
    from rayood.detectors.fusion import choose_fused_scores

    rng = np.random.default_rng(0)
    n_id, n_kind = 2000, 300
    calibration = {name: rng.normal(size=n_id) for name in ("sees_blur", "sees_shuffle", "noise")}
    kinds = np.repeat(["blur", "patch_shuffle"], n_kind)
    outliers = {
        "sees_blur": np.where(kinds == "blur", rng.normal(3, 1, 2 * n_kind), rng.normal(1, 1, 2 * n_kind)),
        "sees_shuffle": np.where(kinds == "patch_shuffle", rng.normal(3, 1, 2 * n_kind), rng.normal(1, 1, 2 * n_kind)),
        "noise": rng.normal(size=2 * n_kind),
    }
    choice = choose_fused_scores(calibration, outliers, kinds, ["noise", "sees_blur", "sees_shuffle"], "cauchy")
    assert sorted(choice["scores"]) == ["sees_blur", "sees_shuffle"]
    assert choice["steps"][-1]["mean_auroc"] > max(choice["single_mean_auroc"].values()) + 0.05
    assert 0.4 < choice["single_mean_auroc"]["noise"] < 0.6


def test_fusion_choice_refuses_a_score_that_wins_one_kind_and_harms_another():
    """A score blind to blur but sharp on shuffles raises the mean AUROC (what the mean-only rule chose by) while
    diluting the blur detections: it must stay out, so that ``fused`` cannot fall below the best single score."""
    from rayood.detectors.fusion import MAX_KIND_LOSS, MIN_GAIN, FusedScore, choose_fused_scores
    from rayood.evaluation.metrics import auroc

    rng = np.random.default_rng(0)
    n_id, n_kind = 2000, 300
    kinds = np.repeat(["blur", "patch_shuffle"], n_kind)
    calibration = {name: rng.normal(size=n_id) for name in ("broad", "one_trick")}
    outliers = {
        "broad": rng.normal(1.5, 1, 2 * n_kind),
        "one_trick": np.where(kinds == "patch_shuffle", rng.normal(5, 1, 2 * n_kind), rng.normal(size=2 * n_kind)),
    }
    even = {name: values[0::2] for name, values in calibration.items()}

    def kind_aurocs(names):
        fused = FusedScore(even, names, "cauchy")
        statistic = fused.statistic(outliers)
        return {kind: auroc(fused.calibration, statistic[kinds == kind]) for kind in ("blur", "patch_shuffle")}

    alone, both = kind_aurocs(["broad"]), kind_aurocs(["broad", "one_trick"])
    assert np.mean(list(both.values())) > np.mean(list(alone.values())) + MIN_GAIN  # the mean alone would add it
    assert both["blur"] < alone["blur"] - MAX_KIND_LOSS
    choice = choose_fused_scores(calibration, outliers, kinds, ["one_trick", "broad"], "cauchy")
    assert choice["scores"] == ["broad"]
    assert choice["steps"][0]["kind_auroc"] == alone


def test_a_fusion_of_one_score_ranks_exactly_as_that_score_even_beyond_its_reference():
    from rayood.detectors.fusion import FusedScore

    rng = np.random.default_rng(3)
    fused = FusedScore({"energy": rng.normal(size=400)}, ["energy"], "cauchy")
    new = np.concatenate([rng.normal(size=50), rng.normal(10, 1, 50), [np.nan]])  # half far beyond every reference
    statistic = fused.statistic({"energy": new})
    assert np.isnan(statistic[-1])
    assert np.array_equal(np.argsort(statistic[:-1]), np.argsort(new[:-1]))
    assert len(np.unique(statistic[:-1])) == 100
