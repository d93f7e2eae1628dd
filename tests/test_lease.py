"""One live run per output (issue 12, item 11): a second run on the same report is refused instead of
deleting the first run's row files, a dead or silent holder's lease is taken over, and a run that lost its
lease never marks the report complete. On local disk and on moto's S3 server."""

import json
import socket
import subprocess
import sys
import time

import boto3
import pytest

from rayood.config import S3Settings
from rayood.report import lease as lease_module
from rayood.report.lease import LEASE, LeaseError, OutputLease
from rayood.report.target import ROWS, SUCCESS, ReportTarget
from rayood.storage import resolve


def holder(host: str, pid: int, age_s: float, run_id: str = "other") -> bytes:
    return json.dumps({"run_id": run_id, "host": host, "pid": pid, "heartbeat": time.time() - age_s}).encode()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_on_a_live_report_is_refused_and_deletes_nothing(tmp_path):
    first = ReportTarget(resolve(str(tmp_path / "report")), "same-fingerprint")
    first.prepare(overwrite=False)
    in_flight = tmp_path / "report" / ROWS / f"{first.run_id}_part.parquet"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"PAR1 half written")  # no footer yet: a resume would delete it
    second = ReportTarget(resolve(str(tmp_path / "report")), "same-fingerprint")
    with pytest.raises(LeaseError, match=f"in use by run {first.run_id}"):
        second.prepare(overwrite=True)
    assert in_flight.exists()
    first.finish({"rows": 0})
    assert (tmp_path / "report" / SUCCESS).exists() and not (tmp_path / "report" / LEASE).exists()


def test_a_lease_is_taken_over_when_its_holder_is_gone_or_silent(tmp_path):
    output = resolve(str(tmp_path / "out"))
    lease_file = tmp_path / "out" / LEASE
    lease_file.parent.mkdir()
    here = socket.gethostname()
    for record, live in [
        (holder(here, dead_pid(), age_s=1), False),  # killed driver on this host: resume at once
        (holder("elsewhere", 1, age_s=lease_module.EXPIRY_S + 5), False),  # silent past expiry
        (holder("elsewhere", 1, age_s=5), True),  # another host, renewing: refuse
        (b'{"run_id": "cut sh', False),  # cut short while written: nobody holds it
    ]:
        lease_file.write_bytes(record)
        mine = OutputLease(output, "mine")
        if live:
            with pytest.raises(LeaseError, match="in use by run other"):
                mine.acquire()
            continue
        mine.acquire()
        assert json.loads(lease_file.read_bytes())["run_id"] == "mine"
        mine.release()
        assert not lease_file.exists()


def test_a_run_that_lost_its_lease_does_not_mark_the_report_complete(tmp_path):
    target = ReportTarget(resolve(str(tmp_path / "report")), "fingerprint")
    target.prepare(overwrite=False)
    (tmp_path / "report" / LEASE).write_bytes(holder(socket.gethostname(), 1, age_s=0, run_id="usurper"))
    with pytest.raises(LeaseError, match="lost its lease"):
        target.finish({"rows": 0})
    assert not (tmp_path / "report" / SUCCESS).exists()
    target.release()
    assert json.loads((tmp_path / "report" / LEASE).read_bytes())["run_id"] == "usurper", "not ours to delete"


def test_the_lease_works_on_s3(s3_server, monkeypatch):
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.05)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="rayood-lease")
    output = resolve("s3://rayood-lease/report", S3Settings(endpoint_url=s3_server))
    first, second = OutputLease(output, "first"), OutputLease(output, "second")
    first.acquire()
    with pytest.raises(LeaseError, match="in use by run first"):
        second.acquire()
    first.release()
    assert not output.join(LEASE).exists()
    second.acquire()
    second.release()
