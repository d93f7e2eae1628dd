"""A bundle's models (torch): their weights and arrays written by fitting, and loaded into the backbone and
the detectors for scoring. The format itself (manifest, file names, calibration) is ``rayood.bundle``."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

from rayood.bundle import (
    BACKBONE_FILE, BANK_FILE, DDPM_FILE, KNN_INDEX_FILE, LAYERWISE_FILE, MAHALANOBIS_FILE, MULTISCALE_INDEX_FILE,
    BundleError, read_calibration, read_manifest, report_scores, write_file,
)
from rayood.config import ModelSettings, MultiscaleSettings, S3Settings
from rayood.detectors.ddp import DDPDetector
from rayood.detectors.knn import IvfSearch, build_ivf, read_ivf, write_ivf
from rayood.detectors.layerwise import LayerwiseDetector
from rayood.detectors.mahalanobis import MahalanobisDetector
from rayood.detectors.multiscale import MultiscaleDetector
from rayood.models.backbones import FeatureBackbone, build_backbone
from rayood.models.diffusion import build_denoiser
from rayood.models.unet import build_unet
from rayood.storage import Location, StorageError, resolve

COPY_CHUNK = 16 << 20


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _load_into(module: torch.nn.Module, location: Location, what: str) -> None:
    try:
        state = torch.load(io.BytesIO(location.read_bytes()), map_location="cpu", weights_only=True)
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:
        raise BundleError(f"{location.uri} is not a readable state_dict: {error}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{location.uri} does not match the manifest's {what}: {error}") from None


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


def local_file(location: Location, bundle_id: str) -> str:
    """A path on this node to memory-map: the file itself in a local bundle; for a remote one, a copy in the
    node's cache (``$RAYOOD_CACHE``, default ~/.cache/rayood), one per bundle and node, written to a temporary
    name and renamed, so that the actors of a node share one copy and never read a partial one."""
    if isinstance(location.fs, pafs.LocalFileSystem):
        return location.path
    cache = Path(os.environ.get("RAYOOD_CACHE") or Path.home() / ".cache" / "rayood") / "bundles" / bundle_id
    target = cache / posixpath.basename(location.path)
    try:
        if target.exists() and target.stat().st_size == location.info().size:
            return str(target)
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with location.fs.open_input_stream(location.path) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, COPY_CHUNK)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)  # a failed copy leaves nothing behind in the cache
    except (OSError, StorageError) as error:
        raise BundleError(f"cannot copy {location.uri} to this node's cache {cache}: {error}") from None
    return str(target)


def _mapped_bank(bundle: Location, manifest: dict) -> np.ndarray:
    """The exact bank, memory-mapped copy-on-write (tensors can wrap it; pages stay shared until written)."""
    path = local_file(bundle.join(BANK_FILE), manifest["bundle_id"])
    try:
        bank = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as error:  # truncated, not NumPy's format, a pickle
        raise BundleError(f"{bundle.join(BANK_FILE).uri} is not readable: {type(error).__name__}: {error}") from None
    expected = (manifest["multiscale"]["bank_rows"], manifest["multiscale"]["regions"], manifest["stage_dims"][-1])
    if bank.shape != tuple(expected) or bank.dtype != np.float32:
        raise BundleError(f"{bundle.uri}: {BANK_FILE} has shape {bank.shape} {bank.dtype}, the manifest says {expected} float32")
    return bank


def read_multiscale(bundle: Location, manifest: dict, settings: MultiscaleSettings) -> MultiscaleDetector:
    """The KNN and multi-scale searches over the bundle's bank: memory-mapped, exact or by index as it was written."""
    if "multiscale_index" not in manifest["files"]:
        return MultiscaleDetector.exact(_mapped_bank(bundle, manifest), settings)
    searches = []
    for name, rows in ((MULTISCALE_INDEX_FILE, manifest["multiscale"]["bank_rows"] * manifest["multiscale"]["regions"]),
                       (KNN_INDEX_FILE, manifest["multiscale"]["bank_rows"])):
        location = bundle.join(name)
        try:
            search = IvfSearch(read_ivf(local_file(location, manifest["bundle_id"])), settings.ivf_probe)
        except RuntimeError as error:  # faiss's own error for a damaged file
            raise BundleError(f"{location.uri} is not a readable faiss index: {error}") from None
        if search.rows != rows or search.index.d != manifest["stage_dims"][-1]:
            raise BundleError(f"{location.uri} holds {search.rows} vectors of {search.index.d} dims; the manifest says "
                              f"{rows} of {manifest['stage_dims'][-1]}")
        searches.append(search)
    return MultiscaleDetector(*searches, settings)


