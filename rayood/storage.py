"""URIs to filesystems: local paths, ``s3://`` on any S3-compatible endpoint, and every other fsspec URI.

Everything goes through ``pyarrow.fs`` so that the same filesystem object serves Ray Data reads and
writes, Ray Train checkpoints and bundle files. ``s3://`` uses pyarrow's native S3 client (its retries and
the AWS credential chain), or s3fs where ``s3.client`` says so (profiles, requester-pays); any other scheme
(``gs://``, ``az://``, ``https://``, ``hf://``, ``memory://``, ...) goes through fsspec, wrapped as
``PyFileSystem(FSSpecHandler(...))`` so that the rest of rayood keeps one code path. The objects are built
from the URI, config and environment only (no secret inside), so they pickle cheaply to every Ray task, and
each process finds credentials the way that filesystem's package does.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError

from rayood.config import S3Settings
from rayood.http_spool import RangeFallbackHandler


class StorageError(RuntimeError):
    """A path that cannot be read or written, phrased with its URI."""


# pyarrow's S3 client retries a request answered with 503 SlowDown or 500, or not answered at all, except a
# GetObject: there it reports the answer as "AWS Error INTERNAL_FAILURE ... Failed to flush response stream" and
# gives up (pyarrow 26.0.1, measured against moto behind tests/faulty_proxy.py). Ray Data retries its own reads on
# these messages (``DataContext.retried_io_errors``); rayood's own reads (bundles, leases, reports) retry here.
TRANSIENT_ERRORS = (
    "AWS Error INTERNAL_FAILURE",
    "AWS Error NETWORK_CONNECTION",
    "AWS Error SLOW_DOWN",
    "AWS Error SERVICE_UNAVAILABLE",
    "HTTP status 503",
)
READ_ATTEMPTS = 5
READ_CHUNK = 64 << 20
# What an object-store call raises: OSError, and the botocore errors that s3fs lets through unchanged (no endpoint,
# no credentials, a timeout), which are not OSErrors. pyarrow's own client raises OSError only.
STORAGE_ERRORS = (OSError, BotoCoreError)
T = TypeVar("T")


def retry_transient(read: Callable[[], T], attempts: int = READ_ATTEMPTS) -> T:
    """``read()``, tried again (backing off 0.1 s, 0.2 s, ...) while it fails with a transient object-store error;
    any other error, or the last attempt's, is raised as it is. Only for reads: they can be repeated safely."""
    for attempt in range(attempts - 1):
        try:
            return read()
        except OSError as error:
            if not any(message in str(error) for message in TRANSIENT_ERRORS):
                raise
            time.sleep(min(2.0, 0.1 * 2**attempt))
    return read()


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _s3_filesystem(settings: S3Settings) -> pafs.FileSystem:
    return _s3fs_filesystem(settings) if settings.client == "s3fs" else _pyarrow_s3_filesystem(settings)


