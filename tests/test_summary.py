"""The run summary streams the report (issue 15, item 4): the same figures from a table or its batches, exact
quantiles up to QUANTILE_SAMPLE scored rows and a bounded uniform sample beyond, repeats counted by (source, id)."""

import numpy as np
import pyarrow as pa
import pytest

from rayood.config import DecisionSettings
from rayood.report import summary as summary_module
from rayood.report.sampling import Reservoir
from rayood.report.summary import summarize


def report(n: int, seed: int = 0, *, ids=None, sources=None) -> pa.Table:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(n)
    status = np.where(np.arange(n) % 10 == 9, "error", "ok")
    scores[status == "error"] = np.nan
    return pa.table(
        {
            "id": ids if ids is not None else [f"r{i}" for i in range(n)],
            "source": sources if sources is not None else ["a" if i % 3 else "b" for i in range(n)],
            "status": status.tolist(),
            "error": [None if s == "ok" else "not an image: x" for s in status],
            "is_ood": pa.array(scores > 1.6, mask=status == "error"),
            "score_mfsim": pa.array(scores, from_pandas=True),
        }
    )


def summary_of(table, **kwargs) -> dict:
    return summarize(
        table,
        score_names=["mfsim"],
        calibration={"mfsim": np.linspace(-3, 3, 99)},
        decision=DecisionSettings(score="mfsim", alpha=0.05),
        expected_rows=table.num_rows if isinstance(table, pa.Table) else 0,
        elapsed_s=1.0,
        bundle_id="b",
        **kwargs,
    )


def test_a_streamed_report_gives_the_summary_of_the_whole_table():
    table = report(5_000)
    whole = summary_of(table)
    streamed = summary_of(table.to_batches(max_chunksize=333))
    streamed["expected_rows"] = whole["expected_rows"]
    assert streamed["scores"]["mfsim"].pop("mean") == pytest.approx(
        whole["scores"]["mfsim"].pop("mean")
    )  # summed in another order
    assert streamed == whole
    ok = table.column("score_mfsim").to_numpy(zero_copy_only=False)[np.arange(5_000) % 10 != 9]
    assert whole["rows"] == 5_000 and whole["ok"] == 4_500 and whole["per_source"] == {"a": 3333, "b": 1667}
    assert whole["scores"]["mfsim"]["quantiles"]["p50"] == pytest.approx(
        np.quantile(ok, 0.5)
    )  # exact below the sample size
    assert summary_of(table)["scores"]["mfsim"]["mean"] == pytest.approx(ok.mean())
    assert whole["decision"]["flagged"] == int((ok > 1.6).sum())


def test_beyond_the_sample_size_quantiles_come_from_a_bounded_uniform_sample(monkeypatch):
    monkeypatch.setattr(summary_module, "QUANTILE_SAMPLE", 2_000)
    table = report(200_000, seed=1)
    ok = table.column("score_mfsim").to_numpy(zero_copy_only=False)[np.arange(200_000) % 10 != 9]
    stats = summary_of(table.to_batches(max_chunksize=4_096))["scores"]["mfsim"]
    assert stats["count"] == len(ok) and stats["mean"] == pytest.approx(ok.mean())  # exact whatever the size
    for name, q in [("p05", 0.05), ("p50", 0.5), ("p95", 0.95)]:  # rank error of a 2,000 sample: ~1/sqrt(2000)
        rank = (ok < stats["quantiles"][name]).mean()
        assert abs(rank - q) < 0.03, (name, rank)
    reservoir = Reservoir(2_000, seed=0)
    reservoir.add(np.arange(10_000.0))
    assert len(reservoir.values) == 2_000 and reservoir.values.mean() == pytest.approx(
        5_000, rel=0.05
    )  # late rows kept too


def test_repeats_are_counted_by_source_and_id():
    table = report(6, ids=["x", "x", "y", "z", "z", "w"], sources=["a", "b", "a", "a", "a", "a"])
    assert summary_of(table)["duplicate_ids"] == 1  # ("a", "z") twice; "x" is in two sources: two rows
    assert (
        summary_of(table, count_repeats=False)["duplicate_ids"] == 0
    )  # inputs that cannot repeat a key: no digests kept
