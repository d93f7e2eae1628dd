"""The report directory: its states, and the markers that keep two runs from mixing rows.

    OUTPUT/_LEASE         held while a run writes: one live run per output (rayood.report.lease)
    OUTPUT/_STARTED       written first: the run's fingerprint and every attempt (run id, start time)
    OUTPUT/rows/*.parquet one row per input; each file is named ``<run id>_...`` after the attempt that wrote it
    OUTPUT/summary.json   counts, quantiles, thresholds, timings, bundle id (over all rows)
    OUTPUT/ray_data_stats.txt  Ray Data's per-operator timings of the last attempt (where the time went)
    OUTPUT/_SUCCESS       written last: only a report with it is complete

A finished report is replaced only with ``overwrite``. An unfinished one is resumed when it was started
for the same fingerprint (inputs, bundle, row-shaping settings): its complete row files are kept, a file
cut short by a kill (no Parquet footer) is deleted, and the (source, id) keys already written are handed
back so the run skips those inputs. An unfinished report of another run is refused unless ``overwrite``,
which discards it.

Nothing else is ever deleted. A directory is a rayood report only if it holds ``_STARTED``: ``_SUCCESS`` alone
is what Spark and Hadoop leave in every table they write, so it proves nothing. A report directory that also
holds files rayood does not write (a user's notes, another tool's output) is refused whole, with those files
named, rather than emptied, replaced or resumed around them.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayood.bundle import utc_now
from rayood.report.guard import OutputError, claim_output
from rayood.report.lease import LEASE, OutputLease
from rayood.report.summary import finite_or_null
from rayood.storage import STORAGE_ERRORS, Location, StorageError, retry_transient

log = logging.getLogger(__name__)

STARTED = "_STARTED"
SUCCESS = "_SUCCESS"
SUMMARY = "summary.json"
STATS = "ray_data_stats.txt"
PAGE = "report.html"  # rayood.pages.report_page
ROWS = "rows"
REPORT_FILES = frozenset({STARTED, SUCCESS, SUMMARY, STATS, PAGE, LEASE})  # and rows/*.parquet
KEY = ("source", "id")


def _is_report_file(name: str) -> bool:
    return name in REPORT_FILES or (name.startswith(f"{ROWS}/") and name.endswith(".parquet"))


def _row_keys(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as handle:
        return pq.read_table(handle, columns=list(KEY))


@dataclass(frozen=True)
class Written:
    """What earlier attempts of this run left under ``rows/``: ids per source, and how many rows and files.

    The ids are Arrow string arrays (the id's length plus 4 bytes a row, against about 100 for a Python set of
    strings: BENCHMARKS.md, resume keys). The ids of Parquet, WebDataset and synthetic sources go to the object
    store once and every read task filters against that one copy; image-file ids are used at planning time
    and go nowhere.
    """

    ids: dict[str, pa.Array] = field(default_factory=dict)
    rows: int = 0
    files: int = 0


class ReportTarget:
    def __init__(self, location: Location, fingerprint: str) -> None:
        self.location = location
        self.rows = location.join(ROWS)
        self.fingerprint = fingerprint
        self.run_id = uuid.uuid4().hex[:12]
        self.lease = OutputLease(location, self.run_id)

    def prepare(self, overwrite: bool) -> Written:
        """Take the output's lease and make it ready for this attempt; returns the rows it can reuse (none for
        a fresh report). The lease is held until :meth:`finish` or :meth:`release`."""
        if self.location.exists() and not self.location.is_dir():  # before the lease: it cannot be written there
            raise OutputError(f"output {self.location.uri} is a file, not a directory")
        self.lease.acquire()
        try:
            return self._prepare(overwrite)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.lease.release()

    def _delete_contents(self) -> None:
        """Everything but this run's lease."""
        for info in self.location.list_files():
            if info.path != self.lease.location.path:
                self.location.fs.delete_file(info.path)

    def _prepare(self, overwrite: bool) -> Written:
        location = self.location
        names = claim_output(
            location,
            what="a finished report",
            owns=_is_report_file,
            finished=lambda found: SUCCESS in found,
            overwrite=overwrite,
            marker=STARTED,
            ignore=frozenset({self.lease.location.path}),
        )
        attempts: list[dict] = []
        written = Written()
        if names:
            if SUCCESS in names:
                log.warning("replacing the finished report at %s", location.uri)
                self._delete_contents()
            else:
                started = self._read_started()
                if overwrite:
                    log.warning("discarding the unfinished report at %s", location.uri)
                    self._delete_contents()
                elif started.get("fingerprint") != self.fingerprint:
                    raise OutputError(
                        f"output {location.uri} holds an unfinished report of another run (other inputs, bundle "
                        "or screen settings); pass --overwrite to discard it, or choose another --output"
                    )
                else:
                    attempts = started["attempts"]
                    written = self._scan_rows()
                    log.info(
                        "resuming the unfinished report at %s: reusing %d rows from %d files of %d earlier attempt(s)",
                        location.uri,
                        written.rows,
                        written.files,
                        len(attempts),
                    )
        attempts = [*attempts, {"run_id": self.run_id, "started": utc_now()}]
        marker = {"fingerprint": self.fingerprint, "attempts": attempts}
        location.join(STARTED).write_bytes(json.dumps(marker, indent=2).encode())
        return written

    def _read_started(self) -> dict:
        try:
            return json.loads(self.location.join(STARTED).read_bytes())
        except ValueError:  # cut short by a kill while it was written, or not ours
            return {}

    def _scan_rows(self) -> Written:
        """Keys of every complete row file; a file cut short (no Parquet footer) is deleted and its rows are redone.
        A file that cannot be read at all (storage failing beyond its retries) fails the run and is kept: a
        transient error must never delete finished rows."""
        tables, files = [], 0
        for info in self.rows.list_files() if self.rows.is_dir() else []:
            try:
                tables.append(retry_transient(lambda: _row_keys(self.rows.fs, info.path)))
                files += 1
            except pa.ArrowInvalid as error:
                log.warning(
                    "deleting the unreadable row file %s (%s): its rows are redone",
                    self.location.uri_of(info.path),
                    error,
                )
                self.rows.fs.delete_file(info.path)
            except STORAGE_ERRORS as error:
                raise StorageError(f"cannot read the row file {self.location.uri_of(info.path)}: {error}") from None
        if not tables:
            return Written()
        keys = pa.concat_tables(tables)
        unusable = keys.column("id").null_count or keys.num_rows - keys.group_by(list(KEY)).aggregate([]).num_rows
        if unusable:
            raise OutputError(
                f"the unfinished report at {self.location.uri} has rows without an id or with a repeated "
                "(source, id), so it cannot be resumed row by row; pass --overwrite to start it again"
            )
        ids = {
            source: keys.filter(pc.equal(keys.column("source"), source)).column("id").cast(pa.string()).combine_chunks()
            for source in pc.unique(keys.column("source")).to_pylist()
        }
        return Written(ids, keys.num_rows, files)

    def finish(self, summary: dict) -> None:
        self.lease.check()
        text = json.dumps(finite_or_null(summary), indent=2, sort_keys=True, allow_nan=False)
        self.location.join(SUMMARY).write_bytes(text.encode())
        self.location.join(SUCCESS).write_bytes(b"")
        self.release()
