"""Model bundles: everything screening needs, written once by fitting and read by every scoring actor.

Layout (a local directory or an ``s3://`` prefix)::

    manifest.json              format version, model settings, classes, stage dims, scores, data
                               fingerprint, library versions, training metrics, calibration summary
    backbone.pt                state_dict of the backbone (classifier + feature taps)
    layerwise_denoiser.pt      state_dict of the DLSR feature denoiser (EMA weights), when DLSR is on
    multiscale_bank.npy        N x R x C region vectors of the ID training images (MODE / KNN), or, for banks
    multiscale_index.faiss     searched approximately, two faiss IVF indexes: every region vector, and
    knn_index.faiss            the global vectors alone (``model.multiscale.index``)
    mahalanobis.npz            class means and shared precision of the penultimate features
    ddpm.pt                    state_dict of the class-conditional pixel U-Net (EMA weights), when DDP is on
    calibration.parquet        held-out ID scores, one column per score

Weights are plain ``state_dict`` files loaded with ``torch.load(weights_only=True)``: a bundle can never
run code on load. Loading is strict: every expected tensor must be present with the right shape.

This module is the format and needs no torch: the manifest, the file names, calibration scores, staging and
promotion. Filter, audit and evaluate read reports and bundles through it alone; ``rayood.bundle_models``
writes the weights and loads them into detectors.
"""

from __future__ import annotations

import io
import json
import platform
import posixpath
import uuid
from datetime import datetime, timezone
from importlib import metadata
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayood.config import ModelSettings, S3Settings
from rayood.detectors.fusion import FUSED, FusedScore
from rayood.storage import Location, StorageError, resolve

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKBONE_FILE = "backbone.pt"
LAYERWISE_FILE = "layerwise_denoiser.pt"
CALIBRATION_FILE = "calibration.parquet"
BANK_FILE = "multiscale_bank.npy"
DDPM_FILE = "ddpm.pt"
MAHALANOBIS_FILE = "mahalanobis.npz"
MULTISCALE_INDEX_FILE = "multiscale_index.faiss"
KNN_INDEX_FILE = "knn_index.faiss"

BUNDLE_FILES = frozenset(
    {
        MANIFEST,
        BACKBONE_FILE,
        LAYERWISE_FILE,
        CALIBRATION_FILE,
        BANK_FILE,
        DDPM_FILE,
        MAHALANOBIS_FILE,
        MULTISCALE_INDEX_FILE,
        KNN_INDEX_FILE,
    }
)


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or does not match this version of rayood."""


def check_bundle_target(target: Location, overwrite: bool) -> None:
    """Refuse, before any work, a fit whose output would replace what it must not.

    An empty or missing location is fine; one holding only bundle files (a finished bundle, or the remains of
    a fit that died before its manifest) may be replaced, a finished one only with ``overwrite``. Anything
    else is someone's data: refused, never deleted.
    """
    kind = target.info().type
    if kind == pafs.FileType.File:
        raise BundleError(f"{target.uri} is a file, not a directory for a model bundle")
    names = (
        {posixpath.relpath(i.path, target.path) for i in target.list_files()}
        if kind == pafs.FileType.Directory
        else set()
    )
    foreign = sorted(names - BUNDLE_FILES)
    if foreign:
        raise BundleError(
            f"{target.uri} holds files that are not part of a rayood bundle ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); refusing to write a bundle there: choose a new or empty output"
        )
    if MANIFEST in names and not overwrite:
        raise BundleError(f"a bundle already exists at {target.uri}; pass --overwrite or choose another --output")


def clear_bundle(target: Location) -> None:
    """Delete the bundle files at ``target`` (and nothing else), the manifest first: what remains never loads."""
    for name in [MANIFEST, *sorted(BUNDLE_FILES - {MANIFEST})]:
        location = target.join(name)
        if location.exists():
            location.fs.delete_file(location.path)


def promote_bundle(staged: Location, target: Location) -> None:
    """Replace the bundle at ``target`` with the complete one at ``staged``, then delete ``staged``.

    A fit writes its bundle into a staging location and promotes it only once it is complete, so the old
    bundle serves until then. The old manifest is deleted first and the new one copied last: at every moment
    ``target`` is the old bundle, no bundle (``load_bundle`` refuses it), or the new bundle. Object stores
    have no rename, so this is a copy; a crash during it leaves the staged copy for the next fit to redo.
    """
    clear_bundle(target)
    target.fs.create_dir(target.path, recursive=True)
    weights = sorted(name for name in BUNDLE_FILES - {MANIFEST} if staged.join(name).exists())
    for name in [*weights, MANIFEST]:
        pafs.copy_files(
            staged.join(name).path,
            target.join(name).path,
            source_filesystem=staged.fs,
            destination_filesystem=target.fs,
        )
    clear_bundle(staged)


def library_versions() -> dict[str, str]:
    """The versions a bundle or report was made with, from the installed packages' metadata: importing torch
    and Ray to ask them would cost a torch-free reader seconds and hundreds of MiB."""
    from rayood import __version__

    installed = {name: metadata.version(name) for name in ("torch", "torchvision", "ray", "pyarrow")}
    return {"rayood": __version__, **installed, "python": platform.python_version()}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_file(bundle: Location, name: str, data: bytes) -> None:
    bundle.join(name).write_bytes(data)


def write_manifest(bundle: Location, manifest: dict) -> None:
    write_file(bundle, MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


def write_calibration(bundle: Location, scores: dict[str, np.ndarray]) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.table({name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}), sink)
    write_file(bundle, CALIBRATION_FILE, sink.getvalue())


def _fusion(settings: ModelSettings, scores: list[str]) -> dict | None:
    if not settings.fusion.enabled:
        return None
    return {"rule": settings.fusion.rule, "scores": list(settings.fusion.scores) or list(scores)}


def report_scores(manifest: dict) -> list[str]:
    """The scores a report has: the detectors' (``manifest["scores"]``), then ``fused`` when configured."""
    return [*manifest["scores"], *([FUSED] if manifest.get("fusion") else [])]


