"""A fault-injecting HTTP reverse proxy for tests: standard library only, loopback only, bounded.

It forwards every request to an upstream S3 server (moto) and, by a fixed pattern over the request count,
answers some with 503 SlowDown or 500 InternalError, drops some connections without an answer, and stalls
some for ``stall_s`` before forwarding. Counts of each fault are kept, so a test can say how many retries
the client needed. moto itself cannot inject faults; this puts them on the wire, where real stores make them.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>"
)
# not forwarded: the proxy reads the whole body (``Expect: 100-continue`` is answered here) and sends its length
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "expect"}


class FaultyProxy:
    """``every``: fault kind -> (period, phase): request n (counted from 0) gets that fault when
    n % period == phase. Requests beyond ``max_requests`` are forwarded untouched (bounded disturbance)."""

    def __init__(
        self, upstream_port: int, every: dict[str, tuple[int, int]], stall_s: float = 1.0, max_requests: int = 100_000
    ) -> None:
        self.upstream_port, self.every, self.stall_s, self.max_requests = upstream_port, every, stall_s, max_requests
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _read_body(self) -> bytes:
                """The request body, also when it comes in HTTP chunks (pyarrow's S3 client uploads that way)."""
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailer fields
                    pass
                return b"".join(chunks)

            def _handle(self) -> None:
                body = self._read_body()
                fault = proxy._next_fault()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("slow_down", "internal"):
                    payload = SLOW_DOWN if fault == "slow_down" else INTERNAL
                    self.send_response(503 if fault == "slow_down" else 500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        keep = self.command == "HEAD" or key.lower() != "content-length"  # HEAD: the object's size
                        if key.lower() not in HOP_BY_HOP and keep:
                            self.send_header(key, value)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next_fault(self) -> str | None:
        with self._lock:
            n = self.requests
            self.requests += 1
        if n >= self.max_requests:
            return None
        for kind, (period, phase) in self.every.items():
            if n % period == phase:
                with self._lock:
                    self.faults[kind] += 1
                return kind
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
