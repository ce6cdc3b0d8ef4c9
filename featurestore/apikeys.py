"""API keys: bearer tokens with scopes, stored hashed in our SQL database.

A token reads `fsk_<key id>_<secret>`. Only SHA-256 of the secret is stored (the secret has 256
random bits, so a slow hash adds nothing); checks compare digests in constant time. A server
checks tokens against a copy of the table it re-reads every few seconds (see `KeyVerifier`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from featurestore.db import METADATA
from featurestore.errors import FeatureStoreError

SCOPES = ("features:read", "datasets:export", "monitors:read", "monitors:write", "admin")
_PREFIX = "fsk"
log = logging.getLogger("featurestore.api")

API_KEYS = sa.Table(
    "featurestore_api_keys",
    METADATA,
    sa.Column("key_id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(500), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)


class ApiKeyError(FeatureStoreError):
    """An API key request that cannot be honoured (unknown scope, unknown key)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: sa.Row) -> ApiKey:
    return ApiKey(
        row.key_id, row.name, frozenset(row.scopes.split()), row.created_at, row.revoked_at
    )


def create_key(engine: Engine, name: str, scopes: list[str]) -> tuple[str, ApiKey]:
    """A new key: the token (shown once, never stored) and its record."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApiKeyError(f"unknown or no scope(s) {unknown}; choose from {list(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(key_id, name, frozenset(scopes), datetime.now(UTC), None)
    with engine.begin() as connection:
        connection.execute(API_KEYS.insert().values(
            key_id=key_id, name=name, secret_sha256=_digest(secret),
            scopes=" ".join(sorted(scopes)), created_at=key.created_at,
        ))
    return f"{_PREFIX}_{key_id}_{secret}", key


def revoke_key(engine: Engine, key_id: str) -> ApiKey:
    with engine.begin() as connection:
        updated = connection.execute(
            API_KEYS.update()
            .where(API_KEYS.c.key_id == key_id, API_KEYS.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        ).rowcount
        row = connection.execute(API_KEYS.select().where(API_KEYS.c.key_id == key_id)).first()
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id!r}")
    if not updated:
        raise ApiKeyError(f"API key {key_id!r} was already revoked")
    return _key(row)


def list_keys(engine: Engine) -> list[ApiKey]:
    with engine.connect() as connection:
        rows = connection.execute(API_KEYS.select().order_by(API_KEYS.c.created_at)).all()
    return [_key(row) for row in rows]


def _parse(token: str) -> tuple[str, str] | None:
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or not key_id or not secret or len(key_id) > 16:
        return None
    return key_id, secret


class KeyStoreUnavailable(Exception):
    """The key table cannot be read, and the copy in memory cannot decide this token."""


_Entry = tuple[str, ApiKey]  # (secret digest, key)
_NO_DIGEST = "0" * 64
# Tokens of ids the copy does not hold cause a read of the key table at most this often (per
# process): a new key works on its first request, a scanner's made-up ids cost no SQL each.
MISS_READ_SECONDS = 1.0


def _check(entry: _Entry | None, secret: str) -> ApiKey | None:
    stored, key = entry if entry is not None else (_NO_DIGEST, None)
    # Compare even when the id is unknown, so timing does not tell ids apart.
    matches = hmac.compare_digest(_digest(secret), stored)
    if not matches or key is None or key.revoked_at is not None:
        return None
    return key


def _read_keys(engine: Engine) -> dict[str, _Entry]:
    with engine.connect() as connection:
        rows = connection.execute(API_KEYS.select()).all()
    return {row.key_id: (row.secret_sha256, _key(row)) for row in rows}


class KeyVerifier:
    """Token -> its ApiKey, or None for anything that is not a live key, from a copy of the key
    table in memory (no SQL per request).

    The copy is re-read every `refresh_seconds` (`keep_fresh`), so a revocation takes effect
    within that time. A token whose id the copy lacks waits for a read that began after it
    arrived (shared by every such token, at most one per `MISS_READ_SECONDS`). While the table
    cannot be read, keys in the last good copy keep working for `stale_seconds` after that copy
    was read (`stale` verdicts); anything else raises KeyStoreUnavailable.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        refresh_seconds: float = 5.0,
        stale_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self.refresh_seconds = refresh_seconds
        self._stale_seconds = stale_seconds
        self._clock = clock
        self._keys: dict[str, _Entry] = {}
        self._read_at = -math.inf  # when the read of `_keys` began
        self._attempt_at = -math.inf  # when the latest read, good or failed, began
        self._failing = False  # the latest read failed
        self._lock = threading.Lock()  # one read at a time
        self._miss_lock: asyncio.Lock | None = None

    def read(self, *, unless_since: float | None = None) -> None:
        """Re-read the key table (blocking), unless a read began at or after `unless_since`.
        A failure is recorded (and logged), not raised: the verdicts say what it means."""
        with self._lock:
            if unless_since is not None and self._attempt_at >= unless_since:
                return
            started = self._clock()
            self._attempt_at = started
            try:
                keys = _read_keys(self._engine)
            except SQLAlchemyError as exc:
                self._failing = True
                log.warning("cannot read the API key table: %s", type(exc).__name__)
                return
            self._keys, self._read_at, self._failing = keys, started, False

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await asyncio.to_thread(self.read)
            except Exception:  # a bug here must not end the re-reads (and so every key)
                log.exception("cannot re-read the API key table")

    async def verify(self, token: str) -> tuple[ApiKey | None, bool]:
        """(the key or None, whether the verdict came from a copy older than a failed read).
        Raises KeyStoreUnavailable when it cannot be decided."""
        asked = self._clock()
        parsed = _parse(token)
        if parsed is None:
            return None, False
        key_id, secret = parsed
        if key_id not in self._keys and self._read_at < asked:
            await self._read_after(asked)
        entry = self._keys.get(key_id)
        if entry is None and self._read_at < asked:
            raise KeyStoreUnavailable("the API key table cannot be read")
        if self._clock() - self._read_at > self._stale_seconds:
            raise KeyStoreUnavailable(
                f"the API key table has not been read for over {self._stale_seconds:g} s"
            )
        return _check(entry, secret), self._failing

    async def _read_after(self, asked: float) -> None:
        if self._miss_lock is None:
            self._miss_lock = asyncio.Lock()
        async with self._miss_lock:
            if self._read_at >= asked:
                return
            if self._attempt_at < asked:
                wait = self._attempt_at + MISS_READ_SECONDS - self._clock()
                if wait > 0:
                    if self._failing:  # it failed under MISS_READ_SECONDS ago: 503 now
                        return
                    await asyncio.sleep(wait)
            # Waits for a read already under way; starts one unless that one began after `asked`.
            await asyncio.to_thread(self.read, unless_since=asked)