def _endpoint(settings: S3Settings) -> str | None:
    endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.username or parsed.password:
        raise StorageError(
            "the S3 endpoint URL holds credentials; give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    return f"{parsed.scheme}://{parsed.netloc}"


def _region(settings: S3Settings) -> str:
    return settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _s3fs(settings: S3Settings):  # -> s3fs.S3FileSystem (imported here: only s3fs users pay for it)
    import s3fs

    return s3fs.S3FileSystem(
        anon=settings.anonymous,
        endpoint_url=_endpoint(settings),
        profile=settings.profile,
        requester_pays=settings.requester_pays,
        use_listings_cache=False,
        client_kwargs={"region_name": _region(settings)},
        config_kwargs={"retries": {"max_attempts": settings.retries + 1, "mode": "standard"}},
    )


def _s3fs_filesystem(settings: S3Settings) -> pafs.PyFileSystem:
    """s3fs behind pyarrow's interface. Like the pyarrow client it holds no secret (fsspec pickles a filesystem
    as its constructor arguments), and it caches no listings: a report directory changes while a run reads it."""
    return pafs.PyFileSystem(pafs.FSSpecHandler(_s3fs(settings)))


def _pyarrow_s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    """An S3 filesystem that holds no secret: each process that unpickles it (every Ray task gets a copy)
    finds credentials through the AWS chain of its own machine (environment, ~/.aws, instance or pod role),
    so keys never travel in task arguments, logs or Ray's object store. A local cluster's workers inherit the
    driver's environment; on KubeRay every pod gets the keys from the Secret (k8s/README.md)."""
    endpoint = _endpoint(settings)
    kwargs: dict = {
        "region": _region(settings),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.retries + 1),
        # a small write is then one PutObject instead of a multipart upload's three requests (an error, such as a
        # missing bucket, is raised when the file is closed instead of when it is opened)
        "allow_delayed_open": True,
    }
    if endpoint:
        kwargs["scheme"], kwargs["endpoint_override"] = endpoint.split("://", 1)
    if settings.anonymous:
        kwargs["anonymous"] = True
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A URI resolved to a filesystem and the path that filesystem understands (and, for ``s3://``, the
    settings it was built from, for the conditional writes pyarrow's client lacks: :class:`S3ConditionalObject`)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    s3: S3Settings | None = field(default=None, compare=False)

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts)
        return Location(uri, self.fs, path, self.s3)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except STORAGE_ERRORS as error:
            raise StorageError(f"cannot reach {self.uri}: {error}") from None

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            # read(n), not read(): pyarrow's S3 stream reads "all" as sequential 256 KiB range requests (129 GETs
            # for 32 MiB); read(n) is one ranged GET of up to n bytes (benchmarks/s3_clients.py)
            chunks = []
            with self.fs.open_input_stream(self.path) as stream:
                while chunk := stream.read(READ_CHUNK):
                    chunks.append(chunk)
            return b"".join(chunks)

        try:
            return retry_transient(read)
        except STORAGE_ERRORS as error:
            raise StorageError(f"cannot read {self.uri}: {error}") from None

    def write_bytes(self, data: bytes) -> None:
        self.write_chunks([data])

    def write_chunks(self, chunks: Iterable[bytes]) -> None:
        """Write the file from pieces produced one at a time, so that it never has to be in memory whole."""
        try:
            parent = posixpath.dirname(self.path)
            if parent and not isinstance(self.fs, pafs.S3FileSystem):  # S3 has no directories: that is two requests
                self.fs.create_dir(parent, recursive=True)  # (a HEAD and a marker object) per file for nothing
            with self.fs.open_output_stream(self.path) as stream:
                for chunk in chunks:
                    stream.write(chunk)
        except STORAGE_ERRORS as error:
            raise StorageError(f"cannot write {self.uri}: {error}") from None

    def list_files(self) -> list[pafs.FileInfo]:
        """Every file below this directory, recursively, sorted by path."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        except STORAGE_ERRORS as error:
            raise StorageError(f"cannot list {self.uri}: {error}") from None
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    def list_input_files(self) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        """The files below this directory to read as inputs (``(path, size)``, sorted), and ``(why, printable name)`` of
        each entry left out. On local disks directory links are never followed (a ``loop -> ..`` link would
        repeat the tree or never end), a file link only when it resolves to a file inside this directory, and
        a name that is not UTF-8 cannot become an id: all three are left out, not fatal. Object stores have
        neither links nor undecodable keys."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return [(info.path, info.size) for info in self.list_files()], []
        return _walk_local(self.path)

    def overlaps(self, other: Location) -> bool:
        """Whether one of the two holds the other (or both are one place): writing or deleting under one may
        change what the other holds."""
        mine, theirs = self.uri.rstrip("/") + "/", other.uri.rstrip("/") + "/"
        return mine.startswith(theirs) or theirs.startswith(mine)

    def delete_contents(self) -> None:
        if self.is_dir():
            self.fs.delete_dir_contents(self.path, missing_dir_ok=True)

    def uri_of(self, fs_path: str) -> str:
        """The URI of a path that this filesystem returned (for example from ``list_files``)."""
        return self.uri_prefix + fs_path

    @cached_property
    def uri_prefix(self) -> str:
        """What turns this filesystem's paths into URIs: ``s3://``, ``gs://``, ``memory://``; nothing for local
        files and for URLs, whose paths are whole URLs already. Computed once: ``uri_of`` runs per listed file."""
        if is_s3(self.uri):
            return "s3://"
        if isinstance(self.fs, pafs.PyFileSystem):
            full = self.fs.handler.fs.unstrip_protocol(self.path)
            return full[: len(full) - len(self.path)]
        return ""


class PreconditionFailed(StorageError):
    """A conditional write found the object otherwise than required: already there, or changed since read."""


