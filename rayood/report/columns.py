"""The report's column names and status values: one place for every module that writes or reads a report
(the scoring actor, the summary, filter, audit, evaluate, fitting's calibration). No imports, so the lightest
reader can use it."""

from __future__ import annotations

ID, SOURCE, STATUS, ERROR = "id", "source", "status", "error"
KEY_COLUMNS = (ID, SOURCE, STATUS, ERROR)  # every row has them, scored or not
STATUS_OK, STATUS_ERROR = "ok", "error"
IS_OOD = "is_ood"
PREDICTED_CLASS = "predicted_class"
EMBEDDING = "embedding"

SCORE_PREFIX, PVALUE_PREFIX, QVALUE_PREFIX = "score_", "pvalue_", "qvalue_"
COMPUTED_COLUMNS = (*KEY_COLUMNS, IS_OOD, PREDICTED_CLASS, EMBEDDING)  # no passthrough column may take these names
COMPUTED_PREFIXES = (SCORE_PREFIX, PVALUE_PREFIX, QVALUE_PREFIX)


def score_col(name: str) -> str:
    return f"{SCORE_PREFIX}{name}"


def pvalue_col(name: str) -> str:
    """The conformal p-value against the bundle's held-out ID scores."""
    return f"{PVALUE_PREFIX}{name}"


def qvalue_col(name: str) -> str:
    """The Benjamini-Hochberg adjusted p-value (``jobs/filter.py``)."""
    return f"{QVALUE_PREFIX}{name}"