def fused_score(manifest: dict, calibration: dict[str, np.ndarray]) -> FusedScore | None:
    fusion = manifest.get("fusion")
    return FusedScore(calibration, fusion["scores"], fusion["rule"]) if fusion else None


def new_manifest(
    settings: ModelSettings,
    class_names: list[str],
    stage_dims: list[int],
    feature_dim: int,
    scores: list[str],
    bank_shape: tuple,
    data: dict | None = None,
    training: dict | None = None,
    bank_index: str = "exact",
) -> dict:
    """A manifest for freshly fitted weights; ``calibration`` is filled in once calibration scores exist.
    ``bank_index``: how the bank is stored and searched, ``exact`` (an array) or ``ivf`` (two indexes)."""
    bank_files = (
        {"multiscale_bank": BANK_FILE}
        if bank_index == "exact"
        else {"multiscale_index": MULTISCALE_INDEX_FILE, "knn_index": KNN_INDEX_FILE}
    )
    return {
        "format_version": FORMAT_VERSION,
        "bundle_id": uuid.uuid4().hex,
        "created": utc_now(),
        "model": settings.model_dump(mode="json"),
        "num_classes": len(class_names),
        "class_names": class_names,
        "stage_dims": stage_dims,
        "feature_dim": feature_dim,
        "scores": scores,
        "files": {
            "backbone": BACKBONE_FILE,
            **({"layerwise": LAYERWISE_FILE} if settings.layerwise.enabled else {}),
            **bank_files,
            "mahalanobis": MAHALANOBIS_FILE,
            **({"ddpm": DDPM_FILE} if settings.ddp.enabled else {}),
        },
        "calibration": None,
        "fusion": _fusion(settings, scores),
        "multiscale": {"bank_rows": bank_shape[0], "regions": bank_shape[1]},
        "data": data or {},
        "training": training or {},
        "versions": library_versions(),
    }


def feature_dim(manifest: dict) -> int:
    """Dimensions of the penultimate vector and of the last map's regions (KNN, MODE, Mahalanobis, embeddings).
    Bundles from before torchvision encoders have no ``feature_dim``: their last tap is the last map."""
    return int(manifest.get("feature_dim") or manifest["stage_dims"][-1])


class _ManifestShape(BaseModel):
    """What loading relies on in a manifest, checked before anything is built from it: a crafted or damaged
    manifest is one clear BundleError, and the model settings pass the same strict checks and bounds as a
    config (no zero-width layers, no model too large to allocate)."""

    model_config = ConfigDict(extra="allow")

    bundle_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    model: ModelSettings
    num_classes: int = Field(ge=1, le=100_000)  # 1: unlabelled ID data (model.backbone.classifier false)
    class_names: list[str]
    stage_dims: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(min_length=2, max_length=16)
    scores: list[str] = Field(min_length=1)
    multiscale: dict[str, Annotated[int, Field(ge=0, le=1_000_000_000)]]
    calibration: dict | None = None
    fusion: dict | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _ManifestShape:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes {self.num_classes}")
        if not {"bank_rows", "regions"} <= set(self.multiscale):
            raise ValueError("multiscale needs bank_rows and regions")
        return self


def read_manifest(uri: str, s3: S3Settings | None = None) -> dict:
    bundle = resolve(uri, s3)
    location = bundle.join(MANIFEST)
    if not location.exists():
        raise BundleError(f"no model bundle at {uri} ({MANIFEST} not found); fit one with jobs/train.py")
    try:
        manifest = json.loads(location.read_bytes())
    except json.JSONDecodeError as error:
        raise BundleError(f"{location.uri} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{location.uri} is not a rayood manifest (a JSON object)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle {uri} has format_version {version!r}; this rayood reads {FORMAT_VERSION}")
    if isinstance(manifest.get("model"), dict):  # bundles from before these settings were fitted the old way:
        manifest["model"].setdefault("mahalanobis", {"normalise": False})  # raw-feature statistics
        if isinstance(manifest["model"].get("multiscale"), dict):  # banks whose global vector is the map's mean
            manifest["model"]["multiscale"].setdefault("global_vector", "mean")
    try:
        _ManifestShape.model_validate(manifest)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise BundleError(f"bundle manifest {location.uri} is damaged or not rayood's: {problems}") from None
    return manifest


def read_calibration(uri: str, s3: S3Settings | None = None, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """The held-out ID scores, one array per report score (``fused``: the odd rows' fused statistic)."""
    manifest = manifest or read_manifest(uri, s3)
    if not manifest.get("calibration"):
        raise BundleError(f"bundle {uri} has no calibration scores (fitting did not finish)")
    location = resolve(uri, s3).join(CALIBRATION_FILE)
    try:
        table = pq.read_table(io.BytesIO(location.read_bytes()))
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None
    calibration = {name: table.column(name).to_numpy() for name in table.column_names}
    missing = set(manifest["scores"]) - set(calibration)
    if missing:
        raise BundleError(f"bundle {uri}: calibration lacks scores {sorted(missing)}")
    fused = fused_score(manifest, calibration)
    if fused is not None:
        calibration[FUSED] = fused.calibration
    return calibration
