"""The fast tier's one end-to-end run (``make test-fast``): a small screening run on the tiny bundle, which
conftest.py fits once per code version and keeps in pytest's cache."""

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayood.report.columns import IS_OOD, STATUS_OK, pvalue_col, score_col
from rayood.report.reader import FinishedReport
from rayood.screen.pipeline import screen
from tests.conftest import tiny_config

ROWS = 96


@pytest.mark.smoke
def test_a_small_screen_on_the_tiny_bundle_scores_every_row_once(ray_cluster, tiny_bundle, demo_data, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pq.read_table(demo_data[1] / "corpus.parquet").slice(0, ROWS), corpus)
    summary, uri = screen(
        tiny_config(screen={"inputs": [str(corpus)], "output": str(tmp_path / "report"), "bundle": tiny_bundle})
    )
    assert summary["rows"] == summary["ok"] == summary["expected_rows"] == ROWS

    report = FinishedReport.open(uri)
    rows = report.dataset().to_table()
    ids = rows.column("id").to_pylist()
    assert len(set(ids)) == len(ids) == ROWS and set(ids) == set(pq.read_table(corpus).column("id").to_pylist())
    assert pc.all(pc.equal(rows.column("status"), STATUS_OK)).as_py()
    for name in report.scores:
        scores, pvalues = rows.column(score_col(name)).to_numpy(), rows.column(pvalue_col(name)).to_numpy()
        assert np.isfinite(scores).all() and ((pvalues > 0) & (pvalues <= 1)).all(), name
    assert rows.column(IS_OOD).null_count == 0
