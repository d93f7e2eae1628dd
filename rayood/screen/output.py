"""The report directory: its states, and the markers that keep two runs from mixing rows.

    OUTPUT/_STARTED       written first (run id, start time)
    OUTPUT/rows/*.parquet one row per input
    OUTPUT/summary.json   counts, quantiles, thresholds, timings, bundle id
    OUTPUT/_SUCCESS       written last: only a report with it is complete

A finished report is replaced only with ``overwrite``; an unfinished one from an earlier attempt is
cleared and redone; a non-empty directory that is not a rayood report is never touched.
"""

from __future__ import annotations

import json
import logging
import uuid

from rayood.bundle import utc_now
from rayood.storage import Location

log = logging.getLogger(__name__)

STARTED = "_STARTED"
SUCCESS = "_SUCCESS"
SUMMARY = "summary.json"
ROWS = "rows"


class OutputError(RuntimeError):
    """An output location that this run must not write to."""


class ReportTarget:
    def __init__(self, location: Location) -> None:
        self.location = location
        self.rows = location.join(ROWS)
        self.run_id = uuid.uuid4().hex[:12]

    def prepare(self, overwrite: bool) -> None:
        location = self.location
        if location.exists() and not location.is_dir():
            raise OutputError(f"output {location.uri} is a file, not a directory")
        entries = location.list_files() if location.is_dir() else []
        if entries:
            if location.join(SUCCESS).exists():
                if not overwrite:
                    raise OutputError(
                        f"output {location.uri} already holds a finished report; pass --overwrite "
                        "(or set screen.overwrite) to replace it, or choose another --output"
                    )
                log.warning("replacing the finished report at %s", location.uri)
            elif location.join(STARTED).exists():
                log.warning("clearing an unfinished report at %s from an earlier attempt", location.uri)
            else:
                raise OutputError(f"output {location.uri} is not empty and is not a rayood report; refusing to write")
            location.delete_contents()
        location.join(STARTED).write_bytes(json.dumps({"run_id": self.run_id, "started": utc_now()}).encode())

    def finish(self, summary: dict) -> None:
        self.location.join(SUMMARY).write_bytes(json.dumps(summary, indent=2, sort_keys=True).encode())
        self.location.join(SUCCESS).write_bytes(b"")
