"""A bundle's models (torch): their weights and arrays written by fitting, and loaded into the backbone and
the detectors for scoring. The format itself (manifest, file names, calibration) is ``rayood.bundle``."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from rayood.bundle import (
    BACKBONE_FILE, BANK_FILE, DDPM_FILE, LAYERWISE_FILE, MAHALANOBIS_FILE, BundleError, read_calibration, read_manifest,
    report_scores, write_file,
)
from rayood.config import ModelSettings, S3Settings
from rayood.detectors.ddp import DDPDetector
from rayood.detectors.layerwise import LayerwiseDetector
from rayood.detectors.mahalanobis import MahalanobisDetector
from rayood.detectors.multiscale import MultiscaleDetector
from rayood.models.backbones import FeatureBackbone, build_backbone
from rayood.models.diffusion import build_denoiser
from rayood.models.unet import build_unet
from rayood.storage import Location, StorageError, resolve


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


def write_bank(bundle: Location, bank: np.ndarray) -> None:
    sink = io.BytesIO()
    np.save(sink, np.ascontiguousarray(bank, dtype=np.float32), allow_pickle=False)
    write_file(bundle, BANK_FILE, sink.getvalue())


def _read_arrays(location: Location, names: tuple[str, ...] = ()) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy`` array, or the named arrays of a ``.npz``; anything unreadable is a BundleError."""
    try:
        loaded = np.load(io.BytesIO(location.read_bytes()), allow_pickle=False)
        return {name: loaded[name] for name in names} if names else np.asarray(loaded)
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:  # truncated, not NumPy's format, a pickle, a missing member
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None


def _read_bank(bundle: Location, manifest: dict) -> np.ndarray:
    bank = _read_arrays(bundle.join(BANK_FILE))
    expected = (manifest["multiscale"]["bank_rows"], manifest["multiscale"]["regions"], manifest["stage_dims"][-1])
    if bank.shape != tuple(expected):
        raise BundleError(f"{bundle.uri}: {BANK_FILE} has shape {bank.shape}, the manifest says {expected}")
    return bank


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
        multiscale=MultiscaleDetector(torch.from_numpy(_read_bank(location, manifest)), settings.multiscale),
        mahalanobis=_read_mahalanobis(location, manifest, settings.mahalanobis.normalise),
        ddp=ddp,
        calibration=calibration,
    )
