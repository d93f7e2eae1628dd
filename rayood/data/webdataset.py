"""WebDataset shards: tar files whose members are grouped into samples by key.

The format (webdataset/webdataset's spec, also what img2dataset writes): a member ``dir/000000001.jpg``
belongs to the sample with key ``dir/000000001`` (the path up to the first dot of the file name) and is
that sample's ``jpg`` file; a sample's members are adjacent in the archive. Members whose file name has no
extension or starts with a dot (``._000000001.jpg`` from macOS tar) are not part of any sample.

Everything here walks a shard through its tar headers with :mod:`tarfile` over a seekable
``pyarrow.fs`` file: counting samples skips member data (locally it reads only the headers), and reading
a shard holds one sample in memory at a time whatever the shard's size. A shard that ends early or holds a
damaged header yields the samples before the break and then exactly one :class:`BrokenSample` naming the
shard; counting and reading walk the same way, so the planned row count is the row count read.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs

from rayood.storage import Location

SHARD_EXTENSION = ".tar"
# Columns every WebDataset row carries besides ``id``: the shard's URI and the sample key within it.
SHARD_COLUMN, KEY_COLUMN = "shard", "key"
IMAGE_FIELD, PROBLEM_FIELD = "image", "problem"
# Remote header reads come in ranges this large: with small members (the usual case) counting reads the
# whole shard at one request per MiB instead of one request per header; larger members are skipped over.
REMOTE_HEADER_READ = 1 << 20
LOCAL_HEADER_READ = 4096
SAMPLE_READ_BUFFER = 8 << 20


@dataclass(frozen=True)
class WebSample:
    """One sample: its key and its files by extension (``{"jpg": b"...", "json": b"..."}``), in shard order."""

    key: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class BrokenSample:
    """Where a shard stops being readable, or a sample that cannot be taken as one: ``error`` says why.

    ``key`` is the sample that was being read (``None`` when the archive broke before its first member).
    """

    key: str | None
    error: str


@dataclass
class _Group:
    key: str
    files: dict[str, bytes | None] = field(default_factory=dict)
    problem: str | None = None
    row_key: str | None = None  # the key its row is reported under, when ``key`` was already used in the shard


# Why a member of a shard is part of no sample (counted in a run's ``left_out_entries``, as files on disk are)
MEMBER_HIDDEN, MEMBER_NO_EXTENSION = "shard member with a hidden name (.)", "shard member without an extension"


def left_out_reason(name: str) -> str:
    """Why :func:`split_member_name` gives None for ``name``."""
    return MEMBER_HIDDEN if posixpath.basename(name).startswith(".") else MEMBER_NO_EXTENSION


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"dir/000001.seg.png"`` -> ``("dir/000001", "seg.png")``; None for names that belong to no sample."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(directory, stem), extension


def sample_id(shard: str, key: str | None) -> str:
    """A row's ``id``: ``<shard URI>#<key>``, unique across shards and datasets; the shard URI alone for the
    error row of a shard that broke before its first sample."""
    return shard if key is None else f"{shard}#{key}"


def split_sample_id(row_id: str) -> tuple[str, str | None]:
    """Inverse of :func:`sample_id`: ``(shard URI, key)``, for joining a report without ``shard``/``key`` columns."""
    shard, separator, key = row_id.partition(SHARD_EXTENSION + "#")
    return (shard + SHARD_EXTENSION, key) if separator else (row_id, None)


def _finish(group: _Group) -> WebSample | BrokenSample:
    if group.problem is not None:
        return BrokenSample(group.row_key or group.key, group.problem)
    return WebSample(group.key, group.files)  # type: ignore[arg-type]  # bytes when read with data


def _broken_tail(group: _Group | None, problem: str) -> BrokenSample:
    if group is None:
        return BrokenSample(None, f"{problem}; no sample could be read")
    return BrokenSample(group.key, f"{problem}; sample {group.key} may be incomplete and any later samples are lost")


def _end_problem(archive: tarfile.TarFile, handle: BinaryIO, size: int, shard: str) -> str | None:
    """After the last header: None when a zero block (end of archive) follows, else why the shard is broken.

    :mod:`tarfile` ends iteration quietly on a short or invalid header, which would drop the rest of a cut
    shard without a word; this check turns that into an error.
    """
    offset = archive.offset
    if size - offset < tarfile.BLOCKSIZE:
        return f"shard {shard} is truncated: it ends at byte {size}, where a tar header or the archive's end is due"
    handle.seek(offset)
    if handle.read(tarfile.BLOCKSIZE).count(0) == tarfile.BLOCKSIZE:
        return None
    return f"shard {shard} is corrupt: no valid tar header at byte {offset}"


def _walk(
    handle: BinaryIO,
    size: int,
    shard: str,
    with_data: bool,
    max_member_bytes: int | None = None,
    left_out: list[tuple[str, str]] | None = None,
) -> Iterator[WebSample | BrokenSample]:
    """The shard's samples in order; file contents only ``with_data`` (else every file maps to None). A member
    over ``max_member_bytes`` (its header says how big) is never read: its sample becomes an error row.
    Members that belong to no sample are appended to ``left_out`` as (why, ``<shard>#<member name>``)."""
    try:
        archive = tarfile.open(fileobj=handle, mode="r:")
    except tarfile.TarError as error:
        yield BrokenSample(None, f"shard {shard} is not a readable tar archive: {error}")
        return
    group: _Group | None = None
    finished: dict[str, int] = {}  # key -> how many runs of its members were seen
    regular: dict[str, tuple[int, int]] = {}  # name -> (data offset, size) of the regular files so far: link targets
    while True:
        try:
            member = archive.next()
            problem = _end_problem(archive, handle, size, shard) if member is None else None
        except tarfile.TarError as error:
            member, problem = None, f"shard {shard} is corrupt or truncated after byte {archive.offset}: {error}"
        if member is None:
            if problem is not None:
                yield _broken_tail(group, problem)
            elif group is not None:
                yield _finish(group)
            return
        archive.members.clear()  # tarfile keeps every header it read; a shard can hold 100k members
        if member.isreg():
            regular[member.name] = (member.offset_data, member.size)
        parts = split_member_name(member.name) if not member.isdir() else None
        if parts is None:
            if left_out is not None and not member.isdir():
                left_out.append((left_out_reason(member.name), f"{shard}#{member.name}"))
            continue
        key, extension = parts
        if group is None or key != group.key:
            if group is not None:
                yield _finish(group)
                finished[group.key] = finished.get(group.key, 0) + 1
            group = _Group(key)
            if key in finished:  # reported as <key>#part<n>: one id per row, so resume and joins stay exact
                group.row_key = f"{key}#part{finished[key] + 1}"
                group.problem = (
                    f"the files of sample {key} are not adjacent in shard {shard}: {member.name} comes after other"
                    " samples (WebDataset keeps a sample's files together); this part was not screened"
                )
        offset, length = regular.get(member.linkname, (0, 0)) if member.islnk() else (member.offset_data, member.size)
        if offset + length > size:
            yield BrokenSample(
                group.row_key or key,
                f"shard {shard} is truncated: it ends at byte {size}, inside {member.name}, which needs"
                f" {offset + length}; sample {key} is incomplete and any later samples are lost",
            )
            return
        if extension in group.files and group.problem is None:
            group.problem = f"sample {key} has two members named {member.name} in shard {shard}"
        unreadable = _unreadable(member, regular, max_member_bytes)
        if unreadable:
            group.problem = group.problem or unreadable
            group.files[extension] = None
            continue
        if with_data:
            handle.seek(offset)  # tarfile seeks back to its next header itself
            group.files[extension] = handle.read(length)
        else:
            group.files[extension] = None


def _unreadable(member: tarfile.TarInfo, regular: dict[str, tuple[int, int]], max_bytes: int | None) -> str | None:
    """Why a member's data is not taken, or None. A hard link (GNU tar stores a repeated file as one) reads its
    target's data; a symbolic link is never followed; an oversized member is never read."""
    if member.islnk() and member.linkname not in regular:
        return f"{member.name} is a hard link to {member.linkname}, which is not an earlier file of the shard"
    if member.issym():
        return f"{member.name} is a symbolic link (to {member.linkname}), which is not followed"
    if not (member.isreg() or member.islnk()):
        return f"{member.name} is not a regular file"
    length = regular[member.linkname][1] if member.islnk() else member.size
    if max_bytes is not None and length > max_bytes:
        return f"file too large: {member.name} has {length} bytes > max_bytes {max_bytes} (not read)"
    return None


def _open(fs: pafs.FileSystem, path: str, buffer_size: int) -> tuple[io.BufferedReader, int]:
    raw = fs.open_input_file(path)
    return io.BufferedReader(raw, buffer_size=buffer_size), raw.size()  # type: ignore[arg-type]


@dataclass(frozen=True)
class ShardCount:
    rows: int  # rows reading the shard yields: samples plus at most one broken tail
    left_out: tuple[tuple[str, str], ...]  # (why, <shard>#<member>): members that belong to no sample


def count_samples(fs: pafs.FileSystem, path: str, shard: str) -> ShardCount:
    """What reading this shard yields, and what it leaves out, from its headers only."""
    buffer_size = LOCAL_HEADER_READ if isinstance(fs, pafs.LocalFileSystem) else REMOTE_HEADER_READ
    handle, size = _open(fs, path, buffer_size)
    left_out: list[tuple[str, str]] = []
    with handle:
        rows = sum(1 for _ in _walk(handle, size, shard, with_data=False, left_out=left_out))
    return ShardCount(rows, tuple(left_out))


def read_samples(
    fs: pafs.FileSystem, path: str, shard: str, max_member_bytes: int | None = None
) -> Iterator[WebSample | BrokenSample]:
    """Every sample of one shard with its files, one at a time; ``shard`` (the URI) is used in messages."""
    handle, size = _open(fs, path, SAMPLE_READ_BUFFER)
    with handle:
        yield from _walk(handle, size, shard, with_data=True, max_member_bytes=max_member_bytes)


def _text_field(sample: WebSample, name: str) -> str | None:
    """A passthrough value: the member ``<key>.<name>`` as text (stripped: ``cls`` files may end in a newline),
    else field ``name`` of the ``json`` member, non-strings as JSON text."""
    if name in sample.files:
        return sample.files[name].decode("utf-8", errors="replace").strip()
    if "json" not in sample.files:
        return None
    value = json.loads(sample.files["json"]).get(name)
    return value if value is None or isinstance(value, str) else json.dumps(value)


def sample_row(
    sample: WebSample | BrokenSample, shard: str, image_extensions: tuple[str, ...], columns: tuple[str, ...]
) -> dict:
    """One row for the decoder: ``id`` (``<shard>#<key>``), shard, key, the image bytes, the problem that
    makes it an error row before decoding (or None), and ``columns`` as text (see :func:`_text_field`)."""
    row = {
        "id": sample_id(shard, sample.key),
        SHARD_COLUMN: shard,
        KEY_COLUMN: sample.key,
        IMAGE_FIELD: None,
        PROBLEM_FIELD: None,
        **dict.fromkeys(columns),
    }
    if isinstance(sample, BrokenSample):
        row[PROBLEM_FIELD] = sample.error
        return row
    try:
        row.update({name: _text_field(sample, name) for name in columns})
    except Exception as error:  # invalid, not an object, nested past the recursion limit: this sample's problem
        row[PROBLEM_FIELD] = (
            f"cannot read {sample.key}.json for columns {list(columns)}: {type(error).__name__}: {error}"
        )
    image = next((ext for ext in sample.files if ext.lower() in image_extensions), None)
    if image is None:
        wanted, found = ", ".join(image_extensions), ", ".join(sample.files)
        row[PROBLEM_FIELD] = f"sample {sample.key} has no image member ({wanted}); it has: {found}"
    else:
        row[IMAGE_FIELD] = sample.files[image]
    return row


class ShardReader:
    """A Ray Data ``map_batches`` function: a batch of shards (``path``, ``shard`` URI) -> tables of sample rows.

    A generator, so a shard streams out in blocks of at most ``rows_per_block`` rows or ``bytes_per_block``
    image bytes: memory per task is one block, not one shard (shards are often 0.25-1 GB).
    """

    def __init__(
        self,
        fs: pafs.FileSystem,
        image_extensions: tuple[str, ...],
        columns: tuple[str, ...] = (),
        rows_per_block: int = 256,
        bytes_per_block: int = 64 << 20,
        max_member_bytes: int | None = None,
    ) -> None:
        self.fs = fs
        self.max_member_bytes = max_member_bytes
        self.image_extensions = image_extensions
        self.columns = tuple(c for c in columns if c not in (SHARD_COLUMN, KEY_COLUMN))
        self.rows_per_block = rows_per_block
        self.bytes_per_block = bytes_per_block
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                (SHARD_COLUMN, pa.string()),
                (KEY_COLUMN, pa.string()),
                (IMAGE_FIELD, pa.binary()),
                (PROBLEM_FIELD, pa.string()),
                *((name, pa.string()) for name in self.columns),
            ]
        )

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        rows: list[dict] = []
        held = 0
        for path, shard in zip(batch.column("path").to_pylist(), batch.column(SHARD_COLUMN).to_pylist()):
            for sample in read_samples(self.fs, path, shard, self.max_member_bytes):
                row = sample_row(sample, shard, self.image_extensions, self.columns)
                rows.append(row)
                held += len(row[IMAGE_FIELD] or b"")
                if len(rows) >= self.rows_per_block or held >= self.bytes_per_block:
                    yield pa.Table.from_pylist(rows, self.schema)
                    rows, held = [], 0
        if rows:
            yield pa.Table.from_pylist(rows, self.schema)


