"""Reading and writing a bundle's model files (torch and NumPy), shared by the backbone and every detector.

Each detector module owns its file(s): it writes them when fitted and reads them in its ``load(files)``, through
the helpers here. Every damaged or missing file is one ``BundleError`` naming it.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

from rayood.bundle import BundleError
from rayood.config import ModelSettings
from rayood.manifest import FamilyRecord, Manifest
from rayood.storage import STORAGE_ERRORS, Location, StorageError, retry_transient

COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class BundleFiles:
    """What a detector family's ``load`` reads: the bundle's location, its manifest, and the family's record."""

    location: Location
    manifest: Manifest
    family: str

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def settings(self) -> ModelSettings:
        return self.manifest.model

    @property
    def record(self) -> FamilyRecord:
        return self.manifest.family(self.family)

    def holds(self, name: str) -> bool:
        return name in self.record.files

    def first_file(self) -> Location:
        """The family's one file (its weights), by the name the bundle recorded."""
        if not self.record.files:
            raise BundleError(f"bundle {self.location.uri}: the manifest records no file for {self.family}")
        return self.location.join(self.record.files[0])


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def load_state_into(module: torch.nn.Module, location: Location, what: str) -> None:
    """Load a ``state_dict`` file strictly (``weights_only``: a bundle never runs code on load)."""
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


def read_arrays(location: Location, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a ``.npz``; anything unreadable is a BundleError."""
    try:
        loaded = np.load(io.BytesIO(location.read_bytes()), allow_pickle=False)
        return {name: loaded[name] for name in names}
    except StorageError as error:
        raise BundleError(f"bundle is incomplete: {error}") from None
    except Exception as error:  # truncated, not NumPy's format, a pickle, a missing member
        raise BundleError(f"{location.uri} is not readable: {type(error).__name__}: {error}") from None


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

        def copy() -> None:
            with location.fs.open_input_stream(location.path) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, COPY_CHUNK)

        try:
            retry_transient(copy)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)  # a failed copy leaves nothing behind in the cache
    except (*STORAGE_ERRORS, StorageError) as error:
        raise BundleError(f"cannot copy {location.uri} to this node's cache {cache}: {error}") from None
    return str(target)
