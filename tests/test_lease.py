"""One live run per output (issue 12, item 11): a second run on the same report is refused instead of
deleting the first run's row files, a dead or silent holder's lease is taken over, and a run that lost its
lease never marks the report complete. On local disk and on moto's S3 server."""

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import boto3
import pytest

from rayood.config import S3Settings
from rayood.report import lease as lease_module
from rayood.report.lease import BEST_EFFORT, CONDITIONAL, LEASE, LeaseError, OutputLease
from rayood.report.target import ROWS, SUCCESS, ReportTarget
from rayood.storage import S3ConditionalObject, resolve


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
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="rayood-lease")
    output = resolve("s3://rayood-lease/report", S3Settings(endpoint_url=s3_server))
    first, second = OutputLease(output, "first"), OutputLease(output, "second")
    first.acquire()
    assert first.mode == CONDITIONAL
    with pytest.raises(LeaseError, match="in use by run first"):
        second.acquire()
    first._renew()  # a heartbeat replaces what this run wrote last
    first.check()
    first.release()
    assert not output.join(LEASE).exists()
    second.acquire()
    second.release()
    client.put_object(
        Bucket="rayood-lease", Key=f"report/{LEASE}", Body=holder("elsewhere", 1, lease_module.EXPIRY_S + 5)
    )
    third = OutputLease(output, "third")
    third.acquire()  # an expired holder's lease is taken over
    assert json.loads(output.join(LEASE).read_bytes())["run_id"] == "third"
    third.release()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="rayood-lease").get("Contents", [])]
    assert [key for key in keys if not key.endswith("/")] == []  # no probe left (pyarrow leaves a folder marker)


def _race(output, names: list[str]) -> dict[str, str]:
    """Every lease acquired by its own thread at the same instant; name -> "held" or the refusal."""
    start, outcome = threading.Barrier(len(names)), {}

    def run(name: str) -> None:
        lease = OutputLease(output, name)
        lease._store_mode = lambda: (setattr(lease, "_conditional", S3ConditionalObject(lease.location)), CONDITIONAL)[
            1
        ]
        start.wait()  # the probe is skipped above, so both requests leave together
        try:
            lease.acquire()
            outcome[name] = "held"
            lease._stop.set()  # keep the lease object in place: the loser must see the winner's
        except LeaseError as error:
            outcome[name] = str(error)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


@pytest.mark.parametrize("expired_holder", [False, True], ids=["no lease yet", "an expired lease"])
def test_of_two_runs_starting_at_the_same_instant_on_s3_exactly_one_holds_the_lease(s3_server, expired_holder):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"rayood-race-{int(expired_holder)}"
    client.create_bucket(Bucket=bucket)
    for attempt in range(25):
        output = resolve(f"s3://{bucket}/report-{attempt}", S3Settings(endpoint_url=s3_server))
        if expired_holder:
            client.put_object(
                Bucket=bucket, Key=f"report-{attempt}/{LEASE}", Body=holder("elsewhere", 1, lease_module.EXPIRY_S + 5)
            )
        outcome = _race(output, ["a", "b"])
        winners = [name for name, result in outcome.items() if result == "held"]
        assert len(winners) == 1, (attempt, outcome)
        loser = ({"a", "b"} - set(winners)).pop()
        assert "in use by run" in outcome[loser] or "at the same moment" in outcome[loser]
        assert json.loads(output.join(LEASE).read_bytes())["run_id"] == winners[0]


def test_a_takeover_fails_when_another_run_takes_the_lease_between_its_read_and_its_write(s3_server, monkeypatch):
    """The interleaving a written-then-read-back lease lets both runs through, forced: b reads the expired
    lease, a takes it over, then b writes. b's write is conditional on what it read, so b is refused."""
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="rayood-interleaved")
    output = resolve("s3://rayood-interleaved/report", S3Settings(endpoint_url=s3_server))
    client.put_object(
        Bucket="rayood-interleaved", Key=f"report/{LEASE}", Body=holder("elsewhere", 1, lease_module.EXPIRY_S + 5)
    )
    a, b = OutputLease(output, "a"), OutputLease(output, "b")
    read, interleaved = S3ConditionalObject.read, []

    def read_then_let_a_in(self):
        found = read(self)
        if not interleaved:
            interleaved.append(True)
            a.acquire()
        return found

    monkeypatch.setattr(S3ConditionalObject, "read", read_then_let_a_in)
    with pytest.raises(LeaseError, match="at the same moment"):
        b.acquire()
    assert interleaved and json.loads(output.join(LEASE).read_bytes())["run_id"] == "a"
    a.check()
    a.release()


def test_a_store_without_conditional_writes_keeps_the_best_effort_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.05)
    output = resolve("memory://rayood-lease-test/report")
    first, second = OutputLease(output, "first"), OutputLease(output, "second")
    with caplog.at_level(logging.INFO, logger="rayood.report.lease"):
        first.acquire()
    assert first.mode == BEST_EFFORT and f"output lease {output.join(LEASE).uri}: best effort" in caplog.text
    with pytest.raises(LeaseError, match="in use by run first"):
        second.acquire()
    first.release()
