"""API keys: bearer tokens with scopes, stored hashed in our SQL database.

A token reads `fsk_<key id>_<secret>`. Only SHA-256 of the secret is stored (the secret has 256
random bits, so a slow hash adds nothing); checks compare digests in constant time. The server
caches a key's row for a few seconds, so a revocation takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from featurestore.db import METADATA
from featurestore.errors import FeatureStoreError

SCOPES = ("features:read", "datasets:export", "monitors:read", "monitors:write", "admin")
_PREFIX = "fsk"

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


_Entry = tuple[float, str | None, ApiKey | None]  # (expires, secret digest, key)


def _check(entry: _Entry, secret: str) -> ApiKey | None:
    _, stored, key = entry
    # Compare even when the id is unknown, so timing does not tell ids apart.
    matches = hmac.compare_digest(_digest(secret), stored or "0" * 64)
    if not matches or key is None or key.revoked_at is not None:
        return None
    return key


class KeyVerifier:
    """Token -> its ApiKey, or None for anything that is not a live key. Rows cached briefly."""

    def __init__(self, engine: Engine, cache_seconds: float = 5.0) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """(True, verdict) when it can be decided without the database, else (False, None)."""
        parsed = _parse(token)
        if parsed is None:
            return True, None
        with self._lock:
            entry = self._cache.get(parsed[0])
        if entry is None or entry[0] <= time.monotonic():
            return False, None
        return True, _check(entry, parsed[1])

    def verify(self, token: str) -> ApiKey | None:
        """The verdict, reading the key's row from the database (blocking)."""
        parsed = _parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._engine.connect() as connection:
            row = connection.execute(API_KEYS.select().where(API_KEYS.c.key_id == key_id)).first()
        expires = time.monotonic() + self._cache_seconds
        entry: _Entry = (expires, row.secret_sha256, _key(row)) if row else (expires, None, None)
        with self._lock:
            if len(self._cache) > 10_000:  # bounded: ids a scanner made up expire here
                self._cache.clear()
            self._cache[key_id] = entry
        return _check(entry, secret)
