"""A bundle's models (torch): the backbone and every registered detector, loaded from the bundle's files for
scoring. The format itself (manifest, file names, calibration) is ``rayood.bundle``; each detector reads its
own files (``rayood.detectors.contract``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayood.bundle import BACKBONE_FILE, BundleError, read_calibration, read_manifest
from rayood.bundle_files import load_state_into
from rayood.config import ModelSettings, S3Settings
from rayood.detectors.contract import Detector, load_detectors
from rayood.manifest import Manifest
from rayood.models.backbones import FeatureBackbone, build_backbone
from rayood.storage import resolve


@dataclass
class Bundle:
    uri: str
    manifest: Manifest
    backbone: FeatureBackbone
    detectors: dict[str, Detector]  # by family, in report column order (the manifest's records)
    calibration: dict[str, np.ndarray] | None

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def settings(self) -> ModelSettings:
        return self.manifest.model

    @property
    def score_names(self) -> list[str]:
        """The detectors' scores (what the Scorer computes)."""
        return self.manifest.scores

    @property
    def report_scores(self) -> list[str]:
        return self.manifest.report_scores


def load_bundle(
    uri: str, s3: S3Settings | None = None, device: str | torch.device = "cpu", require_calibration: bool = True
) -> Bundle:
    manifest = read_manifest(uri, s3)
    location = resolve(uri, s3)
    settings = manifest.model
    backbone = build_backbone(settings.backbone, settings.preprocess, manifest.num_classes)
    load_state_into(backbone, location.join(BACKBONE_FILE), "backbone")
    stage_dims = list(manifest.stage_dims)
    if backbone.stage_dims() != stage_dims:
        raise BundleError(f"bundle {uri}: stage_dims {stage_dims} do not match the backbone {backbone.stage_dims()}")
    detectors = load_detectors(location, manifest)
    device = torch.device(device)
    backbone.to(device).eval()
    for detector in detectors.values():
        detector.to(device)
    calibration = read_calibration(uri, s3, manifest) if manifest.calibration or require_calibration else None
    return Bundle(uri=uri, manifest=manifest, backbone=backbone, detectors=detectors, calibration=calibration)
