"""Random access to files on HTTP servers that ignore ``Range`` (Python's ``http.server``, many internal file
shares): each such file is downloaded once per process, streamed to a local spool, and read from there.

fsspec reads an HTTP file by ranged GETs; a server that answers a ranged GET with the whole file (200) makes
it fail ("The HTTP server doesn't appear to support range requests") as soon as a reader seeks, which Parquet
readers always do (the footer comes first). Image files are read whole and never hit this. The spool is bounded
(``SPOOL_MAX_BYTES`` and the disk's free space, checked before the download), logged once per file and deleted
when the process exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SPOOL_MAX_BYTES = 16 << 30
SPOOL_CHUNK = 8 << 20
_spooled: dict[str, str] = {}  # URL -> local copy, for this process
_serves_ranges: dict[str, bool] = {}  # server (scheme://host:port) -> whether it answered a ranged read, probed once
_lock = threading.Lock()


class SpoolError(OSError):
    """A range-less file that cannot be spooled (too large, no room)."""


def _delete_spool() -> None:
    for path in _spooled.values():
        try:
            os.unlink(path)
        except OSError:
            pass


atexit.register(_delete_spool)


class RangeFallbackHandler(pafs.FSSpecHandler):
    """fsspec's HTTP filesystem behind pyarrow's interface, with the spool fallback for range-less servers."""

    def open_input_file(self, path: str) -> pa.NativeFile:
        """Only random-access readers (Parquet, tar shards) open files this way; whole-file reads (images) open
        streams and never need the spool."""
        server = "/".join(path.split("/", 3)[:3])
        ranges = _serves_ranges.get(server)
        if ranges is None:
            ranges = self._ranged_read_works(path)
            if ranges is not None:
                _serves_ranges[server] = ranges
        if ranges is not False:
            return super().open_input_file(path)
        return pa.OSFile(_spooled.get(path) or self._spool(path), mode="r")

    def _ranged_read_works(self, path: str) -> bool | None:
        """Whether reading the last byte works: fsspec raises ValueError when the server answers a ranged GET
        with the whole file (before reading its body), or gives no size to seek by. None: too small to tell."""
        try:
            with self.fs.open(path, mode="rb") as file:
                if file.size is not None and file.size < 2:
                    return None
                file.seek((file.size or 0) - 1)
                file.read(1)
        except ValueError:
            return False
        return True

    def _spool(self, path: str) -> str:
        with _lock:
            if path in _spooled:
                return _spooled[path]
            size = self.fs.size(path) or 0
            directory = tempfile.gettempdir()
            free = shutil.disk_usage(directory).free
            if size > min(SPOOL_MAX_BYTES, free):
                raise SpoolError(
                    f"{path}: the server does not serve byte ranges, and the file ({size} bytes) does not fit the "
                    f"local spool (at most {SPOOL_MAX_BYTES} bytes, {free} free in {directory}); serve it from a "
                    "server that supports Range requests, or copy it to local disk or an object store"
                )
            log.warning(
                "%s: the server does not serve byte ranges; reading it from a local copy (%d bytes)", path, size
            )
            handle, local = tempfile.mkstemp(prefix="rayood-spool-", dir=directory)
            try:
                with os.fdopen(handle, "wb") as out, self.fs.open(path, mode="rb", block_size=0) as stream:
                    while chunk := stream.read(SPOOL_CHUNK):
                        out.write(chunk)
            except BaseException:
                os.unlink(local)
                raise
            _spooled[path] = local
            return local
