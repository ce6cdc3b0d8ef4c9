"""A real local HTTP receiver for the notifier tests: a threaded `http.server` on a free port of
127.0.0.1 that records every request and answers from a queue of replies (then a default).
A reply can hang (`delay`), drip its answer a byte at a time (`drip_seconds`), redirect (a 3xx
with a Location header), or close the connection without an answer (`close`). It can be
stopped (connections refused, hanging answers released) and started again on the same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from tests.servers import free_port


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow or hanging notifier)
    drip_seconds: float = 0.0  # > 0: the answer goes a byte at a time, this far apart
    close: bool = False  # close the connection without answering


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> object:
        return json.loads(self.body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that timed out closes before the delayed answer: expected, not news.
        pass


class Receiver:
    """`reply(...)` queues answers (a status or a Reply) for the next requests; afterwards every
    request gets `default`. `received` lists the requests in arrival order."""

    def __init__(self, default: Reply | None = None) -> None:
        self.port = free_port()
        self.default = default or Reply()
        self.received: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()  # releases hanging and dripping answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, *replies: Reply | int) -> None:
        with self._lock:
            self._replies.extend(r if isinstance(r, Reply) else Reply(status=r) for r in replies)

    def start(self) -> Self:
        self.stopping.clear()
        self._server = _QuietServer(("127.0.0.1", self.port), _handler(self))
        # A short poll interval: stopping waits for the serving loop's next look at its flag.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _take(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            return self._replies.popleft() if self._replies else self.default


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a stopped receiver has no open keep-alive
        # connection still answering.
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reply = receiver._take(Received(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            ))
            if receiver.stopping.wait(reply.delay):
                return
            if reply.close:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            payload = reply.body.encode()
            lines = [f"HTTP/1.0 {reply.status} {HTTPStatus(reply.status).phrase}"]
            lines += [f"{name}: {value}" for name, value in reply.headers.items()]
            lines.append(f"Content-Length: {len(payload)}")
            answer = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
            if not reply.drip_seconds:
                self.wfile.write(answer)
                return
            for byte in answer:
                if receiver.stopping.wait(reply.drip_seconds):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

        do_GET = do_PUT = do_POST

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler
