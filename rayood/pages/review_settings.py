"""What a user asks of a filter's review page: how many images per gallery, and ``--by``, the column whose groups
it counts rejections in, optionally reduced to the part that names a group (a URL's domain, a WebDataset shard)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rayood.config import ConfigError

NO_GROUP = "(none)"
# the host of scheme://[user@]host[:port]/...; anything else has no domain
_DOMAIN = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<part>[^/?#:]+)"
# a WebDataset row's id is <shard URI>#<key> (rayood.data.webdataset.sample_id)
_SHARD = r"^(?P<part>.*\.tar)#"
REDUCTIONS = {"domain": _DOMAIN, "shard": _SHARD}
MAX_GALLERY = 200  # images per gallery: each is an original read back and a ~10 KB inline PNG


@dataclass(frozen=True)
class GroupBy:
    column: str
    reduction: str | None = None

    @classmethod
    def parse(cls, text: str) -> GroupBy:
        """``COLUMN`` or ``COLUMN:REDUCTION`` (``domain`` or ``shard``)."""
        column, _, reduction = text.partition(":")
        if not column:
            raise ValueError(f"--by {text!r}: name a report column, e.g. source or url:domain")
        if reduction and reduction not in REDUCTIONS:
            raise ValueError(f"--by {text!r}: unknown reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}")
        return cls(column, reduction or None)

    def __str__(self) -> str:
        return f"{self.column}:{self.reduction}" if self.reduction else self.column

    def check(self, schema: pa.Schema, report_uri: str) -> None:
        if self.column not in schema.names:
            raise ConfigError(
                f"--by {self}: the report {report_uri} has no column {self.column!r} (its columns: "
                f"{', '.join(schema.names)}); screen with it in screen.passthrough_columns"
            )

    def labels(self, batch: pa.Table) -> pa.Array | pa.ChunkedArray:
        """One group name per row (``(none)`` for a null, ``(no domain)`` for a value without one, ...)."""
        values = pc.cast(batch.column(self.column), pa.string())
        if self.reduction:
            part = pc.struct_field(pc.extract_regex(values, REDUCTIONS[self.reduction]), "part")
            if self.reduction == "domain":
                part = pc.utf8_lower(part)
            values = pc.if_else(pc.is_null(values), values, pc.fill_null(part, f"(no {self.reduction})"))
        return pc.fill_null(values, NO_GROUP)


@dataclass(frozen=True)
class ReviewSettings:
    """``gallery``: images in each of the four galleries (0 to MAX_GALLERY); ``by``: count rejections per group of
    this column; ``seed``: of the random sample of kept images."""

    by: GroupBy | None = None
    gallery: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.gallery <= MAX_GALLERY:
            raise ConfigError(f"--review-size must be between 0 and {MAX_GALLERY}, got {self.gallery}")
