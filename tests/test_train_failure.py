"""A Ray Train worker killed (SIGKILL) in the middle of a fit on a real multi-process cluster: the stage is
restarted from its last checkpoint, not from epoch 0, and the fit writes a valid bundle. Then a refit with
``--overwrite`` killed while its new bundle is half written: the old bundle still loads, unchanged."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rayood.bundle_models import load_bundle
from rayood.train.fit import STAGING
from tests.cluster import RAY, ray_head
from tests.conftest import NO_LAYERWISE, TINY_MODEL, TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 12


def train_worker_pid(env: dict[str, str]) -> int | None:
    """The pid of the live Ray Train worker, from the cluster's state API (``ray list actors``)."""
    listing = subprocess.run(
        [RAY, "list", "actors", "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE", "--format", "json"],
        check=False, capture_output=True, text=True, env=env, timeout=60,
    )
    if listing.returncode != 0 or not listing.stdout.startswith("["):  # "No resource in the cluster"
        return None
    actors = json.loads(listing.stdout)
    return actors[0]["pid"] if actors else None


def registered_checkpoint(checkpoints: Path) -> bool:
    """True once Ray Train's controller has registered a backbone checkpoint (its snapshot names one): a
    checkpoint directory alone is not enough, a worker killed before the controller polls it loses that report."""
    snapshots = checkpoints.glob("*-backbone-*/checkpoint_manager_snapshot.json")
    return any("checkpoint_" in snapshot.read_text() for snapshot in snapshots)


def wait_for(condition, what: str, job: subprocess.Popen, log: Path, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert job.poll() is None, f"the fit ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)
    return found


def test_a_killed_train_worker_resumes_from_the_last_checkpoint(demo_data, tmp_path):
    bundle, checkpoints = tmp_path / "bundle", tmp_path / "checkpoints"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {**TINY_MODEL, **NO_LAYERWISE},
        "train": {
            **TINY_TRAIN, "data": [str(demo_data[0])], "bundle": str(bundle), "checkpoint_path": str(checkpoints),
            "backbone": {**TINY_TRAIN["backbone"], "epochs": EPOCHS, "checkpoint_every": 2},
        },
    }))
    (tmp_path / "ray").mkdir()
    log = tmp_path / "train.log"
    with ray_head(tmp_path / "ray") as head, open(log, "wb") as output:
        env = head.env()
        job = subprocess.Popen(
            # --verbose: the assertions read the workers' epoch lines, which the quiet console keeps in Ray's logs
            [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config), "--verbose"],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )
        try:
            pid = wait_for(lambda: train_worker_pid(env), "Ray Train worker", job, log)
            wait_for(lambda: registered_checkpoint(checkpoints), "registered backbone checkpoint", job, log)
            os.kill(pid, signal.SIGKILL)
            assert job.wait(timeout=400) == 0, log.read_text()[-3000:]
            first = json.loads((bundle / "manifest.json").read_text())
            assert not list((checkpoints / STAGING).glob("*")), "the staged bundle was promoted, not left behind"

            # the refit resumes every finished stage, writes its weights and is killed during calibration
            refit_log = tmp_path / "refit.log"
            with open(refit_log, "wb") as refit_output:
                job = subprocess.Popen(
                    [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config), "--overwrite"],
                    stdout=refit_output, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
                )
            wait_for(lambda: (checkpoints / STAGING / "manifest.json").exists(), "staged manifest", job, refit_log)
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    kept = load_bundle(str(bundle))
    assert kept.manifest["bundle_id"] == first["bundle_id"] and kept.manifest == first
    assert not (checkpoints / STAGING / "calibration.parquet").exists(), "the refit was killed too late to test this"

    text = log.read_text()
    resumed = [int(n) for n in re.findall(r"backbone resumed_from_epoch=(\d+)", text)]
    assert len(resumed) == 1 and 2 <= resumed[0] < EPOCHS, text[-3000:]
    assert text.count("backbone epoch=1 ") == 1, "epochs before the checkpoint were trained again"
    assert f"backbone epoch={resumed[0] + 1} " in text.split("resumed_from_epoch")[1]
    assert f"backbone epoch={EPOCHS} " in text
    manifest = load_bundle(str(bundle)).manifest
    assert manifest["training"]["backbone"]["epoch"] == EPOCHS and manifest["calibration"]["rows"] > 100
