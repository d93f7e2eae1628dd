"""MODE's cross-scale decision (Zhang et al., ICCV 2023) and the plain KNN baseline (Sun et al., 2022).

Per image, R L2-normalised vectors from the last feature map: the global vector (``global_vector``: the
classifier's pooled vector, the feature both papers search; or the map's average), the ``grid`` x ``grid``
region averages (adaptive pooling: overlapping windows on odd sizes) and optionally the centre region
(per side, the middle window of about half the side that is exactly centred: 2 of 4 as in MODE's 4 x 4 map,
1 of 3, 3 of 5 or 7). The bank holds every region vector of every ID training image in
one index, scales mixed (exact or approximate search: ``rayood.detectors.knn``). Scores (higher = more OOD):
- ``multiscale``: min over an image's R vectors of the distance to its k-th neighbour in the mixed bank;
- ``knn``: the distance of the global vector to its k-th neighbour among the banks' global vectors.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rayood.bundle import BundleError
from rayood.bundle_files import COPY_CHUNK, BundleFiles, local_file
from rayood.config import ConfigError, ModelSettings, MultiscaleSettings
from rayood.data.id_sample import in_sample
from rayood.detectors.contract import ScoringView
from rayood.detectors.knn import ExactSearch, IvfSearch, NeighbourSearch, build_ivf, normalise, read_ivf, write_ivf
from rayood.detectors.registry import BANK_FILE, KNN_INDEX_FILE, MULTISCALE, MULTISCALE_INDEX_FILE
from rayood.models.backbones import Features
from rayood.storage import Location


def region_count(settings: MultiscaleSettings) -> int:
    return 1 + settings.grid**2 + int(settings.centre)


def _centred_half(side: int) -> int:
    """ceil(side / 2), less one where that could not sit in the exact middle (a 2-cell window of 3 would be
    the top-left quadrant again)."""
    half = math.ceil(side / 2)
    return half if (side - half) % 2 == 0 else max(1, half - 1)


def search_map(features: Features, mirror: Features | None) -> torch.Tensor:
    """The last feature map that the bank and the queries are made from: the image's own, or with
    ``flip_average`` (``mirror`` given, the features of the image flipped left-right) the mean of the image's map
    and the mirror's map flipped back, so that every region still covers the same part of the image."""
    own = features.last_map
    return own if mirror is None else (own + mirror.last_map.flip(3)) / 2


def global_vector(
    features: Features, mirror: Features | None, feature_map: torch.Tensor, settings: MultiscaleSettings
) -> torch.Tensor:
    """(N, C): with ``global_vector: penultimate`` the vector the classifier reads (the KNN paper's feature, and
    MODE's global scale: a ResNet's average, airbench's max), averaged with the mirror's when ``mirror`` is given;
    with ``mean`` the average of ``feature_map``, the ``search_map`` (every bank before the setting: the two
    differ for a max-pooled classifier only, where the penultimate gave KNN +1.9 ID-only AUROC on CIFAR-10,
    BENCHMARKS.md)."""
    if settings.global_vector == "mean":
        return feature_map.mean(dim=(2, 3))
    own = features.penultimate
    return own if mirror is None else (own + mirror.penultimate) / 2


def region_vectors(feature_map: torch.Tensor, global_: torch.Tensor, settings: MultiscaleSettings) -> torch.Tensor:
    """(N, C, H, W) map and (N, C) global vector -> (N, R, C), L2-normalised; index 0 is the global vector."""
    n, c, h, w = feature_map.shape
    vectors = [global_[:, None]]
    grid = F.adaptive_avg_pool2d(feature_map, settings.grid)  # (N, C, g, g)
    vectors.append(grid.flatten(2).transpose(1, 2))
    if settings.centre:
        ch, cw = _centred_half(h), _centred_half(w)
        top, left = (h - ch) // 2, (w - cw) // 2
        vectors.append(feature_map[:, :, top : top + ch, left : left + cw].mean(dim=(2, 3))[:, None])
    return normalise(torch.cat(vectors, dim=1))


def search_vectors(features: Features, mirror: Features | None, settings: MultiscaleSettings) -> torch.Tensor:
    """What the bank holds and the queries are, per image (N, R, C): the same function for both."""
    mirror = mirror if settings.flip_average else None
    feature_map = search_map(features, mirror).float()
    return region_vectors(feature_map, global_vector(features, mirror, feature_map, settings).float(), settings)


