"""The run summary (``summary.json``) and its one-screen rendering, computed from the written report."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayood.config import DecisionSettings, TruthSettings
from rayood.detectors.calibrate import threshold
from rayood.evaluation.metrics import auroc, detection_metrics
from rayood.report.columns import IS_OOD, STATUS, STATUS_OK, score_col
from rayood.report.sampling import Reservoir

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


def error_kind(message: str) -> str:
    """Group error messages by their cause (the text before the first colon)."""
    return message.split(":", 1)[0]


# Score quantiles are exact up to this many scored rows and come from a uniform sample of this size beyond it
# (rank error about 1/sqrt(n) = 0.003): the driver's memory for them does not grow with the corpus.
QUANTILE_SAMPLE = 100_000


class ScoreSample(Reservoir):
    """A score's sampled values, with its exact count and mean."""

    def stats(self) -> dict:
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": self.total / self.count,
            "quantiles": {f"p{round(q * 100):02d}": float(np.quantile(self.values, q)) for q in QUANTILES},
        }


def score_samples(score_names: list[str]) -> dict[str, ScoreSample]:
    """A sample of each score's values, for :func:`summarize` to fill (the screening page draws from them too)."""
    return {name: ScoreSample(QUANTILE_SAMPLE, seed) for seed, name in enumerate(score_names)}


def _key_digests(sources: list, ids: list) -> np.ndarray:
    """16 bytes per (source, id): repeats are counted from these, not from the keys themselves (100+ bytes
    each), and a collision among 10^9 rows has a chance of about 10^-21."""
    digest = b"".join(hashlib.blake2b(f"{s}\0{i}".encode(), digest_size=16).digest() for s, i in zip(sources, ids))
    return np.frombuffer(digest, dtype="V16")


class _Tally:
    """What a summary needs from the report rows, batch by batch. Per row the driver keeps only, when counting
    repeats, 16 bytes (the key digests) and, with a truth column, the scores and labels the evaluation needs."""

    def __init__(
        self, score_names: list[str], truth: TruthSettings | None, count_repeats: bool, samples: dict[str, ScoreSample]
    ) -> None:
        self.score_names = score_names
        self.truth = truth
        self.rows = self.ok = self.flagged = 0
        self.errors: Counter[str] = Counter()
        self.per_source: Counter[str] = Counter()
        self.digests: list[np.ndarray] | None = [] if count_repeats else None
        self.scores = samples
        self.evaluation_rows: list[pa.Table] = []

    def add(self, batch: pa.Table | pa.RecordBatch) -> None:
        batch = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        ok = np.asarray(pc.equal(batch.column(STATUS), STATUS_OK).to_numpy(zero_copy_only=False), dtype=bool)
        self.rows += batch.num_rows
        self.ok += int(ok.sum())
        self.errors.update(error_kind(e) for e in batch.column("error").to_pylist() if e is not None)
        self.flagged += pc.sum(pc.cast(batch.column(IS_OOD), pa.int64())).as_py() or 0
        sources = batch.column("source").to_pylist()
        self.per_source.update(sources)
        if self.digests is not None:
            self.digests.append(_key_digests(sources, batch.column("id").to_pylist()))
        for name, reservoir in self.scores.items():
            reservoir.add(batch.column(score_col(name)).to_numpy(zero_copy_only=False)[ok].astype(np.float64))
        if self.truth is not None:
            columns = [self.truth.column, STATUS, *(score_col(name) for name in self.score_names)]
            self.evaluation_rows.append(batch.select(columns))

    @property
    def repeated_keys(self) -> int:
        """Rows whose (source, id) an earlier row already had (0 when not counted)."""
        if self.digests is None:
            return 0
        digests = np.concatenate(self.digests) if self.digests else np.empty(0, dtype="V16")
        return self.rows - len(np.unique(digests))


