"""Driver-side planning of a corpus read: what each input URI holds and how many rows it will yield.

Planning runs before any cluster work, so a missing path, an unreachable endpoint or a Parquet file
without the configured columns is a clear error up front. The planned row count is the contract the
report is checked against at the end: every input row comes out exactly once.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

import pyarrow.parquet as pq

from rayood.config import CorpusSettings, S3Settings
from rayood.storage import Location, StorageError, resolve


class InputError(ValueError):
    """An input corpus that cannot be read as configured."""


@dataclass(frozen=True)
class SourcePlan:
    uri: str
    kind: Literal["images", "parquet"]
    location: Location
    paths: tuple[str, ...]
    rows: int
    skipped_files: tuple[str, ...] = ()


def _is_hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root)
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _parquet_rows(location: Location, paths: list[str], required: list[str]) -> int:
    total = 0
    for index, path in enumerate(paths):
        try:
            with location.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                if index == 0:
                    names = set(parquet.schema_arrow.names)
                    missing = [c for c in required if c not in names]
                    if missing:
                        raise InputError(
                            f"{location.uri_of(path)} lacks column(s) {missing}; it has {sorted(names)}"
                            " (set corpus.image_column / corpus.id_column / screen.passthrough_columns)"
                        )
                total += parquet.metadata.num_rows
        except InputError:
            raise
        except Exception as error:
            raise InputError(f"cannot read Parquet file {location.uri_of(path)}: {error}") from None
    return total


def plan_source(
    uri: str, corpus: CorpusSettings, s3: S3Settings | None = None, extra_columns: tuple[str, ...] = ()
) -> SourcePlan:
    """Classify one URI (a Parquet file, a directory of Parquet files, or a directory of images)."""
    location = resolve(uri, s3)
    try:
        info = location.info()
    except StorageError as error:
        raise InputError(str(error)) from None
    if info.type.name == "NotFound":
        raise InputError(f"input not found: {uri}")
    required = [corpus.image_column, corpus.id_column, *extra_columns]
    if info.type.name == "File":
        if not location.path.endswith(".parquet"):
            extension = posixpath.splitext(location.path)[1].lower().lstrip(".")
            if extension not in corpus.file_extensions:
                raise InputError(f"{uri} is neither a Parquet file nor an image ({corpus.file_extensions})")
            return SourcePlan(uri, "images", location, (location.path,), 1)
        rows = _parquet_rows(location, [location.path], required)
        return SourcePlan(uri, "parquet", location, (location.path,), rows)
    files = [f.path for f in location.list_files() if not _is_hidden(f.path, location.path)]
    if not files:
        raise InputError(f"input directory is empty: {uri}")
    parquet_files = [p for p in files if p.endswith(".parquet")]
    if parquet_files and len(parquet_files) == len(files):
        return SourcePlan(uri, "parquet", location, tuple(files), _parquet_rows(location, files, required))
    if extra_columns:
        raise InputError(f"{uri} holds image files, which have no columns {list(extra_columns)} to pass through")
    images = [p for p in files if posixpath.splitext(p)[1].lower().lstrip(".") in corpus.file_extensions]
    chosen = set(images)
    skipped = tuple(location.uri_of(p) for p in files if p not in chosen)
    if not images:
        raise InputError(f"no image files ({', '.join(corpus.file_extensions)}) under {uri}")
    return SourcePlan(uri, "images", location, tuple(images), len(images), skipped)


def plan_sources(
    uris: tuple[str, ...] | list[str], corpus: CorpusSettings, s3: S3Settings | None = None,
    extra_columns: tuple[str, ...] = (),
) -> list[SourcePlan]:
    if not uris:
        raise InputError("no input given (screen.inputs in the config, or --input)")
    return [plan_source(uri, corpus, s3, extra_columns) for uri in uris]
