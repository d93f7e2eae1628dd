"""Progress of a screening run, told from the report itself: rows in finished row files, rate and ETA.

Row files are written as rows are scored (one writer per actor), so the rows on storage are the rows done and
safe from a kill. A daemon thread on the driver lists the report's row directory every ``every_s`` seconds,
reads the footer of each file it has not seen (a file still being written has none yet and is read later)
and logs one line. It never fails the run: a listing error is logged at debug level and tried again.
"""

from __future__ import annotations

import logging
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from rayood.storage import Location

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class RowProgress:
    """``with RowProgress(rows, total, every_s):`` logs ``screened X of N rows (r rows/s, ETA t)`` meanwhile."""

    def __init__(self, rows: Location, total: int, every_s: float) -> None:
        self.rows = rows
        self.total = total
        self.every_s = every_s
        self.counted: dict[str, int] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rayood-progress", daemon=True)

    def __enter__(self) -> RowProgress:
        if self.every_s > 0:
            self.started, self.start_rows = time.monotonic(), self.rows_done()
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def rows_done(self) -> int:
        """Rows in the finished row files (earlier attempts' included)."""
        for info in self.rows.list_files() if self.rows.is_dir() else []:
            if info.path not in self.counted:
                try:
                    with self.rows.fs.open_input_file(info.path) as handle:
                        self.counted[info.path] = pq.ParquetFile(handle).metadata.num_rows
                except (OSError, pa.ArrowInvalid):  # still being written: no footer yet, counted later
                    continue
        return sum(self.counted.values())

    def _run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                done = self.rows_done()
            except Exception as error:  # noqa: BLE001 - progress must never fail the run
                log.debug("progress: cannot list %s: %s", self.rows.uri, error)
                continue
            elapsed = time.monotonic() - self.started
            if done == self.start_rows:  # actors still starting, or the first row file not finished
                log.info("screened %d of %d rows; no new row file yet, %s in", done, self.total, _duration(elapsed))
                continue
            rate = (done - self.start_rows) / elapsed
            log.info(
                "screened %d of %d rows (%.0f%%), %.1f rows/s, ETA %s",
                done,
                self.total,
                100 * done / max(self.total, 1),
                rate,
                _duration((self.total - done) / rate),
            )
