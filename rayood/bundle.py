"""Model bundles: everything screening needs, written once by fitting and read by every scoring actor.

Layout (a local directory or an ``s3://`` prefix)::

    manifest.json              format version, model settings, classes, stage dims, each detector family's
                               module, scores, files and fitted facts, data fingerprint, library versions,
                               training metrics, calibration summary (``rayood.manifest``)
    backbone.pt                state_dict of the backbone (classifier + feature taps)
    layerwise_denoiser.pt      state_dict of the DLSR feature denoiser (EMA weights), when DLSR is on
    multiscale_bank.npy        N x R x C region vectors of the ID training images (MODE / KNN), or, for banks
    multiscale_index.faiss     searched approximately, two faiss IVF indexes: every region vector, and
    knn_index.faiss            the global vectors alone (``model.multiscale.index``)
    mahalanobis.npz            class means and shared precision of the penultimate features
    ddp_unet.pt                state_dict of the class-conditional pixel U-Net (EMA weights), when DDP is on
    calibration.parquet        held-out ID scores, one column per score

Weights are plain ``state_dict`` files loaded with ``torch.load(weights_only=True)``: a bundle can never
run code on load. Loading is strict: every expected tensor must be present with the right shape.

The families' files are named in their registry entries (``rayood.detectors.registry``). This module is the
format and needs no torch: the manifest, the file names, calibration scores, staging and promotion. Filter,
audit and evaluate read reports and bundles through it alone; ``rayood.bundle_models`` loads the weights into
detectors.
"""

from __future__ import annotations

import io
import json
import platform
import posixpath
import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from rayood.config import ModelSettings, S3Settings
from rayood.detectors.fusion import FUSED, FusedScore
from rayood.detectors.registry import enabled_detectors, family_files
from rayood.manifest import FORMAT_1_FILES, FORMAT_VERSION, FamilyRecord, FusionRecord, Manifest, from_format_1
from rayood.storage import Location, StorageError, resolve

MANIFEST = "manifest.json"
BACKBONE_FILE = "backbone.pt"
CALIBRATION_FILE = "calibration.parquet"


def bundle_files(target: Location | None = None) -> frozenset[str]:
    """Every file a bundle may hold: the format's own, each registered family's, names older formats used, and
    those the manifest at ``target`` records (a family this code's registry lacks, such as a plugin's)."""
    return frozenset(
        {MANIFEST, BACKBONE_FILE, CALIBRATION_FILE, *family_files(), *FORMAT_1_FILES, *_recorded_files(target)}
    )


def _recorded_files(target: Location | None) -> set[str]:
    """The plain file names the family records of the manifest at ``target`` name; nothing when there is no
    readable manifest. A name with a path in it is never a bundle file (a crafted manifest cannot widen what a
    fit may delete beyond its own directory)."""
    if target is None or not target.join(MANIFEST).exists():
        return set()
    try:
        records = json.loads(target.join(MANIFEST).read_bytes()).get("detectors") or []
        names = {name for record in records for name in record.get("files", ()) if isinstance(name, str)}
    except (ValueError, AttributeError, TypeError, StorageError):
        return set()
    return {name for name in names if name == posixpath.basename(name) and name not in ("", ".", "..")}


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
    foreign = sorted(names - bundle_files(target))
    if foreign:
        raise BundleError(
            f"{target.uri} holds files that are not part of a rayood bundle ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); refusing to write a bundle there: choose a new or empty output"
        )
    if MANIFEST in names and not overwrite:
        raise BundleError(f"a bundle already exists at {target.uri}; pass --overwrite or choose another --output")


def clear_bundle(target: Location) -> None:
    """Delete the bundle files at ``target`` (and nothing else), the manifest first: what remains never loads."""
    for name in [MANIFEST, *sorted(bundle_files(target) - {MANIFEST})]:
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
    weights = sorted(name for name in bundle_files() - {MANIFEST} if staged.join(name).exists())
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


def write_manifest(bundle: Location, manifest: Manifest) -> None:
    write_file(bundle, MANIFEST, manifest.to_json())


def write_calibration(bundle: Location, scores: dict[str, np.ndarray]) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.table({name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}), sink)
    write_file(bundle, CALIBRATION_FILE, sink.getvalue())


def fused_score(manifest: Manifest, calibration: dict[str, np.ndarray]) -> FusedScore | None:
    fusion = manifest.fusion
    return FusedScore(calibration, list(fusion.scores), fusion.rule) if fusion else None


def new_manifest(
    settings: ModelSettings,
    class_names: list[str],
    stage_dims: list[int],
    feature_dim: int,
    written: Collection[str],
    facts: dict[str, dict] | None = None,
    data: dict | None = None,
    training: dict | None = None,
) -> Manifest:
    """A manifest for freshly fitted weights: a record per enabled family with the files of ``written`` that are
    its own and the ``facts`` its fitting returned; ``calibration`` comes once calibration scores exist."""
    facts = facts or {}
    records = [
        FamilyRecord(
            family=spec.family,
            module=spec.module,
            scores=tuple(spec.score_names(settings)),
            files=tuple(name for name in spec.files if name in written),
            facts=facts.get(spec.family, {}),
        )
        for spec in enabled_detectors(settings)
    ]
    scores = [name for record in records for name in record.scores]
    fusion = settings.fusion
    return Manifest(
        bundle_id=uuid.uuid4().hex,
        created=utc_now(),
        model=settings,
        class_names=tuple(class_names),
        stage_dims=tuple(stage_dims),
        feature_dim=feature_dim,
        detectors=tuple(records),
        fusion=FusionRecord(rule=fusion.rule, scores=fusion.scores or tuple(scores)) if fusion.enabled else None,
        data=data or {},
        training=training or {},
        versions=library_versions(),
    )


def read_manifest(uri: str, s3: S3Settings | None = None) -> Manifest:
    bundle = resolve(uri, s3)
    location = bundle.join(MANIFEST)
    if not location.exists():
        raise BundleError(f"no model bundle at {uri} ({MANIFEST} not found); fit one with jobs/train.py")
    try:
        raw = json.loads(location.read_bytes())
    except json.JSONDecodeError as error:
        raise BundleError(f"{location.uri} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{location.uri} is not a rayood manifest (a JSON object)")
    version = raw.get("format_version")
    if version == 1:
        raw = from_format_1(raw)
    elif version != FORMAT_VERSION:
        raise BundleError(f"bundle {uri} has format_version {version!r}; this rayood reads 1 and {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise BundleError(f"bundle manifest {location.uri} is damaged or not rayood's: {problems}") from None


def read_calibration(uri: str, s3: S3Settings | None = None, manifest: Manifest | None = None) -> dict[str, np.ndarray]:
    """The held-out ID scores, one array per report score (``fused``: the odd rows' fused statistic)."""
    manifest = manifest or read_manifest(uri, s3)
    if manifest.calibration is None:
        raise BundleError(f"bundle {uri} has no calibration scores (fitting did not finish)")
    location = resolve(uri, s3).join(CALIBRATION_FILE)
    try:
        table = pq.read_table(io.BytesIO(location.read_bytes()))
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None
    calibration = {name: table.column(name).to_numpy() for name in table.column_names}
    missing = set(manifest.scores) - set(calibration)
    if missing:
        raise BundleError(f"bundle {uri}: calibration lacks scores {sorted(missing)}")
    fused = fused_score(manifest, calibration)
    if fused is not None:
        calibration[FUSED] = fused.calibration
    return calibration
