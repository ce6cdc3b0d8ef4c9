"""One process at a time creates or changes a schema: a PostgreSQL session advisory lock, or a
lock file beside a SQLite database. The others wait, bounded and logged. Both locks are released
by the operating system or the server when their holder dies, so a crashed process never leaves
the schema locked."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from featurestore.errors import FeatureStoreError

log = logging.getLogger("featurestore.migrations")

# Long enough for any migration this project ships; a holder stuck longer than this is a fault
# to report rather than to wait on forever.
LOCK_WAIT_SECONDS = 300.0


class SchemaLockTimeout(FeatureStoreError):
    """Another process held the schema lock for longer than the bounded wait."""


def advisory_key(name: str) -> int:
    """The signed 64-bit key of pg_advisory_lock for a lock name (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _waited_too_long(name: str, url: URL, wait_seconds: float) -> SchemaLockTimeout:
    return SchemaLockTimeout(
        f"waited {wait_seconds:.0f} s for the {name} lock of "
        f"{url.render_as_string(hide_password=True)}: another process still holds it "
        "(a migration still running, or a process stuck while holding it)"
    )


@contextlib.contextmanager
def _advisory_lock(url: URL, name: str, wait_seconds: float) -> Iterator[None]:
    key = advisory_key(name)
    locker = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        # Closing this connection ends the session, which releases the lock.
        with locker.connect() as connection:
            if not connection.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
                log.info("waiting up to %.0f s for another process holding the %s lock",
                         wait_seconds, name)
                connection.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"),
                                   {"ms": f"{int(wait_seconds * 1000)}ms"})
                try:
                    connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                except sa.exc.OperationalError as exc:
                    raise _waited_too_long(name, url, wait_seconds) from exc
            connection.commit()
            yield
    finally:
        locker.dispose()


@contextlib.contextmanager
def _file_lock(url: URL, database: Path, name: str, wait_seconds: float) -> Iterator[None]:
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(database.with_name(f"{database.name}.{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting up to %.0f s for another process holding the %s lock",
                 wait_seconds, name)
        try:
            lock.acquire(timeout=wait_seconds)
        except Timeout as exc:
            raise _waited_too_long(name, url, wait_seconds) from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def schema_lock(url: URL, name: str, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock `name` of the database at `url` (PostgreSQL or a SQLite file)."""
    if url.get_backend_name() == "postgresql":
        with _advisory_lock(url, name, wait_seconds):
            yield
    elif url.get_backend_name() != "sqlite":
        raise FeatureStoreError(
            f"{url.get_backend_name()} databases are not supported: use PostgreSQL or SQLite"
        )
    elif url.database and url.database != ":memory:":
        with _file_lock(url, Path(url.database), name, wait_seconds):
            yield
    else:  # an in-memory SQLite database belongs to one process
        yield
