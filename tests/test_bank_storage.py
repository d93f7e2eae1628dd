"""The KNN / multi-scale bank in a bundle: stored as the search it gets (an array or faiss indexes), and loaded
memory-mapped, from a local bundle directly and from a remote one through one cached copy per node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayood.bundle import BundleError, new_manifest
from rayood.bundle_files import BundleFiles
from rayood.config import ModelSettings, MultiscaleSettings
from rayood.detectors.knn import ExactSearch, IvfSearch, normalise
from rayood.detectors.multiscale import MultiscaleDetector, load, write_bank
from rayood.detectors.registry import BANK_FILE, KNN_INDEX_FILE, MULTISCALE_INDEX_FILE
from rayood.storage import resolve

ROWS, REGIONS, DIM = 600, 6, 16


def _bank() -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return normalise(torch.randn(ROWS, REGIONS, DIM, generator=generator)).numpy()


def _write(uri: str, search: MultiscaleSettings) -> tuple:
    bundle = resolve(uri)
    kind = write_bank(bundle, _bank(), search, seed=0)
    written = {info.path.rsplit("/", 1)[-1] for info in bundle.list_files()}
    manifest = new_manifest(
        ModelSettings(multiscale=search),
        ["a", "b"],
        [8, DIM],
        DIM,
        written,
        facts={"multiscale": {"bank_rows": ROWS, "regions": REGIONS, "index": kind}},
    )
    return bundle, manifest


def read_multiscale(bundle, manifest, search: MultiscaleSettings) -> MultiscaleDetector:
    return load(
        BundleFiles(bundle, manifest.model_copy(update={"model": ModelSettings(multiscale=search)}), "multiscale")
    )


def test_a_local_exact_bank_is_memory_mapped_from_the_bundle(tmp_path):
    bundle, manifest = _write(str(tmp_path), MultiscaleSettings())
    assert manifest.family("multiscale").files == (BANK_FILE,)
    detector = read_multiscale(bundle, manifest, MultiscaleSettings())
    assert isinstance(detector.mixed, ExactSearch) and isinstance(detector.mixed.bank, np.memmap)
    assert detector.mixed.bank.filename == str(tmp_path / BANK_FILE)
    vectors = normalise(torch.rand(3, REGIONS, DIM))
    assert detector.score_vectors(vectors)["knn"].shape == (3,)


def test_a_remote_bank_is_mapped_from_one_cached_copy_per_node(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYOOD_CACHE", str(tmp_path / "cache"))
    bundle, manifest = _write("memory://rayood-test/bank-bundle", MultiscaleSettings())
    first = read_multiscale(bundle, manifest, MultiscaleSettings()).mixed.bank
    cached = tmp_path / "cache" / "bundles" / manifest.bundle_id / BANK_FILE
    assert first.filename == str(cached)
    written = cached.stat().st_mtime_ns
    second = read_multiscale(bundle, manifest, MultiscaleSettings()).mixed.bank
    assert second.filename == str(cached) and cached.stat().st_mtime_ns == written  # reused, not copied again
    np.testing.assert_array_equal(np.asarray(second), _bank().reshape(-1, DIM))


def test_an_ivf_bank_is_stored_as_two_indexes_and_scores_like_the_exact_one(tmp_path):
    search = MultiscaleSettings(index="ivf", ivf_lists=8, ivf_probe=8)  # every cell probed: exact answers
    bundle, manifest = _write(str(tmp_path / "ivf"), search)
    assert manifest.family("multiscale").files == (MULTISCALE_INDEX_FILE, KNN_INDEX_FILE)
    assert not (tmp_path / "ivf" / BANK_FILE).exists()
    approximate = read_multiscale(bundle, manifest, search)
    assert isinstance(approximate.mixed, IvfSearch) and approximate.mixed.rows == ROWS * REGIONS
    exact_bundle, exact_manifest = _write(str(tmp_path / "exact"), MultiscaleSettings())
    exact = read_multiscale(exact_bundle, exact_manifest, MultiscaleSettings())
    vectors = normalise(torch.rand(5, REGIONS, DIM))
    for name, scores in approximate.score_vectors(vectors).items():
        torch.testing.assert_close(scores, exact.score_vectors(vectors)[name], atol=1e-4, rtol=0)


def test_a_damaged_index_is_a_bundle_error(tmp_path):
    search = MultiscaleSettings(index="ivf", ivf_lists=4)
    bundle, manifest = _write(str(tmp_path), search)
    (tmp_path / KNN_INDEX_FILE).write_bytes(b"not an index")
    with pytest.raises(BundleError, match=KNN_INDEX_FILE):
        read_multiscale(bundle, manifest, search)