def _read_arrays(location: Location, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a ``.npz``; anything unreadable is a BundleError."""
    try:
        loaded = np.load(io.BytesIO(location.read_bytes()), allow_pickle=False)
        return {name: loaded[name] for name in names}
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:  # truncated, not NumPy's format, a pickle, a missing member
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None


def write_mahalanobis(bundle: Location, means: np.ndarray, precision: np.ndarray) -> None:
    sink = io.BytesIO()
    np.savez(sink, means=means.astype(np.float32), precision=precision.astype(np.float32))
    write_file(bundle, MAHALANOBIS_FILE, sink.getvalue())


def _read_mahalanobis(bundle: Location, manifest: dict, normalise: bool) -> MahalanobisDetector:
    arrays = _read_arrays(bundle.join(MAHALANOBIS_FILE), ("means", "precision"))
    means, precision = arrays["means"], arrays["precision"]
    dim = manifest["stage_dims"][-1]
    if means.shape != (manifest["num_classes"], dim) or precision.shape != (dim, dim):
        raise BundleError(f"{bundle.uri}: {MAHALANOBIS_FILE} does not match {manifest['num_classes']} classes of {dim} dims")
    return MahalanobisDetector(torch.from_numpy(means), torch.from_numpy(precision), normalise)


@dataclass
class Bundle:
    uri: str
    manifest: dict
    settings: ModelSettings
    backbone: FeatureBackbone
    layerwise: LayerwiseDetector
    multiscale: MultiscaleDetector
    mahalanobis: MahalanobisDetector
    ddp: DDPDetector | None
    calibration: dict[str, np.ndarray] | None

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def score_names(self) -> list[str]:
        """The detectors' scores (what the Scorer computes)."""
        return list(self.manifest["scores"])

    @property
    def report_scores(self) -> list[str]:
        return report_scores(self.manifest)


def load_bundle(
    uri: str, s3: S3Settings | None = None, device: str | torch.device = "cpu", require_calibration: bool = True
) -> Bundle:
    manifest = read_manifest(uri, s3)
    location = resolve(uri, s3)
    settings = ModelSettings.model_validate(manifest["model"])
    backbone = build_backbone(settings.backbone, settings.preprocess, manifest["num_classes"])
    _load_into(backbone, location.join(BACKBONE_FILE), "backbone")
    stage_dims = list(manifest["stage_dims"])
    if backbone.stage_dims() != stage_dims:
        raise BundleError(f"bundle {uri}: stage_dims {stage_dims} do not match the backbone {backbone.stage_dims()}")
    denoiser = build_denoiser(settings, sum(stage_dims))
    _load_into(denoiser, location.join(LAYERWISE_FILE), "layerwise denoiser")
    ddp = None
    if settings.ddp.enabled:
        unet = build_unet(settings, manifest["num_classes"])
        _load_into(unet, location.join(DDPM_FILE), "DDPM U-Net")
        ddp = DDPDetector(unet.to(device), settings.ddp)
    backbone.to(device).eval()
    denoiser.to(device).eval()
    calibration = read_calibration(uri, s3, manifest) if manifest.get("calibration") or require_calibration else None
    return Bundle(
        uri=uri,
        manifest=manifest,
        settings=settings,
        backbone=backbone,
        layerwise=LayerwiseDetector(denoiser, settings.layerwise, stage_dims),
        multiscale=read_multiscale(location, manifest, settings.multiscale),
        mahalanobis=_read_mahalanobis(location, manifest, settings.mahalanobis.normalise),
        ddp=ddp,
        calibration=calibration,
    )