class MultiscaleDetector:
    score_names = MULTISCALE

    def __init__(self, mixed: NeighbourSearch, global_: NeighbourSearch, settings: MultiscaleSettings) -> None:
        """``mixed`` searches every region vector of the ID training images, ``global_`` their global vectors."""
        self.settings = settings
        self.mixed, self.global_ = mixed, global_

    @classmethod
    def exact(cls, bank: torch.Tensor | np.ndarray, settings: MultiscaleSettings) -> MultiscaleDetector:
        """Brute-force searches over an (N, R, C) bank (a tensor, or a NumPy array that may be memory-mapped)."""
        chunk = settings.search_chunk
        return cls(ExactSearch(bank.reshape(-1, bank.shape[-1]), chunk), ExactSearch(bank[:, 0], chunk), settings)

    def to(self, device: torch.device) -> MultiscaleDetector:
        """Move exact banks to an accelerator once, when an actor starts."""
        self.mixed, self.global_ = self.mixed.to(device), self.global_.to(device)
        return self

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return self.score_vectors(search_vectors(view.features, view.mirror, self.settings))

    @torch.no_grad()
    def score_vectors(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, R, C) search vectors (``search_vectors``) -> both scores."""
        n, r, c = vectors.shape
        per_region = self.mixed.kth_distance(vectors.reshape(-1, c), self.settings.k)
        return {
            "knn": self.global_.kth_distance(vectors[:, 0].contiguous(), self.settings.knn_k),
            "multiscale": per_region.view(n, r).min(dim=1).values,
        }


def write_bank(bundle: Location, bank: np.ndarray, search: MultiscaleSettings, seed: int) -> str:
    """Store the (N, R, C) bank as the search it gets (``MultiscaleSettings.index_for``); returns that kind."""
    kind = search.index_for(bank.shape[0] * bank.shape[1])
    if kind == "exact":
        bundle.join(BANK_FILE).write_chunks(_npy_chunks(bank))
        return kind
    with tempfile.TemporaryDirectory(prefix="rayood-index-") as scratch:
        for name, vectors in ((MULTISCALE_INDEX_FILE, bank.reshape(-1, bank.shape[-1])), (KNN_INDEX_FILE, bank[:, 0])):
            path = os.path.join(scratch, name)
            write_ivf(build_ivf(vectors, search.ivf_lists, seed), path)
            with open(path, "rb") as source:
                bundle.join(name).write_chunks(iter(lambda: source.read(COPY_CHUNK), b""))
    return kind


def _npy_chunks(array: np.ndarray, rows: int = 4096) -> Iterator[bytes]:
    """A float32 ``.npy`` file in pieces of ``rows`` rows: a memory-mapped bank is never read whole."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": array.shape})
    yield header.getvalue()
    for start in range(0, len(array), rows):
        yield np.ascontiguousarray(array[start : start + rows], dtype="<f4").tobytes()


BANK_SALT = "bank"  # the bank's sample is independent of the calibration split


class BankFit:
    """The fit's streaming part (``StreamingFit``): the region vectors of the bank's sample of training rows
    (``model.multiscale.bank_fraction``, chosen by id hash), streamed into a scratch file on the driver (a bank of
    ImageNet at 224 px with a ResNet-50 is tens of GB) and from there into the bundle."""

    def __init__(self, settings: ModelSettings, seed: int, num_classes: int, scratch: str | None) -> None:
        self.search, self.seed = settings.multiscale, seed
        self.path = os.path.join(scratch, "bank.f32") if scratch else None
        self.count, self.region_shape = 0, None

    def rows(
        self, features: Features, mirror: Features | None, ids: list[str], classes: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {
            "in_bank": np.array(
                [in_sample(i, self.search.bank_fraction, self.seed, BANK_SALT) for i in ids], dtype=bool
            ),
            "regions": search_vectors(features, mirror, self.search).cpu().numpy(),
        }

    def partial_fit(self, rows: dict[str, np.ndarray]) -> None:
        kept = rows["regions"][rows["in_bank"]].astype(np.float32)
        with open(self.path, "ab") as sink:
            sink.write(kept.tobytes())
        self.count, self.region_shape = self.count + len(kept), rows["regions"].shape[1:]

    def finish(self, bundle: Location) -> dict:
        needed = max(self.search.k, self.search.knn_k)
        if self.count < needed:
            raise ConfigError(
                f"model.multiscale.bank_fraction={self.search.bank_fraction} leaves {self.count} bank images, fewer "
                f"than the k of its searches ({needed}): raise it"
            )
        bank = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count, *self.region_shape))
        index = write_bank(bundle, bank, self.search, self.seed)
        rows, regions = bank.shape[:2]
        del bank  # the mapping, before the scratch file goes
        return {"bank_rows": rows, "regions": regions, "index": index}


def _mapped_bank(files: BundleFiles) -> np.ndarray:
    """The exact bank, memory-mapped copy-on-write (tensors can wrap it; pages stay shared until written)."""
    location, facts = files.location.join(BANK_FILE), files.record.facts
    path = local_file(location, files.bundle_id)
    try:
        bank = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as error:  # truncated, not NumPy's format, a pickle
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None
    expected = (facts["bank_rows"], facts["regions"], files.manifest.feature_dim)
    if bank.shape != tuple(expected) or bank.dtype != np.float32:
        raise BundleError(
            f"{files.location.uri}: {BANK_FILE} has shape {bank.shape} {bank.dtype}, "
            f"the manifest says {expected} float32"
        )
    return bank


def load(files: BundleFiles) -> MultiscaleDetector:
    """The KNN and multi-scale searches over the bundle's bank: memory-mapped, exact or by index as it was written."""
    settings, facts, dim = files.settings.multiscale, files.record.facts, files.manifest.feature_dim
    if not {"bank_rows", "regions"} <= set(facts):
        raise BundleError(f"bundle {files.location.uri}: the multiscale record lacks the bank's shape")
    if not files.holds(MULTISCALE_INDEX_FILE):
        return MultiscaleDetector.exact(_mapped_bank(files), settings)
    searches = []
    for name, rows in (
        (MULTISCALE_INDEX_FILE, facts["bank_rows"] * facts["regions"]),
        (KNN_INDEX_FILE, facts["bank_rows"]),
    ):
        location = files.location.join(name)
        try:
            search = IvfSearch(read_ivf(local_file(location, files.bundle_id)), settings.ivf_probe)
        except RuntimeError as error:  # faiss's own error for a damaged file
            raise BundleError(f"{location.uri} is not a readable faiss index: {error}") from None
        if search.rows != rows or search.index.d != dim:
            raise BundleError(
                f"{location.uri} holds {search.rows} vectors of {search.index.d} dims; "
                f"the manifest says {rows} of {dim}"
            )
        searches.append(search)
    return MultiscaleDetector(*searches, settings)
