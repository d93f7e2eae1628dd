"""The run summary (``summary.json``) and its one-screen rendering, computed from the written report."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayood.config import DecisionSettings, TruthSettings
from rayood.detectors.calibrate import threshold
from rayood.report.metrics import auroc, detection_metrics

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_ERROR_KINDS = 10


def finite_or_null(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by None, so that strict JSON readers accept it."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def _json_threshold(calibration: np.ndarray, alpha: float, warnings: list[str], name: str) -> float | None:
    """The threshold, or None (with a warning) when too few calibration rows leave no score able to reach
    ``alpha``: strict JSON has no Infinity."""
    value = threshold(calibration, alpha)
    if np.isfinite(value):
        return value
    warnings.append(
        f"{name}: {len(calibration)} calibration rows cannot give p <= {alpha} (that needs at least "
        f"{int(np.ceil(1 / alpha - 1))}): nothing is flagged, threshold is null; refit with more held-out ID rows"
    )
    return None


def _error_kind(message: str) -> str:
    """Group error messages by their cause (the text before the first colon)."""
    return message.split(":", 1)[0]


def _score_stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "quantiles": {f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES},
    }


def _evaluation(table: pa.Table, ok: np.ndarray, names: list[str], truth: TruthSettings) -> dict:
    labels = np.array([str(v) for v in table.column(truth.column).to_pylist()], dtype=object)
    is_id = np.isin(labels, truth.id_values)
    result = {"truth_column": truth.column, "id_rows": int((is_id & ok).sum()), "ood_rows": int((~is_id & ok).sum())}
    if result["id_rows"] == 0 or result["ood_rows"] == 0:
        result["note"] = "needs both ID and OOD rows among the scored rows"
        return result
    columns = {name: table.column(f"score_{name}").to_numpy(zero_copy_only=False) for name in names}
    result["scores"] = {name: detection_metrics(v[ok & is_id], v[ok & ~is_id]) for name, v in columns.items()}
    groups = sorted(set(labels[ok & ~is_id]))
    if len(groups) > 1:
        result["per_group_auroc"] = {
            group: {name: auroc(v[ok & is_id], v[ok & (labels == group)]) for name, v in columns.items()}
            for group in groups
        }
    return result


def summarize(
    table: pa.Table,
    *,
    score_names: list[str],
    calibration: dict[str, np.ndarray],
    decision: DecisionSettings,
    expected_rows: int,
    elapsed_s: float,
    bundle_id: str,
    truth: TruthSettings | None = None,
    skipped_files: int = 0,
    left_out: dict[str, int] | None = None,
) -> dict:
    """``skipped_files``: files of another kind than their input's; ``left_out``: directory entries that are not
    inputs at all (hidden names, links not followed, names that are not UTF-8), counted by reason."""
    ok = np.asarray(pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False), dtype=bool)
    errors = Counter(_error_kind(e) for e in table.column("error").to_pylist() if e is not None)
    flagged = pc.sum(pc.cast(table.column("is_ood"), pa.int64())).as_py() or 0
    ids = table.column("id")
    warnings: list[str] = []
    summary: dict = {
        "bundle_id": bundle_id,
        "rows": table.num_rows,
        "expected_rows": expected_rows,
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "duplicate_ids": table.num_rows - pc.count_distinct(ids).as_py(),
        "skipped_non_image_files": skipped_files,
        "left_out_entries": dict(sorted((left_out or {}).items())),
        "error_kinds": dict(errors.most_common(MAX_ERROR_KINDS)),
        "per_source": {
            str(row["values"]): int(row["counts"]) for row in pc.value_counts(table.column("source")).to_pylist()
        },
        "decision": {
            "score": decision.score,
            "alpha": decision.alpha,
            "threshold": _json_threshold(calibration[decision.score], decision.alpha, warnings, decision.score),
            "flagged": int(flagged),
            "flagged_fraction": float(flagged / ok.sum()) if ok.any() else 0.0,
        },
        "scores": {},
        "timings": {"elapsed_s": round(elapsed_s, 3), "rows_per_s": round(table.num_rows / max(elapsed_s, 1e-9), 2)},
        "warnings": warnings,
    }
    for name in score_names:
        values = table.column(f"score_{name}").to_numpy(zero_copy_only=False)[ok]
        stats = _score_stats(values.astype(np.float64))
        stats["threshold"] = _json_threshold(calibration[name], decision.alpha, [], name)
        summary["scores"][name] = stats
    if truth is not None:
        summary["evaluation"] = _evaluation(table, ok, score_names, truth)
    return summary


def render(summary: dict, report_uri: str) -> str:
    """A one-screen text view of a summary."""
    timings = summary["timings"]
    decision = summary["decision"]
    lines = [
        f"rayood screening report: {report_uri}",
        f"  rows {summary['rows']} (expected {summary['expected_rows']}): ok {summary['ok']}, errors {summary['errors']}"
        f"; {timings['rows_per_s']:.1f} rows/s over {timings['elapsed_s']:.1f} s",
        f"  is_ood: {decision['flagged']} flagged ({decision['flagged_fraction']:.1%}) by {decision['score']}"
        f" at alpha {decision['alpha']} ("
        + (f"score > {decision['threshold']:.4g})" if decision["threshold"] is not None else "no threshold)"),
        *(f"  warning: {warning}" for warning in summary.get("warnings", [])),
    ]
    if summary["skipped_non_image_files"]:
        lines.append(f"  skipped {summary['skipped_non_image_files']} files without an image extension")
    for why, count in summary.get("left_out_entries", {}).items():
        lines.append(f"  left out {count} entries: {why}")
    for kind, count in summary["error_kinds"].items():
        lines.append(f"  error: {count} x {kind}")
    evaluation = summary.get("evaluation", {})
    if "scores" in evaluation:
        lines.append(f"  evaluation on {evaluation['truth_column']!r}: {evaluation['id_rows']} ID vs {evaluation['ood_rows']} OOD rows")
        lines.append(f"    {'score':<18}{'AUROC':>8}{'FPR@95':>8}")
        for name, metrics in evaluation["scores"].items():
            lines.append(f"    {name:<18}{metrics['auroc']:>8.4f}{metrics['fpr_at_95_tpr']:>8.4f}")
    return "\n".join(lines)