class S3ConditionalObject:
    """One S3 object written only under a condition that the server checks atomically: created with
    ``If-None-Match: *`` (fails if it exists), replaced with ``If-Match: <ETag>`` (fails if it changed since it was
    read). AWS S3 has both since 2024, as do MinIO and moto; a store that ignores the headers would overwrite
    silently, which :meth:`supported` probes for. Through s3fs (botocore exposes the headers), whichever client
    ``s3.client`` chose for the data."""

    def __init__(self, location: Location) -> None:
        self.uri, self.path = location.uri, location.path
        self._fs = _s3fs(location.s3 or S3Settings())

    def _put(self, path: str, data: bytes, **condition: str) -> str:
        try:
            return self._fs.pipe_file(path, data, **condition)["ETag"]
        except FileExistsError:
            raise PreconditionFailed(f"{self.uri} exists already") from None
        except (OSError, BotoCoreError) as error:
            cause = getattr(error.__cause__, "response", None) or {}
            if cause.get("Error", {}).get("Code") == "PreconditionFailed":
                raise PreconditionFailed(f"{self.uri} changed since it was read") from None
            raise StorageError(f"cannot write {self.uri}: {error}") from None

    def create(self, data: bytes, path: str | None = None) -> str:
        """Write the object if there is none; its ETag. Raises PreconditionFailed when one exists."""
        return self._put(path or self.path, data, mode="create")

    def replace(self, data: bytes, etag: str) -> str:
        """Overwrite the object if its ETag is still ``etag``; the new ETag. Raises PreconditionFailed if not."""
        return self._put(self.path, data, IfMatch=etag)

    def read(self) -> tuple[bytes, str] | None:
        """(content, ETag), or None when there is no object. The ETag is taken first: if the object changes in
        between, the content is newer than the ETag and a replace based on it fails, which is the safe way."""
        try:
            etag = retry_transient(lambda: self._fs.info(self.path)["ETag"])
            return retry_transient(lambda: self._fs.cat_file(self.path)), etag
        except FileNotFoundError:
            return None
        except (OSError, BotoCoreError) as error:
            raise StorageError(f"cannot read {self.uri}: {error}") from None

    def supported(self, probe_suffix: str) -> bool:
        """Whether this endpoint refuses a second create of one key: a probe object beside this one, created
        twice and deleted."""
        probe = f"{self.path}.probe-{probe_suffix}"
        try:
            self.create(b"", probe)
        except StorageError:
            return False
        try:
            self.create(b"", probe)
            return False  # the header was ignored: a second create overwrote the first
        except PreconditionFailed:
            return True
        except StorageError:
            return False
        finally:
            try:
                self._fs.rm_file(probe)
            except (OSError, BotoCoreError):
                pass


LINK_NOT_FOLLOWED, NAME_NOT_UTF8 = "link not followed", "name not UTF-8"


def _walk_local(root: str) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    inside = os.path.realpath(root) + os.sep
    files: list[tuple[str, int]] = []
    left_out: list[tuple[str, str]] = []
    pending = [os.fsencode(root)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError as error:
            raise StorageError(f"cannot list {root}: {error}") from None
        for entry in entries:
            try:
                path = entry.path.decode("utf-8")
            except UnicodeDecodeError:
                left_out.append((NAME_NOT_UTF8, entry.path.decode("utf-8", "backslashreplace")))
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path).decode("utf-8", "backslashreplace")
                if not (target.startswith(inside) and os.path.isfile(target)):  # a directory, a loop, outside
                    left_out.append((LINK_NOT_FOLLOWED, path))
                    continue
                files.append((path, os.path.getsize(target)))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                files.append((path, entry.stat(follow_symlinks=False).st_size))
    return sorted(files), sorted(left_out)


def redacted(value: object) -> object:
    """``value`` (a URI, or a structure of them) without what may be a secret: the user and password of a URL
    and its query string (signed URLs, SAS tokens). For what reports record about their inputs and bundle."""
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item) for item in value]
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "redacted" if parts.query else "", parts.fragment))


def _fsspec_location(uri: str) -> Location:
    import fsspec

    scheme = uri.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as error:  # a known scheme whose package is not installed (gcsfs, adlfs, huggingface_hub)
        raise StorageError(f"{uri}: {scheme}:// needs an extra package on every node: {error}") from None
    except ValueError as error:
        raise StorageError(
            f"unsupported URI scheme in {uri!r} ({error}): use a local path, s3:// or an fsspec URI"
        ) from None
    handler = RangeFallbackHandler(fs) if scheme in ("http", "https") else pafs.FSSpecHandler(fs)
    return Location(uri.rstrip("/"), pafs.PyFileSystem(handler), path.rstrip("/") or path)


def resolve(uri: str, s3: S3Settings | None = None) -> Location:
    """Turn a local path, ``s3://bucket/key`` or any fsspec URI into a :class:`Location`."""
    if is_s3(uri):
        path = uri[len("s3://") :].rstrip("/")
        if not path:
            raise StorageError(f"{uri!r} names no bucket")
        settings = s3 or S3Settings()
        return Location(uri.rstrip("/"), _s3_filesystem(settings), path, settings)
    if "://" in uri and not uri.startswith("file://"):
        return _fsspec_location(uri)
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return Location(local, pafs.LocalFileSystem(), local)
