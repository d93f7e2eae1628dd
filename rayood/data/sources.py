"""Driver-side planning of a corpus read: what each input URI holds and how many rows it will yield.

Planning runs before any cluster work, so a missing path, an unreachable endpoint or a Parquet file
without the configured columns is a clear error up front. The planned row count is the contract the
report is checked against at the end: every input row comes out exactly once.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayood.config import CorpusSettings, S3Settings
from rayood.data.synthetic_corpus import SCHEME as SYNTHETIC
from rayood.data.synthetic_corpus import SyntheticCorpusError, synthetic_rows
from rayood.data.unique_ids import BATCH_ROWS, repeated_ids
from rayood.data.webdataset import SHARD_EXTENSION, ShardCount, count_samples
from rayood.storage import STORAGE_ERRORS, Location, StorageError, resolve

log = logging.getLogger(__name__)

# Shards are counted concurrently: on S3 each walk waits on range reads most of the time.
SHARD_COUNT_THREADS = 16


class InputError(ValueError):
    """An input corpus that cannot be read as configured."""


@dataclass(frozen=True)
class SourcePlan:
    uri: str
    kind: Literal["images", "parquet", "webdataset", "synthetic"]
    location: Location | None  # None for synthetic://N, which reads no storage
    paths: tuple[str, ...]
    rows: int
    skipped_files: tuple[str, ...] = ()  # files of another kind than the input's (no image extension, sidecars)
    image_extensions: tuple[str, ...] = ()  # webdataset: a sample's image is its first member with one of these
    left_out: tuple[tuple[str, str], ...] = ()  # (why, name): hidden names, links not followed, non-UTF-8 names
    sizes: tuple[int, ...] = ()  # images: each path's size in bytes from the listing (too large: never read)
    row_groups: tuple[tuple[int, ...], ...] = ()  # parquet: each path's row counts per row group, from its footer
    data_bytes: int = 0  # parquet: uncompressed bytes of every row group (sizes the read's memory estimate)


HIDDEN = "hidden name (. or _)"


def _is_hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root)
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _schema_problem(schema: pa.Schema, image_column: str, id_column: str, required: list[str]) -> str | None:
    """Why a Parquet file's schema cannot be screened as configured, or None."""
    missing = [c for c in required if c not in schema.names]
    if missing:
        return (
            f"lacks column(s) {missing}; it has {sorted(schema.names)}"
            " (set corpus.image_column / corpus.id_column / screen.passthrough_columns)"
        )
    image = schema.field(image_column).type
    if pa.types.is_struct(image):
        if image.get_field_index("bytes") < 0 or not _is_binary(image.field("bytes").type):
            return f"column {image_column!r} is a struct ({image}) without a binary 'bytes' field"
    elif not _is_binary(image):
        return f"column {image_column!r} has type {image}: it must hold encoded image bytes (binary)"
    kind = schema.field(id_column).type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_binary(kind) or pa.types.is_integer(kind)
    ):
        return f"column {id_column!r} has type {kind}: ids must be strings, binary or integers"
    return None


@dataclass(frozen=True)
class _ParquetLayout:
    row_groups: tuple[tuple[int, ...], ...]  # per file, rows of each row group
    data_bytes: int

    @property
    def rows(self) -> int:
        return sum(sum(groups) for groups in self.row_groups)


def _parquet_layout(
    location: Location, paths: list[str], corpus: CorpusSettings, required: list[str]
) -> _ParquetLayout:
    """Row groups of every file, after checking every file's schema (not just the first's) and that no id
    repeats: a file that a job cannot read is a clear error now, not a dead job later."""
    row_groups, data_bytes = [], 0
    for path in paths:
        try:
            with location.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                problem = _schema_problem(parquet.schema_arrow, corpus.image_column, corpus.id_column, required)
                if problem:
                    raise InputError(f"{location.uri_of(path)} {problem}")
                groups = [parquet.metadata.row_group(i) for i in range(parquet.metadata.num_row_groups)]
                row_groups.append(tuple(group.num_rows for group in groups))
                data_bytes += sum(group.total_byte_size for group in groups)
        except InputError:
            raise
        except Exception as error:
            raise InputError(f"cannot read Parquet file {location.uri_of(path)}: {error}") from None
    layout = _ParquetLayout(tuple(row_groups), data_bytes)
    _repeated_ids(location, paths, corpus.id_column, layout.rows)
    return layout


