"""What a screening may delete in its output directory: only the files a rayood report consists of. ``--overwrite``
must not empty a Spark table (whose ``_SUCCESS`` looks like ours) or a report folder a user added notes to."""

import pytest

from rayood.screen.output import ROWS, STARTED, SUCCESS, SUMMARY, OutputError, ReportTarget
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
    with pytest.raises(OutputError, match=f"not a rayood report \\(no {STARTED}\\)"):
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
