"""A screening job killed part-way (SIGKILL to its process group, its own Ray cluster included) and started
again with the same output finishes the report: every input row once, reused rows neither rewritten nor
recomputed, scores equal to an undisturbed run's."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from rayood.report.guard import OutputError
from rayood.screen.pipeline import screen
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
CORPUS_ROWS = 2400
SMALL_BATCHES = {"batch_size": 16, "decode_batch_size": 16}


def read_rows(output: Path):
    return pads.dataset(output / "rows", format="parquet").to_table().to_pandas().set_index("id").sort_index()


def session_processes(session: int) -> set[int]:
    """Live (not zombie) processes of a session: a job started with ``start_new_session`` and all it spawned."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:  # state, ppid, pgrp, session
            found.add(int(entry.name))
    return found


def complete_files(rows: Path) -> dict[str, int]:
    """Row files with a readable footer -> mtime (ns); files cut short by the kill are left out."""
    complete = {}
    for path in rows.glob("*.parquet"):
        try:
            pq.read_metadata(path)
        except (OSError, ValueError):  # no footer
            continue
        complete[path.name] = path.stat().st_mtime_ns
    return complete


@pytest.fixture(scope="module")
def corpus(demo_data, tmp_path_factory) -> Path:
    """The demo corpus twice (the copy under other ids): large enough that the kill lands part-way, since the
    tiny bundle scores a few hundred rows a second."""
    path = tmp_path_factory.mktemp("resume") / "corpus.parquet"
    demo = pq.read_table(demo_data[1] / "corpus.parquet")
    copy = demo.set_column(0, "id", pa.array([f"again/{i}" for i in demo.column("id").to_pylist()]))
    pq.write_table(pa.concat_tables([demo, copy]).slice(0, CORPUS_ROWS), path)
    return path


def test_a_killed_screening_resumes_without_losing_repeating_or_recomputing_rows(tiny_bundle, corpus, tmp_path):
    reference_output = tmp_path / "reference"
    screen(tiny_config(screen={"inputs": [str(corpus)], "output": str(reference_output), "bundle": tiny_bundle}))
    reference = read_rows(reference_output)

    output = tmp_path / "report"
    config = tmp_path / "screen.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ray": {"num_cpus": 2},
                "screen": {"inputs": [str(corpus)], "output": str(output), "bundle": tiny_bundle, **SMALL_BATCHES},
            }
        )
    )
    command = [sys.executable, str(REPO / "jobs" / "screen.py"), "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the job starts its own local cluster

    with open(tmp_path / "first.log", "wb") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 300
    while not list((output / "rows").glob("*.parquet")):
        assert job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no row files within 300 s"
        time.sleep(0.2)
    spawned = session_processes(job.pid)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(30)
    assert len(spawned) > 3, "the job, its raylet, GCS and workers"
    deadline = time.monotonic() + 30
    while session_processes(job.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not session_processes(job.pid), "processes of the killed job outlived it"
    assert not (output / "_SUCCESS").exists()
    kept = complete_files(output / "rows")
    reused_ids = set(
        pads.dataset(list(map(str, (output / "rows" / n for n in kept))), format="parquet")
        .to_table(columns=["id"])
        .column("id")
        .to_pylist()
    )
    assert 0 < len(reused_ids) < CORPUS_ROWS, "the kill must land part-way"

    again = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    reused = re.search(r"reusing (\d+) rows from (\d+) files", again.stderr)
    assert reused and int(reused[1]) == len(reused_ids) and int(reused[2]) == len(kept), again.stderr[-3000:]
    assert (output / "_SUCCESS").exists()

    files = {path.name: path.stat().st_mtime_ns for path in (output / "rows").glob("*.parquet")}
    assert {name: files.get(name) for name in kept} == kept, "reused row files were rewritten or removed"
    attempts = {name.split("_", 1)[0] for name in files}
    assert len(attempts) == 2, "row files are named after the attempt that wrote them"
    new_ids = set(
        pads.dataset([str(output / "rows" / n) for n in files if n not in kept], format="parquet")
        .to_table(columns=["id"])
        .column("id")
        .to_pylist()
    )
    assert not new_ids & reused_ids, "the second attempt scored rows the first had written"

    report = read_rows(output)
    assert report.index.is_unique and list(report.index) == sorted(pq.read_table(corpus).column("id").to_pylist())
    assert (report["source"] == str(corpus)).all()
    scores = [c for c in reference.columns if c.startswith(("score_", "pvalue_"))]
    for name in scores:
        np.testing.assert_allclose(report[name], reference.loc[report.index, name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert (report["is_ood"] == reference["is_ood"]).all()
    summary = yaml.safe_load((output / "summary.json").read_text())
    assert summary["rows"] == summary["expected_rows"] == CORPUS_ROWS and summary["reused_rows"] == len(reused_ids)


def test_a_row_file_cut_short_is_redone_and_a_changed_run_is_refused(tiny_bundle, corpus, tmp_path, caplog):
    small = tmp_path / "small.parquet"
    pq.write_table(pq.read_table(corpus).slice(0, 60), small)
    output = tmp_path / "report"
    config = tiny_config(
        screen={
            "inputs": [str(small)],
            "output": str(output),
            "bundle": tiny_bundle,
            "batch_size": 2,
            "decode_batch_size": 8,
        }
    )  # about 8 row files
    screen(config)
    cut, *kept = sorted((output / "rows").glob("*.parquet"))
    assert kept, "the report needs more than one row file"
    kept_rows, kept_mtimes = (
        sum(pq.read_metadata(path).num_rows for path in kept),
        [path.stat().st_mtime_ns for path in kept],
    )
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # as a kill mid-write leaves it
    (output / "_SUCCESS").unlink()

    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(corpus).slice(0, 59), other)
    with pytest.raises(OutputError, match="unfinished report of another run"):
        screen(tiny_config(screen={"inputs": [str(other)], "output": str(output), "bundle": tiny_bundle}))

    caplog.set_level(logging.INFO, logger="rayood.report.target")
    summary, _ = screen(config)
    assert (
        f"reusing {kept_rows} rows from {len(kept)} files" in caplog.text
        and "deleting the unreadable row file" in caplog.text
    )
    assert not cut.exists() and [path.stat().st_mtime_ns for path in kept] == kept_mtimes
    report = read_rows(output)
    assert report.index.is_unique and len(report) == summary["rows"] == 60 and summary["reused_rows"] == kept_rows
