"""What a screening may delete in its output directory: only the files a rayood report consists of. ``--overwrite``
must not empty a Spark table (whose ``_SUCCESS`` looks like ours) or a report folder a user added notes to."""

import pytest

from rayood.report.guard import OutputError
from rayood.report.target import ROWS, STARTED, SUCCESS, SUMMARY, ReportTarget
from rayood.storage import resolve


def finished_report(path, fingerprint="fingerprint"):
    target = ReportTarget(resolve(str(path)), fingerprint)
    target.prepare(overwrite=False)
    (path / ROWS).mkdir()
    (path / ROWS / f"{target.run_id}_000000.parquet").write_bytes(b"rows")
    target.finish({"rows": 1})
    return path


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_spark_table_is_never_emptied_although_it_has_a_success_marker(tmp_path, overwrite):
    table = tmp_path / "table"
    table.mkdir()
    (table / SUCCESS).write_bytes(b"")
    (table / "part-00000-1b2c.snappy.parquet").write_bytes(b"spark rows")
    with pytest.raises(OutputError, match=f"holds no {STARTED}, so it is not rayood's"):
        ReportTarget(resolve(str(table)), "fingerprint").prepare(overwrite=overwrite)
    assert sorted(p.name for p in table.iterdir()) == sorted([SUCCESS, "part-00000-1b2c.snappy.parquet"])


@pytest.mark.parametrize("where", ["notes.md", f"{ROWS}/notes.txt"])
@pytest.mark.parametrize("finished", [False, True])
def test_a_report_holding_someone_elses_files_is_refused_whole(tmp_path, where, finished):
    report = finished_report(tmp_path / "report")
    if not finished:
        (report / SUCCESS).unlink()
    (report / where).write_text("my analysis")
    before = sorted(str(p.relative_to(report)) for p in report.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=f"files rayood did not write \\({where}\\); nothing was deleted"):
            ReportTarget(resolve(str(report)), "fingerprint").prepare(overwrite=overwrite)
    assert sorted(str(p.relative_to(report)) for p in report.rglob("*")) == before


def test_overwrite_replaces_a_report_made_only_of_rayood_files(tmp_path):
    report = finished_report(tmp_path / "report")
    with pytest.raises(OutputError, match="already holds a finished report"):
        ReportTarget(resolve(str(report)), "fingerprint").prepare(overwrite=False)
    target = ReportTarget(resolve(str(report)), "fingerprint")
    assert target.prepare(overwrite=True).rows == 0
    assert not (report / SUCCESS).exists() and not (report / SUMMARY).exists()
    assert not list((report / ROWS).glob("*.parquet")) and (report / STARTED).exists()
    target.release()


def _prepare_filter(location, overwrite):
    from rayood.decide.filter import prepare_output

    prepare_output(location, overwrite)


def _prepare_audit(location, overwrite):
    from rayood.audit.job import prepare_output

    prepare_output(location, overwrite)


def _prepare_shards(location, overwrite):
    from rayood.decide.shards import prepare_shard_output

    prepare_shard_output(location, overwrite)


JOBS = {
    "filter": (_prepare_filter, "filter.json"),
    "audit": (_prepare_audit, "audit.json"),
    "shards": (_prepare_shards, "kept-000000.tar"),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_refuses_a_directory_with_foreign_files_and_deletes_nothing(tmp_path, job):
    prepare, own_file = JOBS[job]
    (tmp_path / own_file).write_bytes(b"an earlier result")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"files rayood did not write \(notes.txt\); nothing was deleted"):
        prepare(resolve(str(tmp_path)), True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own_file, "notes.txt"])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_replaces_its_own_finished_result_only_with_overwrite(tmp_path, job):
    prepare, own_file = JOBS[job]
    (tmp_path / own_file).write_bytes(b"an earlier result")
    with pytest.raises(OutputError, match="already holds"):
        prepare(resolve(str(tmp_path)), False)
    assert (tmp_path / own_file).exists()
    prepare(resolve(str(tmp_path)), True)
    assert not (tmp_path / own_file).exists()
