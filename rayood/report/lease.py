"""A lease on an output directory, so that one live run at a time writes there.

``OUTPUT/_LEASE`` names the run that holds it (run id, host, pid) and when it last renewed it; a thread
renews it every ``HEARTBEAT_S`` while the run goes on. Another run refuses the output while the lease is
live. It takes the lease over once the heartbeat is older than ``EXPIRY_S``, or at once when the holder ran
on the same host and its process is gone: a resume after a killed driver need not wait.

How the lease is taken depends on the store, and the run's log and ``summary.json`` (``output_lease``) say which:
- local disks create it exclusively (``O_EXCL``);
- S3 creates it with a conditional write (``If-None-Match: *``) and renews or takes it over only if it is
  unchanged since read (``If-Match: <ETag>``): of two runs starting at the same instant exactly one holds it;
- any other store (or an S3 endpoint that ignores the conditions, found by a probe) writes it, then reads it
  back after ``SETTLE_S``: a best effort that catches two runs starting in the same second most of the time,
  and every later start.
A run that finds its lease taken by another (its heartbeat stalled past expiry) stops before it writes ``_SUCCESS``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pyarrow.fs as pafs

from rayood.storage import Location, PreconditionFailed, S3ConditionalObject, StorageError, is_s3

log = logging.getLogger(__name__)

LEASE = "_LEASE"
HEARTBEAT_S = 15.0
EXPIRY_S = 90.0
SETTLE_S = 1.0
EXCLUSIVE, CONDITIONAL, BEST_EFFORT = (
    "exclusive create (local disk)",
    "conditional writes (S3 If-None-Match / If-Match)",
    "best effort (this store has no conditional writes: written, then read back after 1 s)",
)


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
        self.mode: str | None = None  # how the lease was taken: EXCLUSIVE, CONDITIONAL or BEST_EFFORT
        self._conditional: S3ConditionalObject | None = None
        self._etag = ""  # CONDITIONAL: the lease object's ETag as this run last wrote it

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
        return _parsed(data)

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

    def _refuse_if_live(self, record: dict | None) -> None:
        if record is not None and self._holder_is_live(record):
            age = time.time() - float(record.get("heartbeat", 0))
            raise LeaseError(
                f"output {self.location.uri.removesuffix('/' + LEASE)} is in use by run {record.get('run_id')} "
                f"(host {record.get('host')}, pid {record.get('pid')}, heartbeat {age:.0f} s ago); wait for it to "
                f"finish, or if it died on another host, run again after its lease expires ({EXPIRY_S:.0f} s)"
            )
        if record is not None:
            log.warning("taking over the expired lease of run %s on %s", record.get("run_id"), self.location.uri)

    def _same_moment(self) -> LeaseError:
        return LeaseError(f"another run took the lease {self.location.uri} at the same moment; run again later")

    def acquire(self) -> None:
        """Take the lease, or raise LeaseError naming the live run that holds it."""
        self.mode = self._store_mode()
        if self._conditional is not None:
            self._acquire_conditionally(self._conditional)
        elif not (self.mode == EXCLUSIVE and self._create_exclusive()):
            self._refuse_if_live(self._read())
            self._write_and_settle()
        log.info("output lease %s: %s", self.location.uri, self.mode)
        self._start_heartbeat()

    def _store_mode(self) -> str:
        if isinstance(self.location.fs, pafs.LocalFileSystem):
            return EXCLUSIVE
        if is_s3(self.location.uri):
            conditional = S3ConditionalObject(self.location)
            if conditional.supported(self.run_id):
                self._conditional = conditional
                return CONDITIONAL
            log.warning(
                "%s ignores or refuses conditional writes: the output lease is a best effort", self.location.uri
            )
        return BEST_EFFORT

    def _write_and_settle(self) -> None:
        self._write()
        time.sleep(SETTLE_S)
        if (self._read() or {}).get("run_id") != self.run_id:
            raise self._same_moment()

    def _acquire_conditionally(self, lease: S3ConditionalObject) -> None:
        """Create the lease if there is none; else take it over if its holder is gone and nobody changed it since."""
        record = json.dumps(self._record()).encode()
        try:
            self._etag = lease.create(record)
            return
        except PreconditionFailed:
            pass
        found = lease.read()
        if found is None:  # released in between: one more create decides
            try:
                self._etag = lease.create(record)
                return
            except PreconditionFailed:
                raise self._same_moment() from None
        data, etag = found
        self._refuse_if_live(_parsed(data))
        try:
            self._etag = lease.replace(record, etag)
        except PreconditionFailed:
            raise self._same_moment() from None

    def _renew(self) -> None:
        """One heartbeat: on S3 replace only what this run last wrote; elsewhere read, then write."""
        if self._conditional is None:
            if (self._read() or {}).get("run_id") != self.run_id:
                self._lose()
                return
            self._write()
            return
        try:
            self._etag = self._conditional.replace(json.dumps(self._record()).encode(), self._etag)
        except PreconditionFailed:  # changed by someone: still ours only if our own earlier write went through unseen
            found = self._conditional.read()
            if found is None or _parsed(found[0]).get("run_id") != self.run_id:
                self._lose()
            else:
                self._etag = found[1]

    def _lose(self) -> None:
        self.lost = True
        log.error("the lease %s was taken over by another run: this run will not finish", self.location.uri)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="rayood-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self.lost and not self._stop.wait(HEARTBEAT_S):
            try:
                self._renew()
            except (StorageError, LeaseError) as error:  # a transient store error: the next beat retries
                log.warning("could not renew the lease %s: %s", self.location.uri, error)

    def check(self) -> None:
        """Raise if another run took the lease: this run must not mark the output complete."""
        if self.lost or (self._read() or {}).get("run_id") != self.run_id:
            self.lost = True
            raise LeaseError(
                f"this run lost its lease on {self.location.uri} to another run; its report is not marked complete"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and (self._read() or {}).get("run_id") == self.run_id:
            self.location.fs.delete_file(self.location.path)


def _parsed(data: bytes) -> dict:
    """A lease record; {} when it is unreadable (cut short: no holder)."""
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
