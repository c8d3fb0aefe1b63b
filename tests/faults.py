"""A fault-injecting HTTP reverse proxy for S3 tests: put it in front of the moto server.

    proxy = FaultProxy(upstream="http://127.0.0.1:5000").start()
    proxy.add(Fault("GET", r"/rgi-test/src/img07\\.png", "503", times=2))  # the first 2 GETs: SlowDown
    os.environ["AWS_ENDPOINT_URL"] = proxy.url

Each request is matched against the rules in order (HTTP method, ``re.search`` on the path with its
query); the first rule with attempts left acts, and ``proxy.injected`` counts what was done. Kinds:

- ``"503"``: an S3 ``SlowDown`` error (botocore and s3fs both treat it as retryable);
- ``"403"``: ``AccessDenied`` (not retried);
- ``"reset"``: the connection is reset before any response (the request never reaches the server);
- ``"reset-after"``: the request reaches the server, then the connection is reset (the client cannot
  know whether its write happened);
- ``"delay"``: wait ``delay`` seconds, then forward (a slow object).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "AccessDenied", "Access Denied (injected)"),
}
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    method: str  # "GET", "PUT", ... or "*"
    path: str  # regex searched in the request path (with query), e.g. r"/rgi-test/src/a\.png"
    kind: str  # "503" | "403" | "reset" | "reset-after" | "delay"
    times: int | None = None  # act on the first ``times`` matching requests; None: always
    delay: float = 0.0
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not re.search(self.path, path):
            return False
        return self.times is None or self.hits < self.times


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 that forwards to ``upstream`` and injects :class:`Fault` s."""

    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.rules: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.rules.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.injected.clear()
            self.requests.clear()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests[method] += 1
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    self.injected[rule.kind] += 1
                    return rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, the client sees "connection reset by peer"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _any(self) -> None:
                body = self._body()
                fault = proxy._pick(self.command, self.path)
                kind = fault.kind if fault else ""
                if kind == "reset":
                    return self._reset()
                if kind in _ERRORS:
                    status, code, msg = _ERRORS[kind]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}'
                           f"</Message><RequestId>fault</RequestId></Error>").encode()
                    return self._send(status, [("Content-Type", "application/xml")], xml)
                if kind == "delay":
                    time.sleep(fault.delay)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if kind == "reset-after":
                    return self._reset()
                self._send(resp.status, resp.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        return Handler