def _repeated_ids(location: Location, paths: list[str], id_column: str, rows: int) -> None:
    """Refuse a Parquet input whose id column repeats a value: a report row is known by (source, id), so a
    repeat would make resume, filtering and joins ambiguous. Streams the id column (``data/unique_ids.py``)."""
    dataset = pads.dataset(paths, filesystem=location.fs, format="parquet")

    def batches():
        for batch in dataset.to_batches(columns=[id_column], batch_size=BATCH_ROWS):
            yield batch.column(0)

    try:
        count, examples = repeated_ids(batches, rows)
    except Exception as error:
        raise InputError(f"cannot read column {id_column!r} of {location.uri}: {error}") from None
    if count:
        shown = ", ".join(repr(v) for v in examples)
        raise InputError(
            f"{location.uri}: {count} ids occur more than once in column {id_column!r} (e.g. {shown}); "
            "every row needs its own id: deduplicate the input, or point corpus.id_column at a unique column"
        )


def _webdataset_rows(location: Location, paths: list[str]) -> tuple[int, list[tuple[str, str]]]:
    """Samples in the shards, from their tar headers (plus one row per shard that breaks off, see webdataset),
    and the members that belong to no sample."""

    def count(path: str) -> ShardCount:
        try:
            return count_samples(location.fs, path, location.uri_of(path))
        except STORAGE_ERRORS as error:
            raise InputError(f"cannot read WebDataset shard {location.uri_of(path)}: {error}") from None

    with ThreadPoolExecutor(max_workers=min(SHARD_COUNT_THREADS, len(paths))) as pool:
        counts = list(pool.map(count, paths))
    return sum(c.rows for c in counts), [entry for c in counts for entry in c.left_out]


def _webdataset_plan(
    uri: str,
    location: Location,
    shards: list[str],
    corpus: CorpusSettings,
    skipped: Iterable[str] = (),
    left_out: tuple[tuple[str, str], ...] = (),
) -> SourcePlan:
    rows, members = _webdataset_rows(location, shards)
    _log_left_out(location.uri, members)
    return SourcePlan(
        uri, "webdataset", location, tuple(shards), rows, tuple(skipped), corpus.file_extensions, (*left_out, *members)
    )


def _listed(location: Location) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The directory's input files with their sizes, and what was left out (logged: they are not rows)."""
    listed, left_out = location.list_input_files()
    files: dict[str, int] = {}
    for path, size in listed:
        if _is_hidden(path, location.path):
            left_out.append((HIDDEN, location.uri_of(path)))
        else:
            files[path] = size
    _log_left_out(location.uri, left_out)
    return files, tuple(left_out)


def _log_left_out(uri: str, left_out: Iterable[tuple[str, str]]) -> None:
    """One warning per reason: left-out entries are not rows, so the log and the summary are all that tell."""
    left_out = list(left_out)
    for why in sorted({why for why, _ in left_out}):
        names = [name for reason, name in left_out if reason == why]
        log.warning("%s: left out %d entries (%s), e.g. %s", uri, len(names), why, ", ".join(names[:3]))