def _evaluation(tables: list[pa.Table], names: list[str], truth: TruthSettings) -> dict:
    if not tables:
        return {"truth_column": truth.column, "id_rows": 0, "ood_rows": 0, "note": "no rows"}
    table = pa.concat_tables(tables)
    ok = np.asarray(pc.equal(table.column(STATUS), STATUS_OK).to_numpy(zero_copy_only=False), dtype=bool)
    labels = np.array([str(v) for v in table.column(truth.column).to_pylist()], dtype=object)
    is_id = np.isin(labels, truth.id_values)
    result = {"truth_column": truth.column, "id_rows": int((is_id & ok).sum()), "ood_rows": int((~is_id & ok).sum())}
    if result["id_rows"] == 0 or result["ood_rows"] == 0:
        result["note"] = "needs both ID and OOD rows among the scored rows"
        return result
    columns = {name: table.column(score_col(name)).to_numpy(zero_copy_only=False) for name in names}
    result["scores"] = {name: detection_metrics(v[ok & is_id], v[ok & ~is_id]) for name, v in columns.items()}
    groups = sorted(set(labels[ok & ~is_id]))
    if len(groups) > 1:
        result["per_group_auroc"] = {
            group: {name: auroc(v[ok & is_id], v[ok & (labels == group)]) for name, v in columns.items()}
            for group in groups
        }
    return result


def summarize(
    report: pa.Table | Iterable[pa.RecordBatch],
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
    count_repeats: bool = True,
    samples: dict[str, ScoreSample] | None = None,
) -> dict:
    """The summary of a report's rows (a table, or its record batches streamed: a corpus of any size).

    ``count_repeats``: count rows whose (source, id) repeats (16 bytes per row on the driver); a caller whose
    inputs cannot repeat a key by construction (planning refuses repeated Parquet ids; file paths are unique)
    passes False, and ``duplicate_ids`` is 0.

    ``skipped_files``: files of another kind than their input's; ``left_out``: directory entries that are not
    inputs at all (hidden names, links not followed, names that are not UTF-8), counted by reason.

    ``samples``: the per-score samples to fill (:func:`score_samples`), for a caller that draws from them too."""
    tally = _Tally(score_names, truth, count_repeats, samples or score_samples(score_names))
    for batch in report.to_batches() if isinstance(report, pa.Table) else report:
        tally.add(batch)
    warnings: list[str] = []
    summary: dict = {
        "bundle_id": bundle_id,
        "rows": tally.rows,
        "expected_rows": expected_rows,
        "ok": tally.ok,
        "errors": tally.rows - tally.ok,
        "duplicate_ids": tally.repeated_keys,
        "skipped_non_image_files": skipped_files,
        "left_out_entries": dict(sorted((left_out or {}).items())),
        "error_kinds": dict(tally.errors.most_common(MAX_ERROR_KINDS)),
        "per_source": dict(tally.per_source),
        "decision": {
            "score": decision.score,
            "alpha": decision.alpha,
            "threshold": _json_threshold(calibration[decision.score], decision.alpha, warnings, decision.score),
            "flagged": int(tally.flagged),
            "flagged_fraction": float(tally.flagged / tally.ok) if tally.ok else 0.0,
        },
        "scores": {},
        "timings": {"elapsed_s": round(elapsed_s, 3), "rows_per_s": round(tally.rows / max(elapsed_s, 1e-9), 2)},
        "warnings": warnings,
    }
    for name in score_names:
        stats = tally.scores[name].stats()
        stats["threshold"] = _json_threshold(calibration[name], decision.alpha, [], name)
        summary["scores"][name] = stats
    if truth is not None:
        summary["evaluation"] = _evaluation(tally.evaluation_rows, score_names, truth)
    return summary


def render(summary: dict, report_uri: str) -> str:
    """A one-screen text view of a summary."""
    timings = summary["timings"]
    decision = summary["decision"]
    lines = [
        f"rayood screening report: {report_uri}",
        f"  rows {summary['rows']} (expected {summary['expected_rows']}): ok {summary['ok']}, "
        f"errors {summary['errors']}; {timings['rows_per_s']:.1f} rows/s over {timings['elapsed_s']:.1f} s",
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
        lines.append(
            f"  evaluation on {evaluation['truth_column']!r}: {evaluation['id_rows']} ID vs "
            f"{evaluation['ood_rows']} OOD rows"
        )
        lines.append(f"    {'score':<18}{'AUROC':>8}{'FPR@95':>8}")
        for name, metrics in evaluation["scores"].items():
            lines.append(f"    {name:<18}{metrics['auroc']:>8.4f}{metrics['fpr_at_95_tpr']:>8.4f}")
    return "\n".join(lines)
