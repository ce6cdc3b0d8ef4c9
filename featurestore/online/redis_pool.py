"""A small asyncio Redis client for the serving fast path: one packed pipeline out, replies parsed by hiredis.

redis-py's asyncio pipeline costs tens of microseconds of Python per command (packing, response
callbacks, per-reply awaits); a lookup of 100 entities is hundreds of HMGETs. Here a request's
commands are packed into one buffer, written in one call, and the replies are read off the socket
into hiredis' C parser until all have arrived. Every wait is bounded by `timeout`; a connection
that fails or times out is discarded, and the next request opens a fresh one, so the pool
recovers by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import hiredis

from featurestore.online.resp import pack


class RedisUnavailable(Exception):
    """Redis could not be reached, did not answer within the timeout, or answered an error
    (NOAUTH after a password change, LOADING, READONLY, MASTERDOWN, ...): our commands are
    fixed reads, so an error reply is the server's state, not the request's fault."""

    def __init__(self, address: RedisAddress, reason: str) -> None:
        super().__init__(f"Redis at {address!r}: {reason}")
        self.reason = reason  # without the address, for answers anyone may read


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    tls: bool
    password: str | None

    @classmethod
    def from_url(cls, url: str, password: str | None) -> RedisAddress:
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(parts.path.lstrip("/") or 0),
            tls=parts.scheme == "rediss",
            password=password,
        )

    def __repr__(self) -> str:  # never shows the password
        return f"redis{'s' if self.tls else ''}://{self.host}:{self.port}/{self.db}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, hiredis.ReplyError):
        return f"answered {str(exc).split(' ', 1)[0] or 'an error'}"
    # An OSError's text names the address; its type says enough (ConnectionRefusedError, ...).
    return type(exc).__name__


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    async def execute(self, packed: bytes, count: int, *, error_replies: bool) -> list[object]:
        self.writer.write(packed)
        replies: list[object] = []
        while len(replies) < count:
            reply = self.parser.gets()
            if reply is False:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self.parser.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError) and not error_replies:
                raise reply
            replies.append(reply)
        return replies

    def close(self) -> None:
        self.writer.close()


class ReadPool(Protocol):
    """What the lookups read through: one Redis (`RedisPool`) or a cluster's nodes
    (`featurestore.online.cluster.ClusterPool`)."""

    async def execute(self, commands: Sequence[bytes]) -> list[object]: ...
    async def ping(self) -> None: ...
    def close(self) -> None: ...


class RedisPool:
    """Connections to one Redis server, reused across requests of one event loop."""

    def __init__(self, address: RedisAddress, *, timeout: float, max_idle: int = 16) -> None:
        self.address = address
        self.timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        context = ssl.create_default_context() if self.address.tls else None
        reader, writer = await asyncio.open_connection(
            self.address.host, self.address.port, ssl=context
        )
        connection = _Connection(reader, writer)
        setup = []
        if self.address.password is not None:
            setup.append(pack(b"AUTH", self.address.password.encode()))
        if self.address.db:
            setup.append(pack(b"SELECT", str(self.address.db).encode()))
        if setup:
            await connection.execute(b"".join(setup), len(setup), error_replies=False)
        return connection

    async def execute(
        self, commands: Sequence[bytes], *, error_replies: bool = False
    ) -> list[object]:
        """Send packed commands in one write; their replies, in order. Raises RedisUnavailable,
        also for an error reply unless `error_replies` (a cluster's MOVED and ASK, which the
        caller follows): then those come back as `hiredis.ReplyError` objects among the rest."""
        connection = self._idle.pop() if self._idle else None
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:
                    connection = await self._connect()
                replies = await connection.execute(
                    b"".join(commands), len(commands), error_replies=error_replies
                )
        except (OSError, TimeoutError, hiredis.ProtocolError, hiredis.ReplyError) as exc:
            # After an error reply the rest of the replies are unread: the connection goes, and
            # the next request opens (and authenticates) a fresh one.
            if connection is not None:
                connection.close()
            raise RedisUnavailable(self.address, _reason(exc)) from exc
        except BaseException:
            # Cancelled mid-read (client went away): the connection's read position is
            # unknown, so it is not reused.
            if connection is not None:
                connection.close()
            raise
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return replies

    async def ping(self) -> None:
        """A read Redis refuses while it cannot serve data (unlike PING, which a loading or
        stale replica answers)."""
        await self.execute([pack(b"EXISTS", b"featurestore:readiness-probe")])

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