def write_shards(
    samples: Iterable[WebSample],
    location: Location,
    *,
    prefix: str = "",
    max_samples: int = 10_000,
    max_bytes: int = 1 << 30,
) -> list[str]:
    """Write samples as WebDataset shards ``<location>/<prefix>00000.tar``, ``...00001.tar``; returns their URIs.

    A shard is closed once it holds ``max_samples`` samples or adding the next would pass ``max_bytes`` of
    member data (a single larger sample still gets a shard of its own). Each sample's files become members
    ``<key>.<extension>`` in the order given, so the shards read back key for key with :func:`read_samples`
    (and with img2dataset's and webdataset's readers). Members carry mtime 0 and mode 0444, so the same
    samples give byte-identical shards. Several writers can share a directory with distinct ``prefix``es
    (one per input shard or task). Raises ValueError for a key or extension that would not read back as
    written (empty, a dot in the key's file name, a slash in the extension) and for a key repeated within
    a shard. Nothing is written for no samples.
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be positive")
    written: list[str] = []
    archive: tarfile.TarFile | None = None
    stream = None
    keys: set[str] = set()
    held = 0

    def close() -> None:
        if archive is not None:
            archive.close()
            stream.close()

    try:
        for sample in samples:
            size = _check_sample(sample)
            if archive is None or len(keys) >= max_samples or (keys and held + size > max_bytes):
                close()
                target = location.join(f"{prefix}{len(written):05d}{SHARD_EXTENSION}")
                if not written:
                    location.fs.create_dir(location.path, recursive=True)
                stream = location.fs.open_output_stream(target.path)
                archive = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT)
                written.append(target.uri)
                keys, held = set(), 0
            if sample.key in keys:
                raise ValueError(f"sample key {sample.key!r} repeats within shard {written[-1]}")
            keys.add(sample.key)
            held += size
            for extension, data in sample.files.items():
                info = tarfile.TarInfo(f"{sample.key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                archive.addfile(info, io.BytesIO(data))
    finally:
        close()
    return written


def _check_sample(sample: WebSample) -> int:
    """The sample's member bytes; raises ValueError when it would not read back under the same key and files."""
    base = posixpath.basename(sample.key)
    if not base or "." in base or sample.key.startswith("/"):
        raise ValueError(f"sample key {sample.key!r} must be a relative path whose file name has no dot")
    if not sample.files:
        raise ValueError(f"sample {sample.key!r} has no files")
    for extension in sample.files:
        if not extension or "/" in extension:
            raise ValueError(f"sample {sample.key!r} has an invalid extension {extension!r}")
    return sum(len(data) for data in sample.files.values())
