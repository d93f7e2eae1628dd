"""Mahalanobis baseline (Lee et al., 2018): distance of the penultimate feature to the closest class mean
under one covariance shared by all classes (higher = more OOD). With ``normalise`` (the default, Mueller &
Hein 2025, "Mahalanobis++") the features are L2-normalised first, for fitting and scoring alike: feature norms
vary far more than one Gaussian per class allows, and OOD images' small-norm features otherwise land near
every class mean.

Fitting accumulates sufficient statistics batch by batch (per-class counts and sums, and the total sum
of outer products), so it never holds all features in memory:
    shared covariance = (sum_i x_i x_i^T - sum_c n_c mu_c mu_c^T) / N.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from rayood.bundle import BundleError, write_file
from rayood.bundle_files import BundleFiles, read_arrays
from rayood.config import ModelSettings
from rayood.detectors.contract import ScoringView
from rayood.detectors.registry import MAHALANOBIS, MAHALANOBIS_FILE
from rayood.models.backbones import Features
from rayood.storage import Location


def mahalanobis_features(penultimate: np.ndarray, normalise: bool) -> np.ndarray:
    """The features the statistics are fitted on (the scorer applies the same map to torch tensors)."""
    if not normalise:
        return penultimate
    return penultimate / np.maximum(np.linalg.norm(penultimate, axis=1, keepdims=True), 1e-12)


class GaussianStatistics:
    """Streaming class-conditional Gaussian statistics with a shared covariance (float64)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        self.counts = np.zeros(num_classes)
        self.sums = np.zeros((num_classes, dim))
        self.outer = np.zeros((dim, dim))

    def partial_fit(self, features: np.ndarray, labels: np.ndarray) -> GaussianStatistics:
        features = np.asarray(features, dtype=np.float64)
        np.add.at(self.counts, labels, 1)
        np.add.at(self.sums, labels, features)
        self.outer += features.T @ features
        return self

    def means(self) -> np.ndarray:
        if (self.counts == 0).any():
            raise ValueError(f"classes {np.flatnonzero(self.counts == 0).tolist()} have no samples")
        return self.sums / self.counts[:, None]

    def covariance(self) -> np.ndarray:
        means = self.means()
        return (
            self.outer - (self.counts[:, None, None] * means[:, :, None] * means[:, None, :]).sum(0)
        ) / self.counts.sum()

    def precision(self) -> np.ndarray:
        return np.linalg.pinv(self.covariance(), hermitian=True)


class MahalanobisDetector:
    score_names = MAHALANOBIS

    def __init__(self, means: torch.Tensor, precision: torch.Tensor, normalise: bool) -> None:
        self.means = means.float()
        self.precision = precision.float()
        self.normalise = normalise

    def to(self, device: torch.device) -> MahalanobisDetector:
        self.means, self.precision = self.means.to(device), self.precision.to(device)
        return self

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return {"mahalanobis": self.distance(view.features.penultimate)}

    @torch.no_grad()
    def distance(self, penultimate: torch.Tensor) -> torch.Tensor:
        """(N, D) penultimate features -> (N,) squared distance to the closest class mean."""
        features = penultimate.float()
        if self.normalise:
            features = torch.nn.functional.normalize(features, dim=1, eps=1e-12)
        centred = features[:, None, :] - self.means[None]  # (N, C, D)
        distances = torch.einsum("ncd,de,nce->nc", centred, self.precision, centred)
        return distances.min(dim=1).values


def write(bundle: Location, means: np.ndarray, precision: np.ndarray) -> None:
    sink = io.BytesIO()
    np.savez(sink, means=means.astype(np.float32), precision=precision.astype(np.float32))
    write_file(bundle, MAHALANOBIS_FILE, sink.getvalue())


class MahalanobisFit:
    """The fit's streaming part (``StreamingFit``): class-conditional Gaussian statistics of the (normalised)
    penultimate features of every training row."""

    def __init__(self, settings: ModelSettings, seed: int, num_classes: int, scratch: str | None) -> None:
        self.normalise = settings.mahalanobis.normalise
        self.num_classes = num_classes
        self.statistics: GaussianStatistics | None = None

    def rows(
        self, features: Features, mirror: Features | None, ids: list[str], classes: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {"penultimate": features.penultimate.cpu().numpy(), "classes": classes}

    def partial_fit(self, rows: dict[str, np.ndarray]) -> None:
        if self.statistics is None:
            self.statistics = GaussianStatistics(self.num_classes, rows["penultimate"].shape[1])
        self.statistics.partial_fit(mahalanobis_features(rows["penultimate"], self.normalise), rows["classes"])

    def detector(self) -> MahalanobisDetector:
        """The detector these statistics make, without a bundle (what ``load`` gives after ``finish``)."""
        means, precision = self.statistics.means(), self.statistics.precision()
        return MahalanobisDetector(torch.from_numpy(means).float(), torch.from_numpy(precision).float(), self.normalise)

    def finish(self, bundle: Location) -> dict:
        write(bundle, self.statistics.means(), self.statistics.precision())
        return {}


def load(files: BundleFiles) -> MahalanobisDetector:
    location, manifest = files.first_file(), files.manifest
    arrays = read_arrays(location, ("means", "precision"))
    means, precision = arrays["means"], arrays["precision"]
    dim = manifest.feature_dim
    if means.shape != (manifest.num_classes, dim) or precision.shape != (dim, dim):
        raise BundleError(f"{location.uri} does not match {manifest.num_classes} classes of {dim} dims")
    return MahalanobisDetector(
        torch.from_numpy(means), torch.from_numpy(precision), files.settings.mahalanobis.normalise
    )
