"""The audit's numbers: every score's two-sample and flag-rate tests, the embedding MMD, overall and per group.

Each group of the target's ``by`` column is compared with the whole reference corpus. The scored rows
of both reports (scores, p-values, embeddings) are held on the driver: rows x (8 bytes per score and
p-value + 2 bytes per embedding dimension), about 1 GB for a million rows with 512-d embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayood.audit.two_sample import MMD_MAX_ROWS, MMD_PERMUTATIONS, flagged_test, ks_test, mmd_test
from rayood.report.columns import EMBEDDING, ID, SOURCE, STATUS, STATUS_OK, pvalue_col, score_col
from rayood.report.reader import FinishedReport

NO_EMBEDDINGS = "no embeddings in the report: MMD skipped"
NULL_GROUP = "(null)"


@dataclass(frozen=True)
class MmdSettings:
    permutations: int = MMD_PERMUTATIONS
    max_rows: int = MMD_MAX_ROWS
    seed: int = 0


def scored_rows(report: FinishedReport, scores: list[str], extra: tuple[str, ...] = ()) -> pa.Table:
    """The ``ok`` rows of a report with its scores, p-values, the embedding when present, and ``extra``."""
    names = set(report.dataset().schema.names)
    wanted = [ID, SOURCE, *(score_col(s) for s in scores), *(pvalue_col(s) for s in scores), *extra]
    if EMBEDDING in names:
        wanted.append(EMBEDDING)
    return report.dataset().to_table(columns=wanted, filter=pc.field(STATUS) == STATUS_OK)


def embeddings(table: pa.Table) -> np.ndarray | None:
    if EMBEDDING not in table.column_names:
        return None
    column = table.column(EMBEDDING).combine_chunks()
    return (
        column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), column.type.list_size)
    )


def groups_of(table: pa.Table, by: str) -> np.ndarray:
    return np.array([NULL_GROUP if v is None else str(v) for v in table.column(by).to_pylist()], dtype=object)


def values_of(table: pa.Table, column: str, rows: np.ndarray | None = None) -> np.ndarray:
    """One column's values (of the selected rows), without NaN."""
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    values = values if rows is None else values[rows]
    return values[~np.isnan(values)]


def _compare(
    reference: pa.Table,
    target: pa.Table,
    rows: np.ndarray | None,
    scores: list[str],
    alpha: float,
    calibration_rows: dict[str, int],
    reference_embeddings: np.ndarray | None,
    target_embeddings: np.ndarray | None,
    mmd: MmdSettings,
) -> dict:
    """Reference against the target rows selected by ``rows`` (all when None)."""
    result: dict = {"rows": int(target.num_rows if rows is None else rows.sum()), "scores": {}}
    for name in scores:
        result["scores"][name] = {
            "ks": ks_test(values_of(reference, score_col(name)), values_of(target, score_col(name), rows)),
            "flagged": flagged_test(values_of(target, pvalue_col(name), rows), alpha, calibration_rows[name]),
        }
    if reference_embeddings is None or target_embeddings is None:
        result["mmd"] = {"skipped": NO_EMBEDDINGS}
    else:
        chosen = target_embeddings if rows is None else target_embeddings[rows]
        result["mmd"] = mmd_test(
            reference_embeddings, chosen, permutations=mmd.permutations, max_rows=mmd.max_rows, seed=mmd.seed
        )
    return result


def audit(
    reference: FinishedReport,
    target: FinishedReport,
    *,
    calibration_rows: dict[str, int],
    by: str | None = None,
    mmd: MmdSettings = MmdSettings(),
) -> tuple[dict, pa.Table, pa.Table]:
    """The audit (audit.json's content) and the scored rows of both sides it was computed from."""
    scores = [name for name in target.scores if name in reference.scores]
    alpha = float(target.summary["decision"]["alpha"])
    reference_rows = scored_rows(reference, scores)
    target_rows = scored_rows(target, scores, (by,) if by else ())
    reference_embeddings, target_embeddings = embeddings(reference_rows), embeddings(target_rows)
    args = (scores, alpha, calibration_rows, reference_embeddings, target_embeddings, mmd)
    result: dict = {
        "reference": {
            "report": reference.uri,
            "scored_rows": reference_rows.num_rows,
            "errors": reference.summary["errors"],
        },
        "target": {"report": target.uri, "scored_rows": target_rows.num_rows, "errors": target.summary["errors"]},
        "bundle_id": target.summary.get("bundle_id"),
        "alpha": alpha,
        "decision_score": target.summary["decision"]["score"],
        "reference_flagged": {
            name: flagged_test(values_of(reference_rows, pvalue_col(name)), alpha, calibration_rows[name])
            for name in scores
        },
        **_compare(reference_rows, target_rows, None, *args),
    }
    if by:
        labels = groups_of(target_rows, by)
        result["by"] = by
        result["groups"] = {
            group: _compare(reference_rows, target_rows, labels == group, *args) for group in sorted(set(labels))
        }
    return result, reference_rows, target_rows
