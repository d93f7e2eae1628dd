"""A lease on an output directory, so that one live run at a time writes there.

``OUTPUT/_LEASE`` names the run that holds it (run id, host, pid) and when it last renewed it; a thread
renews it every ``HEARTBEAT_S`` while the run goes on. Another run refuses the output while the lease is
live. It takes the lease over once the heartbeat is older than ``EXPIRY_S``, or at once when the holder ran
on the same host and its process is gone: a resume after a killed driver need not wait.

Local disks create the lease exclusively (``O_EXCL``). pyarrow's S3 client has no conditional put, so on an
object store the lease is written, then read back after ``SETTLE_S``: a best effort that catches two runs
starting in the same second most of the time, and every later start. A run that finds its lease taken by
another (its heartbeat stalled past expiry) stops before it writes ``_SUCCESS``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pyarrow.fs as pafs

from rayood.storage import Location, StorageError

log = logging.getLogger(__name__)

LEASE = "_LEASE"
HEARTBEAT_S = 15.0
EXPIRY_S = 90.0
SETTLE_S = 1.0


class LeaseError(RuntimeError):
    """The output is in use by another live run, or this run lost its lease."""


def _process_gone(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class OutputLease:
    def __init__(self, output: Location, run_id: str) -> None:
        self.location = output.join(LEASE)
        self.run_id = run_id
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _read(self) -> dict | None:
        """The holder's record; None when there is no lease, {} when it is unreadable (cut short: no holder)."""
        try:
            data = self.location.read_bytes()
        except StorageError as error:
            if not self.location.exists():
                return None
            raise LeaseError(str(error)) from None
        try:
            record = json.loads(data)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _write(self) -> None:
        self.location.write_bytes(json.dumps(self._record()).encode())

    def _create_exclusive(self) -> bool:
        """Local disks: create the lease only if there is none; False when one exists."""
        self.location.fs.create_dir(os.path.dirname(self.location.path), recursive=True)
        try:
            handle = os.open(self.location.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as file:
            file.write(json.dumps(self._record()).encode())
        return True

    def _holder_is_live(self, record: dict) -> bool:
        if not record:
            return False
        if record.get("host") == socket.gethostname() and _process_gone(record.get("pid")):
            return False
        return time.time() - float(record.get("heartbeat", 0)) <= EXPIRY_S

    def acquire(self) -> None:
        """Take the lease, or raise LeaseError naming the live run that holds it."""
        local = isinstance(self.location.fs, pafs.LocalFileSystem)
        if local and self._create_exclusive():
            self._start_heartbeat()
            return
        record = self._read()
        if record is not None and self._holder_is_live(record):
            age = time.time() - float(record.get("heartbeat", 0))
            raise LeaseError(
                f"output {self.location.uri.removesuffix('/' + LEASE)} is in use by run {record.get('run_id')} "
                f"(host {record.get('host')}, pid {record.get('pid')}, heartbeat {age:.0f} s ago); wait for it to "
                f"finish, or if it died on another host, run again after its lease expires ({EXPIRY_S:.0f} s)"
            )
        if record is not None:
            log.warning("taking over the expired lease of run %s on %s", record.get("run_id"), self.location.uri)
        self._write()
        time.sleep(SETTLE_S)
        if (self._read() or {}).get("run_id") != self.run_id:
            raise LeaseError(f"another run took the lease {self.location.uri} at the same moment; run again later")
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="rayood-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (self._read() or {}).get("run_id") != self.run_id:
                    self.lost = True
                    log.error("the lease %s was taken over by another run: this run will not finish", self.location.uri)
                    return
                self._write()
            except (StorageError, LeaseError) as error:  # a transient store error: the next beat retries
                log.warning("could not renew the lease %s: %s", self.location.uri, error)

    def check(self) -> None:
        """Raise if another run took the lease: this run must not mark the output complete."""
        if self.lost or (self._read() or {}).get("run_id") != self.run_id:
            self.lost = True
            raise LeaseError(f"this run lost its lease on {self.location.uri} to another run; its report is not marked complete")

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and (self._read() or {}).get("run_id") == self.run_id:
            self.location.fs.delete_file(self.location.path)