def plan_source(
    uri: str, corpus: CorpusSettings, s3: S3Settings | None = None, extra_columns: tuple[str, ...] = ()
) -> SourcePlan:
    """Classify one URI: a Parquet file or directory of them, a WebDataset shard (``.tar``) or directory of
    them, a directory of images, or ``synthetic://N`` (N images made on the fly). Extra columns of a WebDataset
    come from its samples and may be null. A URI ending in ``/`` is always listed as a directory (an HTTP
    server's index page)."""
    if uri.startswith(SYNTHETIC):
        if extra_columns:
            raise InputError(f"{uri} is a synthetic corpus, which has no columns {list(extra_columns)} to pass through")
        try:
            return SourcePlan(uri, "synthetic", None, (), synthetic_rows(uri))
        except SyntheticCorpusError as error:
            raise InputError(str(error)) from None
    location = resolve(uri, s3)
    try:
        info = location.info()
    except StorageError as error:
        raise InputError(str(error)) from None
    if info.type.name == "NotFound":
        raise InputError(f"input not found: {uri}")
    required = [corpus.image_column, corpus.id_column, *extra_columns]
    if info.type.name == "File" and not uri.endswith("/"):  # over HTTP a directory's listing page is a file
        if location.path.endswith(SHARD_EXTENSION):
            return _webdataset_plan(uri, location, [location.path], corpus)
        if not location.path.endswith(".parquet"):
            extension = posixpath.splitext(location.path)[1].lower().lstrip(".")
            if extension not in corpus.file_extensions:
                raise InputError(f"{uri} is neither a Parquet file nor an image ({corpus.file_extensions})")
            return SourcePlan(uri, "images", location, (location.path,), 1, sizes=(info.size,))
        layout = _parquet_layout(location, [location.path], corpus, required)
        return SourcePlan(
            uri,
            "parquet",
            location,
            (location.path,),
            layout.rows,
            row_groups=layout.row_groups,
            data_bytes=layout.data_bytes,
        )
    sized, left_out = _listed(location)
    files = list(sized)
    if not files:
        raise InputError(f"input directory is empty: {uri}")
    parquet_files = [p for p in files if p.endswith(".parquet")]
    if parquet_files and len(parquet_files) == len(files):
        layout = _parquet_layout(location, files, corpus, required)
        return SourcePlan(
            uri,
            "parquet",
            location,
            tuple(files),
            layout.rows,
            left_out=left_out,
            row_groups=layout.row_groups,
            data_bytes=layout.data_bytes,
        )
    images = [p for p in files if posixpath.splitext(p)[1].lower().lstrip(".") in corpus.file_extensions]
    shards = [p for p in files if p.endswith(SHARD_EXTENSION)]
    if shards:
        if images:
            raise InputError(
                f"{uri} holds both WebDataset shards (.tar) and image files: give their directories as separate inputs"
            )
        chosen = set(shards)  # img2dataset writes a .parquet and a _stats.json beside each shard: skipped
        others = (location.uri_of(p) for p in files if p not in chosen)
        return _webdataset_plan(uri, location, shards, corpus, others, left_out)
    if extra_columns:
        raise InputError(f"{uri} holds image files, which have no columns {list(extra_columns)} to pass through")
    chosen = set(images)
    skipped = tuple(location.uri_of(p) for p in files if p not in chosen)
    if not images:
        raise InputError(f"no image files ({', '.join(corpus.file_extensions)}) under {uri}")
    sizes = tuple(sized[path] for path in images)
    return SourcePlan(uri, "images", location, tuple(images), len(images), skipped, left_out=left_out, sizes=sizes)


def plan_sources(
    uris: tuple[str, ...] | list[str],
    corpus: CorpusSettings,
    s3: S3Settings | None = None,
    extra_columns: tuple[str, ...] = (),
) -> list[SourcePlan]:
    if not uris:
        raise InputError("no input given (screen.inputs in the config, or --input)")
    plans = [plan_source(uri, corpus, s3, extra_columns) for uri in uris]
    read_by: dict[str, str] = {}
    for plan in plans:  # the same file through two inputs would give its rows twice
        for path in plan.paths:
            uri = plan.location.uri_of(path)
            if uri in read_by:
                raise InputError(f"{uri} is read by two inputs ({read_by[uri]} and {plan.uri}): give each file once")
            read_by[uri] = plan.uri
    return plans
