"""A TCP proxy between Kafka clients and the broker that drops connections on cue.

The broker advertises the proxy's address, so every connection of every client (bootstrap and
broker connections alike) passes through it. `drop_after_produce(client_id, silent)` arms it:
the next Produce request of that client reaches the broker, the broker appends the batch and
answers, and the proxy swallows the answer and closes every connection of every client, both
sides. The client is left with a send whose outcome it cannot know (the broker has it, no
acknowledgement came): the batch must be produced again. Then the next `silent` connections on
which that client produces go quiet after their first Produce request: requests still reach the
broker, no answer comes back, the socket stays open (a broker behind a dead network path, or
one that stopped answering), so only the client's request timeout notices.

Frames are Kafka's: a 4-byte big-endian size, then a request header (api key int16, api version
int16, correlation id int32, client id as int16 length + bytes) or a response header
(correlation id int32).
"""

from __future__ import annotations

import enum
import functools
import socket
import struct
import threading
from collections.abc import Callable

_PRODUCE = 0


class _Verdict(enum.Enum):
    FORWARD = "forward"
    SWALLOW = "swallow"  # this frame only; the connection stays open
    DROP = "drop"  # swallowed, and every connection closed


class DroppingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._connections = 0
        self._armed_for: str | None = None
        self._drop_on: tuple[int, int] | None = None  # (connection, correlation id)
        self._silent_left = 0
        self._silent: set[int] = set()  # connections whose answers are swallowed
        self.dropped = threading.Event()  # every connection was dropped on cue
        self.silenced = 0  # connections that went quiet on cue
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def drop_after_produce(self, client_id: str, silent: int = 0) -> None:
        """Drop every connection once the broker answered the next Produce of `client_id`; then
        let the next `silent` connections on which it produces go quiet."""
        with self._lock:
            self._armed_for = client_id
            self._drop_on = None
            self._silent_left = silent
            self.silenced = 0
            self.dropped.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    # --- the pumps -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += 1
                number = self._connections
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, daemon=True, args=(
                client, server, functools.partial(self._request, number))).start()
            threading.Thread(target=self._pump, daemon=True, args=(
                server, client, functools.partial(self._response, number))).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              judge: Callable[[bytes], _Verdict]) -> None:
        """Forward whole frames from `source` to `sink` as `judge(frame)` says."""
        pending = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                pending += data
                while len(pending) >= 4:
                    size = struct.unpack(">i", pending[:4])[0]
                    if len(pending) < 4 + size:
                        break
                    frame, pending = pending[: 4 + size], pending[4 + size :]
                    verdict = judge(frame[4:])
                    if verdict is _Verdict.DROP:
                        self._drop_all()
                        return
                    if verdict is _Verdict.FORWARD:
                        sink.sendall(frame)
        except OSError:
            pass  # a dropped connection
        finally:
            self._discard(source, sink)

    def _request(self, connection: int, body: bytes) -> _Verdict:
        api_key, _version, correlation, length = struct.unpack(">hhih", body[:10])
        client_id = body[10 : 10 + length].decode() if length >= 0 else None
        with self._lock:
            if api_key != _PRODUCE or client_id is None or client_id != self._armed_for:
                return _Verdict.FORWARD
            if not self.dropped.is_set():
                if self._drop_on is None:
                    self._drop_on = (connection, correlation)
            elif self._silent_left and connection not in self._silent:
                self._silent.add(connection)
                self._silent_left -= 1
                self.silenced += 1
            if not self._silent_left and self.dropped.is_set():
                self._armed_for = None
        return _Verdict.FORWARD

    def _response(self, connection: int, body: bytes) -> _Verdict:
        correlation = struct.unpack(">i", body[:4])[0]
        with self._lock:
            if connection in self._silent:
                return _Verdict.SWALLOW
            if self._drop_on == (connection, correlation):
                self._drop_on = None
                return _Verdict.DROP
        return _Verdict.FORWARD

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
            self.dropped.set()
        for sock in sockets:
            _close(sock)

    def _discard(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets -= set(sockets)
        for sock in sockets:
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its peer
    sock.close()
