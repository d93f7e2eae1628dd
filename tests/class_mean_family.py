"""A detector family with fitted state, written as a plugin would be: this module and one registry entry
(``SPEC``), nothing else. The score is the distance of an image's L2-normalised penultimate feature to the nearest
class mean of the training rows' normalised features, the mean streamed batch by batch by the fit's feature pass."""

from __future__ import annotations

import io

import numpy as np
import torch

from rayood.bundle import write_file
from rayood.bundle_files import BundleFiles, read_arrays
from rayood.config import ModelSettings
from rayood.detectors.contract import ScoringView
from rayood.detectors.registry import DetectorSpec
from rayood.models.backbones import Features
from rayood.storage import Location

SCORE = "class_mean_distance"
MEANS_FILE = "class_mean_means.npz"
SPEC = DetectorSpec(
    "class_mean", __name__, lambda settings: (SCORE,), files=(MEANS_FILE,), streaming_fit="ClassMeanFit"
)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ClassMeanFit:
    def __init__(self, settings: ModelSettings, seed: int, num_classes: int, scratch: str | None) -> None:
        self.num_classes = num_classes
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(num_classes)

    def rows(
        self, features: Features, mirror: Features | None, ids: list[str], classes: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {"unit": _unit(features.penultimate.float().cpu().numpy()), "classes": classes}

    def partial_fit(self, rows: dict[str, np.ndarray]) -> None:
        if self.sums is None:
            self.sums = np.zeros((self.num_classes, rows["unit"].shape[1]))
        np.add.at(self.sums, rows["classes"], rows["unit"])
        self.counts += np.bincount(rows["classes"], minlength=self.num_classes)

    def finish(self, bundle: Location) -> dict:
        sink = io.BytesIO()
        np.savez(sink, means=(self.sums / np.maximum(self.counts, 1)[:, None]).astype(np.float32))
        write_file(bundle, MEANS_FILE, sink.getvalue())
        return {"rows": int(self.counts.sum())}


class ClassMeanDetector:
    score_names = (SCORE,)

    def __init__(self, means: torch.Tensor) -> None:
        self.means = means

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        unit = torch.nn.functional.normalize(view.features.penultimate.float(), dim=1)
        return {SCORE: torch.cdist(unit, self.means).min(dim=1).values}

    def to(self, device: torch.device) -> ClassMeanDetector:
        self.means = self.means.to(device)
        return self


def load(files: BundleFiles) -> ClassMeanDetector:
    return ClassMeanDetector(torch.from_numpy(read_arrays(files.first_file(), ("means",))["means"]))
