"""A finished screening report, opened for reading by the jobs that work on reports (filter, audit)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayood.config import S3Settings
from rayood.data.sources import InputError
from rayood.report.target import ROWS, SUCCESS, SUMMARY
from rayood.storage import Location, resolve


def is_finished_report(location: Location) -> bool:
    return location.join(SUCCESS).exists() and location.join(SUMMARY).exists()


@dataclass(frozen=True)
class FinishedReport:
    location: Location
    summary: dict

    @classmethod
    def open(cls, uri: str, s3: S3Settings | None = None, flag: str = "--report") -> FinishedReport:
        """Refuse anything but a complete report: rows of an unfinished run may be missing or doubled."""
        location = resolve(uri, s3)
        if not location.is_dir():
            raise InputError(f"{flag} {uri}: no report directory there")
        if not location.join(SUCCESS).exists():
            raise InputError(
                f"{flag} {uri} is not a finished rayood report (no {SUCCESS}): the screening is still running, "
                "failed, or this is not a report directory; wait for it or run jobs/screen.py again"
            )
        try:
            summary = json.loads(location.join(SUMMARY).read_bytes())
        except ValueError as error:
            raise InputError(f"{flag} {uri}: {SUMMARY} is not valid JSON: {error}") from None
        return cls(location, summary)

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def scores(self) -> list[str]:
        return list(self.summary["scores"])

    def check_score(self, score: str | None, flag: str = "--score") -> str:
        """The named score, or the report's decision score when none is named."""
        chosen = score or self.summary["decision"]["score"]
        if chosen not in self.summary["scores"]:
            raise InputError(f"{flag} {chosen!r} is not a score of the report {self.uri}; it has {self.scores}")
        return chosen

    def dataset(self) -> pads.Dataset:
        rows = self.location.join(ROWS)
        return pads.dataset(rows.path, filesystem=rows.fs, format="parquet")

    def sources(self) -> set[str]:
        """The distinct inputs its rows came from, in one streamed pass over the ``source`` column."""
        found: set[str] = set()
        for batch in self.dataset().to_batches(columns=["source"]):
            found.update(pc.unique(batch.column("source")).to_pylist())
        return found
