"""A scoring actor killed (SIGKILL) mid-run on the in-process cluster: Ray restarts it, its batches run again,
and the report holds every row once with the scores of an undisturbed run."""

import os
import signal
import threading
import time

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayood.screen.pipeline import screen
from tests.cluster import actor_pids, actor_restarts
from tests.conftest import tiny_config

CORPUS_ROWS = 1_200  # scoring outlasts the first row file by far: writing can lag scoring by 200 rows
SMALL_BATCHES = {"batch_size": 8, "decode_batch_size": 16}  # row files of 8 x 16 rows: 10 of them


def read_rows(output):
    return pads.dataset(output / "rows", format="parquet").to_table().to_pandas().set_index("id").sort_index()


def score_actor_pids() -> list[int]:
    """Scoring actors of this test's in-process cluster; while a screening runs, the ScoreActor pool is its only
    actor-pool stage."""
    return actor_pids(os.getpid(), "MapWorker")


def kill_a_score_actor_once_it_wrote(output, killed: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        pids = score_actor_pids() if list((output / "rows").glob("*.parquet")) else []
        if pids:
            killed.update(pid=pids[0], files=len(list((output / "rows").glob("*.parquet"))))
            os.kill(pids[0], signal.SIGKILL)
            break
        time.sleep(0.2)


def test_a_killed_scoring_actor_is_restarted_and_every_row_comes_out_once(tiny_bundle, demo_data, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pq.read_table(demo_data[1] / "corpus.parquet").slice(0, CORPUS_ROWS), corpus)
    reference_output, output = tmp_path / "reference", tmp_path / "report"
    screen(tiny_config(screen={"inputs": [str(corpus)], "output": str(reference_output), "bundle": tiny_bundle}))

    actors_before = set(actor_restarts("ScoreActor"))
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_score_actor_once_it_wrote, args=(output, killed, stop), daemon=True)
    killer.start()
    try:
        summary, _ = screen(
            tiny_config(screen={"inputs": [str(corpus)], "output": str(output), "bundle": tiny_bundle, **SMALL_BATCHES})
        )
    finally:
        stop.set()
        killer.join(30)
    assert killed, "no scoring actor was killed while the job ran"
    assert killed["files"] < len(list((output / "rows").glob("*.parquet"))), "the kill must land part-way"
    # The process listing can miss the replacement on a loaded machine (it may come and go between polls); the
    # head's actor table cannot.
    restarts = {actor: count for actor, count in actor_restarts("ScoreActor").items() if actor not in actors_before}
    assert sum(restarts.values()) >= 1, f"Ray did not restart the killed scoring actor: {restarts}"

    reference, report = read_rows(reference_output), read_rows(output)
    assert report.index.is_unique and list(report.index) == sorted(pq.read_table(corpus).column("id").to_pylist())
    assert summary["rows"] == summary["expected_rows"] == CORPUS_ROWS and summary["errors"] == 0
    for name in (c for c in reference.columns if c.startswith(("score_", "pvalue_"))):
        np.testing.assert_allclose(report[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)
