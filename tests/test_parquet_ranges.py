"""Parquet inputs read as row ranges (issue 15, item 1): read tasks of bounded size over any layout of files
and row groups, every row once and in order."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data

from rayood.config import CorpusSettings
from rayood.data.decode import DecodeLimits, formats_for
from rayood.data.parquet_ranges import ParquetRowRanges, split_rows
from rayood.data.reader import read_decoded
from rayood.data.sources import InputError, plan_source
from rayood.storage import resolve


@pytest.mark.parametrize("rows_per_task", [1, 3, 7, 64])
def test_split_rows_covers_every_row_once_in_order_within_the_task_size(rows_per_task):
    layout = [("a", (5, 0, 2)), ("b", ()), ("c", (9,))]
    tasks = split_rows(layout, rows_per_task)
    assert all(0 < sum(p.stop - p.start for p in task) <= rows_per_task for task in tasks)
    covered = [(p.path, p.row_group, row) for task in tasks for p in task for row in range(p.start, p.stop)]
    expected = [(path, group, row) for path, groups in layout for group, n in enumerate(groups) for row in range(n)]
    assert covered == expected
    assert len(tasks) == -(-16 // rows_per_task)  # as few tasks as the size allows


def _corpus(tmp_path):
    """Three files: several row groups, a single row group, and an empty file."""
    (tmp_path / "corpus").mkdir()
    ids = [f"r{i:03}" for i in range(130)]
    tables = [ids[:100], ids[100:], []]
    for index, chunk in enumerate(tables):
        table = pa.table(
            {"id": pa.array(chunk, pa.string()), "image": pa.array([i.encode() for i in chunk], pa.binary())}
        )
        pq.write_table(table, tmp_path / "corpus" / f"part-{index}.parquet", row_group_size=[30, 1000, 10][index])
    return str(tmp_path / "corpus"), ids


def test_the_planner_records_each_files_row_groups(tmp_path):
    uri, _ = _corpus(tmp_path)
    plan = plan_source(uri, CorpusSettings())
    assert plan.row_groups == ((30, 30, 30, 10), (30,), (0,)) and plan.rows == 130 and plan.data_bytes > 0


def test_a_read_over_row_ranges_yields_every_row_once_in_bounded_tasks(ray_cluster, tmp_path):
    uri, ids = _corpus(tmp_path)
    plan = plan_source(uri, CorpusSettings())
    source = ParquetRowRanges(
        resolve(uri).fs,
        list(zip(plan.paths, plan.row_groups)),
        ["id"],
        rows_per_task=16,
        batch_rows=8,
        bytes_per_row=10,
    )
    dataset = ray.data.read_datasource(source)
    blocks = [ray.get(ref).column("id").to_pylist() for ref in dataset.get_internal_block_refs()]
    assert sorted(i for block in blocks for i in block) == ids  # every row once (blocks may finish in any order)
    assert len(blocks) == 9 and max(len(block) for block in blocks) <= 16
    for block in blocks:  # each task's rows are one run of the files' order
        assert block == ids[ids.index(block[0]) : ids.index(block[0]) + len(block)]


def test_a_synthetic_corpus_is_planned_without_storage_and_refuses_bad_counts():
    plan = plan_source("synthetic://2500", CorpusSettings())
    assert (plan.kind, plan.rows, plan.paths, plan.location) == ("synthetic", 2500, (), None)
    for uri in ("synthetic://", "synthetic://0", "synthetic://ten"):
        with pytest.raises(InputError, match="synthetic://N with N a positive row count"):
            plan_source(uri, CorpusSettings())
    with pytest.raises(InputError, match="no columns \\['label'\\]"):
        plan_source("synthetic://5", CorpusSettings(), extra_columns=("label",))


def test_a_synthetic_corpus_decodes_to_the_same_rows_every_time(ray_cluster):
    plan = plan_source("synthetic://300", CorpusSettings())
    limits = DecodeLimits(10**6, 10**6, formats_for(("jpg",)))
    rows = [
        read_decoded([plan], image_column="image", id_column="id", size=16, limits=limits, batch_size=8).to_arrow_refs()
        for _ in range(2)
    ]
    first, second = (pa.concat_tables(ray.get(refs)).sort_by("id") for refs in rows)
    assert first.num_rows == 300 and set(first.column("status").to_pylist()) == {"ok"}
    assert first.column("id").to_pylist() == sorted(f"synthetic-{i}" for i in range(300))
    assert first.column("pixels").equals(second.column("pixels"))
    assert len({bytes(p) for p in first.column("pixels").to_pylist()}) > 100  # distinct images, not one repeated
